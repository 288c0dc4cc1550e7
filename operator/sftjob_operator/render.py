"""Pure rendering: one SFTJob -> the objects of one gang attempt (docs/architecture.md, "render <-> reconcile").

No I/O and no clock: the same job, attempt and rdzv_id always give the same objects, so the operator can
re-render after a restart and compare, and `sftjob-operator render` shows exactly what the operator creates.

    Service   <job>              headless, selects only the rank-0 pod, publishNotReadyAddresses (rendezvous
                                 must resolve before rank 0 is Ready), the rdzv port
    ConfigMap <job>-params       params.json = spec.training (camelCase)
    Pod       <job>-node-<rank>  one per node; the entrypoint reads params.json and the TRAINING_HUB_* env
                                 (spec.mode Preflight: `training-hub preflight` with the same env instead)
    Pod       <job>-prepare-<attempt>  before each gang attempt (Train mode): `training-hub prepare` on CPU, the
                                 same params.json and volumes; `render_prepare_pod`
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from training_hub.launch import env as launch_env

from . import api, labels
from .config import OperatorConfig, quantity_value

CONTAINER_NAME = "trainer"
PARAMS_VOLUME = api.RESERVED_VOLUME_PREFIX + "params"
SHM_VOLUME = api.RESERVED_VOLUME_PREFIX + "shm"
RDZV_PORT_NAME = "rdzv"
TERMINATION_MESSAGE_PATH = launch_env.DEFAULT_TERMINATION_LOG
ENTRYPOINT = ["training-hub", "sft", "--config", f"{api.PARAMS_MOUNT_PATH}/{api.PARAMS_FILE_NAME}"]
PREFLIGHT_ENTRYPOINT = ["training-hub", "preflight"]
PREPARE_ENTRYPOINT = ["training-hub", "prepare", "--config", f"{api.PARAMS_MOUNT_PATH}/{api.PARAMS_FILE_NAME}"]
PREPARE_CONTAINER_NAME = "prepare"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"


@dataclass(frozen=True)
class RenderedGang:
    """The objects of one gang attempt, as plain dicts ready for the API. `pods[i]` is node rank i."""

    service: dict[str, Any]
    configmap: dict[str, Any]
    pods: list[dict[str, Any]]
    prepare_pod: dict[str, Any] | None = None  # created (and finished) before `pods`; None when not enabled

    def objects(self) -> list[dict[str, Any]]:
        """Every object, in creation order (the parameters before the pods that use them, the prepare pod first)."""
        return [self.service, self.configmap, *([self.prepare_pod] if self.prepare_pod else []), *self.pods]


def service_name(job_name: str) -> str:
    return job_name


def configmap_name(job_name: str) -> str:
    return f"{job_name}-params"


def pod_name(job_name: str, rank: int) -> str:
    return f"{job_name}-node-{rank}"


def pod_group_name(job_name: str, attempt: int) -> str:
    """Kueue's pod-group name (and so its Workload's name) for one gang attempt: `<job>-a<attempt>`. A label value
    (at most 63 characters): a long job name is shortened with a hash, so two jobs never share a group."""
    suffix = f"-a{attempt}"
    if len(job_name) + len(suffix) <= 63:
        return job_name + suffix
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:8]
    return f"{job_name[: 63 - len(suffix) - 9].rstrip('-')}-{digest}{suffix}"


def new_rdzv_id(job_uid: str, attempt: int) -> str:
    """The rendezvous id of one gang attempt: derived from the job's uid and the attempt, so an operator that
    restarts halfway through creating a gang renders the same id, while every new attempt gets a fresh one.
    Safe as a label value (hex, a dash, the attempt)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0 (got {attempt})")
    digest = hashlib.sha256(f"{job_uid}/{attempt}".encode()).hexdigest()[:16]
    return f"{digest}-{attempt}"


def rdzv_endpoint(job_name: str, namespace: str, port: int, config: OperatorConfig) -> str:
    """`host:port` of the rank-0 Service. `<svc>.<ns>.svc` resolves through the pod's DNS search path in any
    cluster domain; with a configured cluster domain the FQDN is used."""
    host = f"{service_name(job_name)}.{namespace}.svc"
    if config.cluster_domain:
        host += "." + config.cluster_domain
    return f"{host}:{port}"


def render_gang(job: Mapping[str, Any], *, attempt: int, rdzv_id: str, config: OperatorConfig) -> RenderedGang:
    """Render the Service, ConfigMap and Pods of gang attempt `attempt` of `job` (an SFTJob object as read from
    the API: apiVersion, kind, metadata with name/namespace/uid, spec). Raises `api.InvalidSFTJob`."""
    spec = api.load_spec(job)
    metadata = job["metadata"]
    name: str = metadata["name"]
    namespace: str = metadata.get("namespace") or "default"
    owner = _owner_reference(job)
    return RenderedGang(
        service=_service(name, namespace, spec, owner),
        configmap=_configmap(name, namespace, spec, owner),
        pods=[
            _pod(
                name,
                namespace,
                spec,
                owner,
                rank=rank,
                attempt=attempt,
                rdzv_id=rdzv_id,
                queue_name=(metadata.get("labels") or {}).get(labels.KUEUE_QUEUE_NAME),
                config=config,
            )
            for rank in range(spec.nnodes)
        ],
        prepare_pod=_prepare_pod(name, namespace, spec, owner, attempt=attempt, config=config)
        if prepare_enabled(spec) else None,
    )


def params_json(spec: api.SFTJobSpec) -> str:
    """The ConfigMap's params.json: SFTParams in camelCase, unset fields left out, stable key order."""
    return json.dumps(spec.training.to_camel_dict(), indent=2, sort_keys=True) + "\n"


def _owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    metadata = job["metadata"]
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": metadata["name"],
        "uid": metadata.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    name: str,
    namespace: str,
    owner: dict[str, Any],
    object_labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": object_labels}
    if annotations:
        metadata["annotations"] = annotations
    metadata["ownerReferences"] = [dict(owner)]
    return metadata


def _service(name: str, namespace: str, spec: api.SFTJobSpec, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service_name(name), namespace, owner, labels.common_labels(name)),
        "spec": {
            "clusterIP": "None",
            # Workers resolve rank 0 while it is still starting: the address must exist before the pod is Ready.
            "publishNotReadyAddresses": True,
            "selector": labels.rank0_selector(name),
            "ports": [
                {"name": RDZV_PORT_NAME, "port": spec.rdzv_port, "targetPort": spec.rdzv_port, "protocol": "TCP"}
            ],
        },
    }


def _configmap(name: str, namespace: str, spec: api.SFTJobSpec, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(configmap_name(name), namespace, owner, labels.common_labels(name)),
        "data": {api.PARAMS_FILE_NAME: params_json(spec)},
    }


def _dump(model: Any) -> Any:
    """A sub-model (env, volumes, ...) in API form."""
    if isinstance(model, list):
        return [_dump(item) for item in model]
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _environment(name: str, namespace: str, spec: api.SFTJobSpec, rank: int, rdzv_id: str, config: OperatorConfig):
    env = [
        {"name": launch_env.NNODES, "value": str(spec.nnodes)},
        {"name": launch_env.NODE_RANK, "value": str(rank)},
        {"name": launch_env.NPROC_PER_NODE, "value": str(spec.nproc_per_node)},
        {"name": launch_env.RDZV_ID, "value": rdzv_id},
        {"name": launch_env.RDZV_ENDPOINT, "value": rdzv_endpoint(name, namespace, spec.rdzv_port, config)},
        {"name": launch_env.RDZV_TIMEOUT, "value": f"{config.rdzv_timeout_s:g}"},
        {"name": launch_env.TERMINATION_LOG, "value": TERMINATION_MESSAGE_PATH},
    ]
    # The user's variables come after ours; validation guarantees they do not reuse our names.
    return env + _dump(spec.env or [])


def container_command(spec: api.SFTJobSpec) -> list[str]:
    """The training container's command: `training-hub sft` on the mounted parameters, or in Preflight mode
    `training-hub preflight` (an all-reduce across the same gang, same TRAINING_HUB_* environment)."""
    if spec.mode is api.JobMode.PREFLIGHT:
        options = spec.preflight or api.PreflightOptions()
        return [
            *PREFLIGHT_ENTRYPOINT,
            "--size-mb", str(options.size_mb),
            "--iters", str(options.iters),
            "--warmup", str(options.warmup),
            "--backend", options.backend,
        ]
    return list(ENTRYPOINT)


def _resources(spec: api.SFTJobSpec, config: OperatorConfig) -> dict[str, Any]:
    requests, limits = _merged_resources(spec.resources, config.default_trainer_resources, spec.gpu_resource_name)
    limits[spec.gpu_resource_name] = spec.nproc_per_node
    resources: dict[str, Any] = {"limits": dict(sorted(limits.items()))}
    if requests:
        resources["requests"] = dict(sorted(requests.items()))
    return resources


def _rdzv_container_port(spec: api.SFTJobSpec) -> dict[str, Any]:
    port: dict[str, Any] = {"name": RDZV_PORT_NAME, "containerPort": spec.rdzv_port, "protocol": "TCP"}
    if spec.host_network:
        # On the host network the port is the node's: as a hostPort the scheduler (NodePorts) keeps two pods that
        # need it off one node, instead of the second failing to bind at rendezvous. Every rank reserves it, so a
        # whole gang, not only rank 0, avoids nodes where another job's gang holds the port.
        port["hostPort"] = spec.rdzv_port
    return port


def _merged_resources(
    own: api.ResourceRequirements | None, defaults: Any, gpu_resource_name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    requests = dict((own.requests if own else None) or {})
    limits = dict((own.limits if own else None) or {})
    # The operator's defaults fill in what the job leaves out, per resource and per requests/limits; the job's own
    # values win. A default that would contradict the job's value for the same resource (a default request above
    # the job's limit, a default limit below the job's request) is left out, so the pod stays valid.
    default_requests, default_limits = (dict(part) for part in defaults)
    for name, quantity in default_requests.items():
        if name in requests or name == gpu_resource_name:
            continue
        if name in limits and quantity_value(quantity) > quantity_value(limits[name]):
            continue  # Kubernetes then takes the request from the job's limit
        requests[name] = quantity
    for name, quantity in default_limits.items():
        if name in limits or name == gpu_resource_name:
            continue
        if name in requests and quantity_value(requests[name]) > quantity_value(quantity):
            continue  # the job asks for more than the default cap: it gets no cap rather than an invalid pod
        limits[name] = quantity
    return requests, limits


def _affinity(name: str, spec: api.SFTJobSpec) -> dict[str, Any]:
    affinity = copy.deepcopy(_dump(spec.affinity)) if spec.affinity else {}
    anti = affinity.setdefault("podAntiAffinity", {})
    required = anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
    # One pod per node: each pod must own its node's GPUs and NICs. (The prepare pod does not count.)
    required.append(
        {
            "labelSelector": {
                "matchLabels": labels.job_selector(name),
                "matchExpressions": [{"key": labels.ROLE, "operator": "DoesNotExist"}],
            },
            "topologyKey": HOSTNAME_TOPOLOGY_KEY,
        }
    )
    return affinity


CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _shared_volumes(spec: api.SFTJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The job's PVCs: (volumes, mounts), the same in every pod of the job."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for volume in spec.volumes or []:
        volumes.append(
            {"name": volume.name, "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": volume.read_only}}
        )
        mount = {"name": volume.name, "mountPath": volume.mount_path, "readOnly": volume.read_only}
        if volume.sub_path:
            mount["subPath"] = volume.sub_path
        mounts.append(mount)
    return volumes, mounts


def _optional_pod_fields(spec: api.SFTJobSpec, node_selector: Mapping[str, str] | None) -> dict[str, Any]:
    optional = {
        "nodeSelector": dict(sorted(node_selector.items())) if node_selector else None,
        "tolerations": _dump(spec.tolerations) if spec.tolerations else None,
        "priorityClassName": spec.priority_class_name,
        "serviceAccountName": spec.service_account_name,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "imagePullSecrets": _dump(spec.image_pull_secrets) if spec.image_pull_secrets else None,
    }
    return {key: value for key, value in optional.items() if value is not None}


def prepare_enabled(spec: api.SFTJobSpec) -> bool:
    """Whether the job runs a prepare pod before each gang attempt (Train mode, unless spec.prepare.enabled is false)."""
    return spec.mode is api.JobMode.TRAIN and (spec.prepare is None or spec.prepare.enabled)


def prepare_pod_name(job_name: str, attempt: int) -> str:
    return f"{job_name}-prepare-{attempt}"


def render_prepare_pod(job: Mapping[str, Any], *, attempt: int, config: OperatorConfig) -> dict[str, Any]:
    """The prepare pod of gang attempt `attempt`: `training-hub prepare` on the params ConfigMap and the job's volumes,
    no GPU, outside the gang's Kueue pod group (and queue), so it never holds or waits for GPU quota."""
    metadata = job["metadata"]
    return _prepare_pod(metadata["name"], metadata.get("namespace") or "default", api.load_spec(job),
                        _owner_reference(job), attempt=attempt, config=config)


def _prepare_pod(
    name: str, namespace: str, spec: api.SFTJobSpec, owner: dict[str, Any], *, attempt: int, config: OperatorConfig
) -> dict[str, Any]:
    options = spec.prepare or api.PrepareOptions()
    pod_labels = {**(spec.pod_labels or {}), **labels.prepare_pod_labels(name, attempt=attempt)}
    shared_volumes, shared_mounts = _shared_volumes(spec)
    requests, limits = _merged_resources(options.resources, config.default_prepare_resources, spec.gpu_resource_name)
    resources = {part: dict(sorted(values.items())) for part, values in (("requests", requests), ("limits", limits)) if values}
    container: dict[str, Any] = {
        "name": PREPARE_CONTAINER_NAME,
        "image": spec.image or config.trainer_image,
        "imagePullPolicy": spec.image_pull_policy or config.image_pull_policy,
        "command": list(PREPARE_ENTRYPOINT),
        "env": [{"name": launch_env.TERMINATION_LOG, "value": TERMINATION_MESSAGE_PATH}, *_dump(spec.env or [])],
        "resources": resources,
        "volumeMounts": [
            {"name": PARAMS_VOLUME, "mountPath": api.PARAMS_MOUNT_PATH, "readOnly": True},
            *shared_mounts,
        ],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.env_from:
        container["envFrom"] = _dump(spec.env_from)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failure is decided by the operator (exit 78: the job fails; else a new attempt)
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": [{"name": PARAMS_VOLUME, "configMap": {"name": configmap_name(name)}}, *shared_volumes],
        **_optional_pod_fields(spec, options.node_selector),
    }
    if spec.host_network:  # where the gang's nodes need it, so may the prepare pod's (no port is opened)
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    annotations = dict(sorted((spec.pod_annotations or {}).items()))
    pod_metadata = _metadata(prepare_pod_name(name, attempt), namespace, owner,
                             dict(sorted(pod_labels.items())), annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_metadata, "spec": pod_spec}


def _pod(
    name: str,
    namespace: str,
    spec: api.SFTJobSpec,
    owner: dict[str, Any],
    *,
    rank: int,
    attempt: int,
    rdzv_id: str,
    queue_name: str | None,
    config: OperatorConfig,
) -> dict[str, Any]:
    pod_labels = {**(spec.pod_labels or {}), **labels.pod_labels(name, rank=rank, attempt=attempt, rdzv_id=rdzv_id)}
    annotations = dict(spec.pod_annotations or {})
    # Kueue admits the pods of one group together (all nnodes or none); each attempt is a group of its own, and the
    # operator (not Kueue) replaces a gang that ended: labels.KUEUE_RETRIABLE_IN_GROUP says why.
    pod_labels[labels.KUEUE_POD_GROUP_NAME] = pod_group_name(name, attempt)
    annotations[labels.KUEUE_POD_GROUP_TOTAL_COUNT] = str(spec.nnodes)
    annotations[labels.KUEUE_RETRIABLE_IN_GROUP] = labels.KUEUE_NOT_RETRIABLE
    if queue_name:
        pod_labels[labels.KUEUE_QUEUE_NAME] = queue_name

    shm: dict[str, Any] = {"medium": "Memory"}
    shm_size = spec.shm_size if spec.shm_size is not None else config.shm_size_limit
    if shm_size is not None:
        shm["sizeLimit"] = shm_size
    shared_volumes, shared_mounts = _shared_volumes(spec)
    volumes: list[dict[str, Any]] = [
        {"name": PARAMS_VOLUME, "configMap": {"name": configmap_name(name)}},
        {"name": SHM_VOLUME, "emptyDir": shm},
        *shared_volumes,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": PARAMS_VOLUME, "mountPath": api.PARAMS_MOUNT_PATH, "readOnly": True},
        {"name": SHM_VOLUME, "mountPath": api.SHM_MOUNT_PATH},
        *shared_mounts,
    ]

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or config.trainer_image,
        "imagePullPolicy": spec.image_pull_policy or config.image_pull_policy,
        "command": container_command(spec),
        "env": _environment(name, namespace, spec, rank, rdzv_id, config),
        "ports": [_rdzv_container_port(spec)],
        "resources": _resources(spec, config),
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # The summary when the entrypoint wrote one, else the log tail (e.g. a crash before it could).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.env_from:
        container["envFrom"] = _dump(spec.env_from)

    pod_spec: dict[str, Any] = {
        # The operator restarts the whole gang; a kubelet restart of one container would rejoin a dead rendezvous.
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "affinity": _affinity(name, spec),
        "containers": [container],
        "volumes": volumes,
        **_optional_pod_fields(spec, spec.node_selector),
    }
    if spec.host_network:
        pod_spec["hostNetwork"] = True
        # ClusterFirst would fall back to the node's resolver for host-network pods: the rank-0 Service would not resolve.
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"

    metadata = _metadata(
        pod_name(name, rank), namespace, owner, dict(sorted(pod_labels.items())), dict(sorted(annotations.items()))
    )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
