"""The SFTJob resource: `SFTJobSpec` (what to run, on how many GPU nodes, in what pods) and `SFTJobStatus`.

These models are the single source of the CRD schema (crd.py), of `kubectl explain`, and of the operator's own
validation: `spec.training` *is* `training_hub.params.SFTParams`, so its fields are defined only there.
Names are camelCase in YAML (aliases); Python uses snake_case.

Cross-field rules are `CrossFieldRule`s (from training_hub.params): each Python check sits next to the CEL rule
the API server runs, so a manifest is rejected with the same message by `kubectl apply` and by
`sftjob-operator render`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Callable, ClassVar, Literal, Mapping

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from training_hub.launch import env as launch_env
from training_hub.params import CrossFieldRule, SFTParams, rule_violations, validation_problems

from . import labels
from .config import QUANTITY_PATTERN

GROUP = "training-hub.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SFTJob"
PLURAL = "sftjobs"
SINGULAR = "sftjob"
SHORT_NAMES = ("sft",)

# The variables the operator sets on every pod; a user's spec.env may not shadow them.
RESERVED_ENV_NAMES: tuple[str, ...] = (
    launch_env.NNODES,
    launch_env.NODE_RANK,
    launch_env.NPROC_PER_NODE,
    launch_env.RDZV_ID,
    launch_env.RDZV_ENDPOINT,
    launch_env.RDZV_TIMEOUT,
    launch_env.TERMINATION_LOG,
)
# Paths and volume names the operator uses in every pod.
PARAMS_MOUNT_PATH = "/etc/training-hub"
PARAMS_FILE_NAME = "params.json"
SHM_MOUNT_PATH = "/dev/shm"
RESERVED_MOUNT_PATHS = (PARAMS_MOUNT_PATH, SHM_MOUNT_PATH)
RESERVED_VOLUME_PREFIX = "training-hub-"

# Bounds that also keep the CEL rules' estimated cost within the API server's budget.
MAX_VOLUMES = 32
MAX_ENV = 256
MAX_ENV_FROM = 32
MAX_TOLERATIONS = 64
MAX_MAP_ENTRIES = 64
MAX_PATH_LENGTH = 1024
MAX_NNODES = 1024
MAX_NPROC_PER_NODE = 64

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

# Every quantity of a spec (requests, limits, shmSize, divisor) is a size: the Pod API refuses negative ones.
NON_NEGATIVE_QUANTITY_PATTERN = QUANTITY_PATTERN.replace(r"^(\+|-)?", r"^\+?", 1)
assert NON_NEGATIVE_QUANTITY_PATTERN != QUANTITY_PATTERN
_QUANTITY = re.compile(NON_NEGATIVE_QUANTITY_PATTERN)


def _check_quantity(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
        isinstance(value, str) and not _QUANTITY.match(value)
    ) or (isinstance(value, int) and value < 0):
        raise ValueError(
            f"must be a non-negative Kubernetes quantity: an integer or a string such as 8, 500m, 64Gi (got {value!r})"
        )
    return value


Quantity = Annotated[
    int | str,
    PlainValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
            "pattern": NON_NEGATIVE_QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


class Phase(str, Enum):
    """Where an SFTJob is in its life."""

    PENDING = "Pending"
    PREPARING = "Preparing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    RESTARTING = "Restarting"


FINISHED_PHASES = (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(str, Enum):
    """Condition types an SFTJob reports (metav1.Condition style, so `kubectl wait --for=condition=X` works).

    Ready, Reconciling and Stalled follow kstatus (Flux): derived from the phase, exactly one is True.
    """

    PREPARED = "Prepared"
    CREATED = "Created"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class CleanPodPolicy(str, Enum):
    """Which pods are deleted when the job ends (Succeeded or Failed)."""

    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class JobMode(str, Enum):
    """What the gang runs."""

    TRAIN = "Train"
    PREFLIGHT = "Preflight"


class _K8sModel(BaseModel):
    """camelCase aliases, unknown fields rejected (the API server prunes them; we say so instead)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules (rule, message) for the schema node of a field."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


@dataclass(frozen=True)
class ObjectRule:
    """A constraint on one object of the spec, checked in Python and rendered as a CEL rule on its schema node (so
    `kubectl apply` refuses what the Pod API would refuse later, with the same message)."""

    check: Callable[[Mapping[str, Any]], bool]
    message: str
    cel: str


def _exactly_one(*fields: str) -> ObjectRule:
    names = [to_camel(name) for name in fields]
    return ObjectRule(
        check=lambda values: sum(values.get(name) is not None for name in fields) == 1,
        message="set exactly one of " + ", ".join(names),
        cel=" + ".join(f"(has(self.{name}) ? 1 : 0)" for name in names) + " == 1",
    )


class _RuledModel(_K8sModel):
    """A model with `ObjectRule`s: subclasses set `_object_rules` and `model_config = _rules_config(...)`."""

    _object_rules: ClassVar[tuple[ObjectRule, ...]] = ()

    @model_validator(mode="after")
    def _check_object_rules(self) -> "_RuledModel":
        problems = [rule.message for rule in self._object_rules if not rule.check(self.__dict__)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _rules_config(*rules: ObjectRule) -> ConfigDict:
    return ConfigDict(json_schema_extra=_cel(*((rule.cel, rule.message) for rule in rules)))


# ---- pod customisation ------------------------------------------------------------------------------------------


_DOTDOT_PART = r"(^|/)[.][.](/|$)"  # RE2 (CEL) and Python alike
_SUB_PATH_MESSAGE = "must not contain a '..' part: the mount must stay inside the volume"


class SharedVolume(_K8sModel):
    """A PersistentVolumeClaim mounted into every pod of the gang (models, data, checkpoints)."""

    name: str = Field(
        max_length=63,
        pattern=_DNS_LABEL,
        description="Volume name (a DNS label, unique within the job). Names starting with "
        f"'{RESERVED_VOLUME_PREFIX}' are reserved for the operator.",
    )
    claim_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="Name of the PersistentVolumeClaim in the job's namespace. For nnodes > 1 it must allow "
        "ReadWriteMany (or ReadOnlyMany with readOnly: true), since every node mounts it.",
    )
    mount_path: str = Field(
        min_length=2,
        max_length=MAX_PATH_LENGTH,
        pattern=r"^/",
        description=f"Absolute path in the training container. {PARAMS_MOUNT_PATH} and {SHM_MOUNT_PATH} are "
        "reserved. Unique within the job.",
    )
    read_only: bool = Field(default=False, description="Mount the volume read-only.")
    sub_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        pattern=r"^[^/]",
        description="Relative path inside the volume to mount instead of its root (no '..' part).",
        json_schema_extra=_cel((f"!self.matches('{_DOTDOT_PART}')", _SUB_PATH_MESSAGE)),
    )

    @field_validator("sub_path")
    @classmethod
    def _sub_path_inside(cls, sub_path: str | None) -> str | None:
        if sub_path is not None and re.search(_DOTDOT_PART, sub_path):
            raise ValueError(_SUB_PATH_MESSAGE)
        return sub_path


class ResourceRequirements(_K8sModel):
    """CPU, memory and other resources of each training container. The GPU limit is not set here: it is
    nprocPerNode of gpuResourceName."""

    requests: dict[str, Quantity] | None = Field(
        default=None,
        max_length=MAX_MAP_ENTRIES,
        description="Minimum resources per pod, e.g. {cpu: 32, memory: 256Gi}.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        max_length=MAX_MAP_ENTRIES,
        description="Maximum resources per pod, e.g. {memory: 512Gi}. Extended resources such as RDMA devices go "
        "here too.",
    )


_ENV_SOURCE_ONE = _exactly_one("config_map_key_ref", "secret_key_ref", "field_ref", "resource_field_ref")
_ENV_FROM_ONE = _exactly_one("config_map_ref", "secret_ref")
_ENV_VALUE_OR_SOURCE = ObjectRule(
    check=lambda values: not (values.get("value") and values.get("value_from") is not None),
    message="set value or valueFrom, not both",
    cel="!(has(self.value) && self.value != '' && has(self.valueFrom))",
)


class ConfigMapKeySelector(_K8sModel):
    """Selects a key of a ConfigMap."""

    name: str = Field(min_length=1, max_length=253, description="Name of the ConfigMap.")
    key: str = Field(min_length=1, max_length=253, description="The key to select.")
    optional: bool | None = Field(default=None, description="Whether the ConfigMap or its key may be missing.")


class SecretKeySelector(_K8sModel):
    """Selects a key of a Secret."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="The key to select.")
    optional: bool | None = Field(default=None, description="Whether the Secret or its key may be missing.")


class ObjectFieldSelector(_K8sModel):
    """Selects a field of the pod (downward API), e.g. metadata.name or status.podIP."""

    api_version: str | None = Field(default=None, description='Schema version of fieldPath; default "v1".')
    field_path: str = Field(min_length=1, description="Path of the field to select, e.g. metadata.name.")


class ResourceFieldSelector(_K8sModel):
    """Selects a resource of the container (downward API), e.g. limits.memory."""

    container_name: str | None = Field(default=None, description="Container name; default the training container.")
    resource: str = Field(min_length=1, description="Resource to select, e.g. limits.cpu.")
    divisor: Quantity | None = Field(default=None, description="Output format of the value; default 1.")


class EnvVarSource(_RuledModel):
    """Where an environment variable's value comes from (exactly one)."""

    model_config = _rules_config(_ENV_SOURCE_ONE)
    _object_rules: ClassVar[tuple[ObjectRule, ...]] = (_ENV_SOURCE_ONE,)

    config_map_key_ref: ConfigMapKeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    secret_key_ref: SecretKeySelector | None = Field(default=None, description="A key of a Secret (e.g. a hub token).")
    field_ref: ObjectFieldSelector | None = Field(default=None, description="A field of the pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(default=None, description="A resource of the container.")


class EnvVar(_RuledModel):
    """An environment variable of the training container (as in a Pod's container env)."""

    model_config = _rules_config(_ENV_VALUE_OR_SOURCE)
    _object_rules: ClassVar[tuple[ObjectRule, ...]] = (_ENV_VALUE_OR_SOURCE,)

    name: str = Field(min_length=1, max_length=256, pattern=r"^[^=]+$", description="Variable name.")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(default=None, description="Value taken from a ConfigMap, Secret or the pod.")


class ConfigMapEnvSource(_K8sModel):
    """Every key of a ConfigMap as environment variables."""

    name: str = Field(min_length=1, max_length=253, description="Name of the ConfigMap.")
    optional: bool | None = Field(default=None, description="Whether the ConfigMap may be missing.")


class SecretEnvSource(_K8sModel):
    """Every key of a Secret as environment variables."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    optional: bool | None = Field(default=None, description="Whether the Secret may be missing.")


class EnvFromSource(_RuledModel):
    """A ConfigMap or Secret whose keys all become environment variables (as in a Pod's container envFrom)."""

    model_config = _rules_config(_ENV_FROM_ONE)
    _object_rules: ClassVar[tuple[ObjectRule, ...]] = (_ENV_FROM_ONE,)

    prefix: str | None = Field(default=None, max_length=256, description="Prefix added to every variable name.")
    config_map_ref: ConfigMapEnvSource | None = Field(default=None, description="The ConfigMap to read.")
    secret_ref: SecretEnvSource | None = Field(default=None, description="The Secret to read.")


class Toleration(_K8sModel):
    """Lets the pods schedule onto nodes with a matching taint (as in a Pod's tolerations)."""

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, description="Taint value, for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class LocalObjectReference(_K8sModel):
    """A reference to an object in the job's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the object.")


_PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}


class NodeSelector(_K8sModel):
    """Required node affinity (core/v1 NodeSelector): the node must match one of the terms."""

    node_selector_terms: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_TOLERATIONS,
        description="Node selector terms (core/v1 NodeSelectorTerm), ORed; at least one.",
        json_schema_extra={"items": {"type": "object", **_PRESERVE}},
    )


class NodeAffinity(_K8sModel):
    """Node affinity (core/v1 NodeAffinity)."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pods must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=MAX_TOLERATIONS,
        description="Weighted preferences (core/v1 PreferredSchedulingTerm).",
        json_schema_extra={"items": {"type": "object", **_PRESERVE}},
    )


class Affinity(BaseModel):
    """Scheduling constraints (as in a Pod's affinity). The operator adds a required pod anti-affinity on
    kubernetes.io/hostname so that no two pods of a gang share a node."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    node_affinity: NodeAffinity | None = Field(
        default=None, description="Node affinity (core/v1 NodeAffinity), e.g. a GPU product."
    )
    pod_affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity (core/v1 PodAffinity).", json_schema_extra=_PRESERVE
    )
    pod_anti_affinity: dict[str, Any] | None = Field(
        default=None,
        description="Pod anti-affinity (core/v1 PodAntiAffinity); the operator's one-pod-per-node term is added.",
        json_schema_extra=_PRESERVE,
    )


class PreflightOptions(_K8sModel):
    """The all-reduce a Preflight job runs (flags of `training-hub preflight`)."""

    size_mb: int = Field(
        default=64, ge=1, le=16384, description="Size of each all-reduce in MiB, for the bandwidth figure."
    )
    iters: int = Field(default=5, ge=1, le=1000, description="Timed all-reduces.")
    warmup: int = Field(default=1, ge=0, le=100, description="Untimed all-reduces first.")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="Collective backend: auto (NCCL when CUDA is available, else gloo), gloo or nccl."
    )


class PrepareOptions(_K8sModel):
    """The prepare pod: one CPU pod that runs `training-hub prepare` (instructlab's data processing, once) before
    each gang attempt, on the same volumes. The gang is created only once it succeeded."""

    enabled: bool = Field(
        default=True,
        description="Run the prepare pod (default). false: no prepare pod; the gang's node rank 0 then prepares the "
        "data itself while the other nodes wait (GPUs reserved meanwhile). Not used in Preflight mode.",
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="CPU/memory requests and limits of the prepare pod (no GPU); the operator's defaults (chart value "
        "prepare.resources) fill in the keys left out.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        max_length=MAX_MAP_ENTRIES,
        description="Node labels the prepare pod must match (spec.nodeSelector, meant for GPU nodes, is not used: the "
        "prepare pod needs no GPU). It gets spec.tolerations.",
    )


def _reserved_names_cel(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{name}'" for name in names) + "]"


_ENV_RESERVED_MESSAGE = (
    "must not set the variables the operator sets on each pod: " + ", ".join(RESERVED_ENV_NAMES)
)
_VOLUME_RESERVED_MESSAGE = (
    f"names starting with '{RESERVED_VOLUME_PREFIX}' and mount paths "
    f"{' and '.join(RESERVED_MOUNT_PATHS)} are reserved for the operator"
)
_MOUNT_PATH_UNIQUE_MESSAGE = "each mountPath must be unique"
_POD_LABELS_MESSAGE = (
    f"must not set keys starting with '{labels.PREFIX}' nor the operator's keys: "
    + ", ".join(k for k in labels.RESERVED_POD_LABELS if not k.startswith(labels.PREFIX))
)
_POD_ANNOTATIONS_MESSAGE = "must not set the operator's keys: " + ", ".join(
    labels.RESERVED_POD_ANNOTATIONS
)

SPEC_RULES: tuple[CrossFieldRule, ...] = (
    CrossFieldRule(
        field="preflight",
        fields=("preflight", "mode"),
        check=lambda v: v.get("preflight") is None or v.get("mode") == JobMode.PREFLIGHT,
        message="may only be set when mode is Preflight",
        cel="!has(self.preflight) || (has(self.mode) && self.mode == 'Preflight')",
    ),
    CrossFieldRule(
        field="resources",
        fields=("resources", "gpu_resource_name"),
        check=lambda v: v.get("resources") is None
        or all(
            v.get("gpu_resource_name") not in (getattr(v["resources"], part) or {}) for part in ("requests", "limits")
        ),
        message="must not request the GPU resource (gpuResourceName): the GPU limit of each pod is "
        "nprocPerNode",
        cel="!has(self.resources) || ((!has(self.resources.requests) || !(self.gpuResourceName in "
        "self.resources.requests)) && (!has(self.resources.limits) || !(self.gpuResourceName in "
        "self.resources.limits)))",
    ),
    CrossFieldRule(
        field="prepare",
        fields=("prepare", "gpu_resource_name"),
        check=lambda v: v.get("prepare") is None or v["prepare"].resources is None
        or all(
            v.get("gpu_resource_name") not in (getattr(v["prepare"].resources, part) or {})
            for part in ("requests", "limits")
        ),
        message="prepare.resources must not request the GPU resource (gpuResourceName): the prepare pod runs on CPU",
        cel="!has(self.prepare) || !has(self.prepare.resources) || ((!has(self.prepare.resources.requests) || "
        "!(self.gpuResourceName in self.prepare.resources.requests)) && (!has(self.prepare.resources.limits) || "
        "!(self.gpuResourceName in self.prepare.resources.limits)))",
    ),
)


class SFTJobSpec(_K8sModel):
    """Desired state of an SFTJob: the training parameters, the gang shape, the pods, and the run policy."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [r.json_schema() for r in SPEC_RULES]})
    _rules: ClassVar[tuple[CrossFieldRule, ...]] = SPEC_RULES

    training: SFTParams = Field(
        description="The SFT parameters (training_hub.params.SFTParams, camelCase). Written to the ConfigMap "
        f"<job>-params and read by each pod from {PARAMS_MOUNT_PATH}/{PARAMS_FILE_NAME}. May not change while the "
        "job runs (suspend it first). Required in Preflight mode too (not used there), so that a training "
        "manifest becomes its own preflight by setting mode alone.",
    )
    mode: JobMode = Field(
        default=JobMode.TRAIN,
        description="Train (default) runs `training-hub sft`. Preflight runs `training-hub preflight` across the "
        "same gang instead of training: a real all-reduce over the same rendezvous settings, image, volumes, "
        "scheduling and network, to prove the wiring and the network before hours of GPU time; the job Succeeds "
        "when every rank's all-reduce is correct, and rank 0's summary message carries the bandwidth. "
        "May not change while the job runs.",
    )
    preflight: PreflightOptions | None = Field(
        default=None, description="Settings of the all-reduce in Preflight mode (only allowed then)."
    )
    prepare: PrepareOptions | None = Field(
        default=None,
        description="The prepare pod, which runs instructlab's data processing once on CPU before each gang attempt "
        "(reusing prepared data whose manifest matches) so that GPUs never wait for tokenizing; a data error fails "
        "the job with its file and line. Enabled by default in Train mode.",
    )

    # Gang shape
    nnodes: int = Field(
        default=1,
        ge=1,
        le=MAX_NNODES,
        description="Number of nodes (pods) in the gang; each pod runs on its own node. May not change while the "
        "job runs.",
    )
    nproc_per_node: int = Field(
        default=1,
        ge=1,
        le=MAX_NPROC_PER_NODE,
        description="Training processes per node, one per GPU: each pod's limit of gpuResourceName. May not "
        "change while the job runs.",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        min_length=1,
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Extended resource name of the GPUs (e.g. nvidia.com/gpu, amd.com/gpu). May not change while "
        "the job runs.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU/memory (and other non-GPU) requests and limits of each pod."
    )
    rdzv_port: int = Field(
        default=29500,
        ge=1024,
        le=65535,
        description="TCP port of the rendezvous on the rank-0 pod (torchrun c10d); the rank-0 Service exposes it. "
        "With hostNetwork it is a port of the node itself: jobs that may share nodes need different ports.",
    )
    host_network: bool = Field(
        default=False,
        description="Run each pod in its node's network namespace, as bare-metal GPU clusters with RDMA/InfiniBand "
        "do for NCCL. The pods' DNS policy becomes ClusterFirstWithHostNet, so the rank-0 Service name still "
        "resolves. Pods on one node then share its ports: every pod reserves rdzvPort as a hostPort, so the "
        "scheduler never places two pods that need the same port on one node; such a pod waits, and the job's "
        "Running condition says which port is taken (reason RendezvousPortInUse), as it does when a process "
        "outside Kubernetes holds the port. Needs a namespace whose Pod Security level allows host networking "
        "(privileged). Takes effect with the next gang.",
    )

    # Pods
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        pattern=r"^\S+$",
        description="Trainer container image; defaults to the operator's configured trainer image.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy of the trainer image; defaults to the operator's setting."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, max_length=16, description="Secrets used to pull the trainer image."
    )
    volumes: list[SharedVolume] | None = Field(
        default=None,
        max_length=MAX_VOLUMES,
        description="PersistentVolumeClaims mounted into every pod (model, data, checkpoint directory).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **_cel(
                (
                    f"self.all(v, !v.name.startsWith('{RESERVED_VOLUME_PREFIX}') && "
                    f"!(v.mountPath in {_reserved_names_cel(RESERVED_MOUNT_PATHS)}))",
                    _VOLUME_RESERVED_MESSAGE,
                ),
                ("self.all(a, self.exists_one(b, b.mountPath == a.mountPath))", _MOUNT_PATH_UNIQUE_MESSAGE),
            ),
        },
    )
    shm_size: Quantity | None = Field(
        default=None,
        description="Size limit of /dev/shm (a memory-backed emptyDir; counts against the pod's memory). "
        "Defaults to the operator's setting (unlimited when unset).",
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=MAX_ENV,
        description="Extra environment variables of the training container (e.g. HF_TOKEN from a Secret). They "
        "are added after the operator's TRAINING_HUB_* variables, which they may not set.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **_cel((f"self.all(e, !(e.name in {_reserved_names_cel(RESERVED_ENV_NAMES)}))", _ENV_RESERVED_MESSAGE)),
        },
    )
    env_from: list[EnvFromSource] | None = Field(
        default=None,
        max_length=MAX_ENV_FROM,
        description="ConfigMaps/Secrets whose keys become environment variables. Variables set by the operator "
        "or by env take precedence.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None, max_length=MAX_MAP_ENTRIES, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=MAX_TOLERATIONS, description="Taints the pods tolerate (e.g. on GPU nodes)."
    )
    affinity: Affinity | None = Field(default=None, description="Extra scheduling constraints of the pods.")
    priority_class_name: str | None = Field(
        default=None, min_length=1, max_length=253, description="PriorityClass of the pods."
    )
    service_account_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="ServiceAccount the pods run as; the namespace's default when unset.",
    )
    pod_labels: dict[str, Annotated[str, StringConstraints(max_length=63, pattern=_LABEL_VALUE)]] | None = Field(
        default=None,
        max_length=MAX_MAP_ENTRIES,
        description="Extra labels on every pod.",
        json_schema_extra=_cel(
            (
                f"self.all(k, !k.startsWith('{labels.PREFIX}') && "
                "!(k in "
                + _reserved_names_cel(tuple(k for k in labels.RESERVED_POD_LABELS if not k.startswith(labels.PREFIX)))
                + "))",
                _POD_LABELS_MESSAGE,
            )
        ),
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None,
        max_length=MAX_MAP_ENTRIES,
        description="Extra annotations on every pod.",
        json_schema_extra=_cel(
            (
                f"self.all(k, !(k in {_reserved_names_cel(labels.RESERVED_POD_ANNOTATIONS)}))",
                _POD_ANNOTATIONS_MESSAGE,
            )
        ),
    )
    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="Seconds a pod gets between SIGTERM and SIGKILL (e.g. to save a checkpoint on suspend); "
        "Kubernetes' default (30) when unset.",
    )

    # Run policy
    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="How many times the whole gang is restarted after a failure before the job is Failed. "
        "Evictions, preemptions and lost nodes do not count.",
    )
    suspend: bool = Field(
        default=False,
        description="true removes the pods (gracefully) and sets the job Suspended; false starts a new gang. With "
        "Kueue, the gang's quota is released once its pods have stopped, and nothing of a suspended job is queued; "
        "the new gang on resume queues again.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Seconds after the job's gang first started (was admitted: created, and with Kueue let through "
        "its scheduling gates) after which the job is Failed (reason DeadlineExceeded) and its pods are deleted. "
        "Time waiting in a Kueue queue does not count.",
    )
    unschedulable_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Seconds the gang may stay unable to fit before the job is Failed: Kueue reports it can never "
        "be admitted (reason Inadmissible, e.g. more than the queue's maximum capacity), or the scheduler cannot "
        "place a pod (reason Unschedulable, e.g. too few GPUs, a missing PVC, an unknown GPU resource). Unset: wait, "
        "as Kueue and the scheduler do (a gang waiting for GPUs that other jobs hold looks the same to the scheduler "
        "as one that can never fit). Waiting for quota in a Kueue queue (reason Queued) never counts.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Seconds after the job finished (Succeeded or Failed) after which the SFTJob and everything "
        "it owns are deleted; kept forever when unset.",
    )
    clean_pod_policy: CleanPodPolicy = Field(
        default=CleanPodPolicy.RUNNING,
        description="Pods deleted when the job ends: Running (default; pods still running are deleted, finished "
        "pods are kept for their logs), All (every pod), None (no pod; running pods keep running).",
    )

    @model_validator(mode="after")
    def _check_rules(self) -> "SFTJobSpec":
        error = rule_violations(self._rules, self.__dict__)
        if error is not None:
            raise error
        return self

    @field_validator("volumes")
    @classmethod
    def _volumes_not_reserved(cls, volumes: list[SharedVolume] | None) -> list[SharedVolume] | None:
        if volumes:
            if any(v.name.startswith(RESERVED_VOLUME_PREFIX) or v.mount_path in RESERVED_MOUNT_PATHS for v in volumes):
                raise ValueError(_VOLUME_RESERVED_MESSAGE)
            names = [v.name for v in volumes]
            if len(set(names)) != len(names):
                raise ValueError("each volume name must be unique")
            paths = [v.mount_path for v in volumes]
            if len(set(paths)) != len(paths):
                raise ValueError(_MOUNT_PATH_UNIQUE_MESSAGE)
        return volumes

    @field_validator("env")
    @classmethod
    def _env_not_reserved(cls, env: list[EnvVar] | None) -> list[EnvVar] | None:
        if env:
            if any(e.name in RESERVED_ENV_NAMES for e in env):
                raise ValueError(_ENV_RESERVED_MESSAGE)
            names = [e.name for e in env]
            if len(set(names)) != len(names):
                raise ValueError("each env name must be unique")
        return env

    @field_validator("pod_labels")
    @classmethod
    def _pod_labels_not_reserved(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and any(k.startswith(labels.PREFIX) or k in labels.RESERVED_POD_LABELS for k in value):
            raise ValueError(_POD_LABELS_MESSAGE)
        return value

    @field_validator("pod_annotations")
    @classmethod
    def _pod_annotations_not_reserved(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and any(k in labels.RESERVED_POD_ANNOTATIONS for k in value):
            raise ValueError(_POD_ANNOTATIONS_MESSAGE)
        return value


# ---- status -----------------------------------------------------------------------------------------------------


class _StatusModel(BaseModel):
    # Status is written by the operator and read back; unknown fields (from another operator version) are ignored.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_StatusModel):
    """A metav1.Condition: one aspect of the job's state."""

    type: str = Field(
        min_length=1, max_length=316, description="Prepared, Created, Scheduled, Running, Succeeded, Failed, Suspended, or the kstatus conditions Ready, Reconciling, Stalled."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(
        default=None, max_length=1024, description="CamelCase reason for the last transition, e.g. BackoffLimitExceeded."
    )
    message: str | None = Field(default=None, max_length=32768, description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was set for."
    )


class Progress(_StatusModel):
    """The rank-0 pod's last progress line."""

    epoch: int | None = Field(default=None, ge=0, description="Current epoch.")
    step: int | None = Field(default=None, ge=0, description="Current optimizer step.")
    loss: float | None = Field(default=None, description="Loss of the last step.")
    samples_seen: int | None = Field(default=None, ge=0, description="Samples processed so far.")
    updated_at: datetime | None = Field(default=None, description="When this progress was read (RFC 3339).")


class Summary(_StatusModel):
    """The rank-0 pod's termination summary (what the entrypoint wrote to its termination-message path)."""

    outcome: str | None = Field(
        default=None, description="succeeded, failed, invalid_config or rendezvous_timeout."
    )
    message: str | None = Field(default=None, description="The entrypoint's message.")
    final_checkpoint: str | None = Field(default=None, description="Path of the last checkpoint saved.")
    epoch: int | None = Field(default=None, ge=0, description="Last epoch reached.")
    step: int | None = Field(default=None, ge=0, description="Last step reached.")
    loss: float | None = Field(default=None, description="Last loss.")
    resumed_from_epoch: int | None = Field(
        default=None, ge=0, description="Epoch the run resumed from (a restart reusing the checkpoint directory)."
    )


class LastFailure(_StatusModel):
    """The pod failure that caused the last gang restart, or the final failure."""

    rank: int | None = Field(
        default=None, ge=0,
        description="Node rank of the failed pod (unset for the prepare pod). When several ranks failed, the one that "
        "failed on its own, not one that only lost its connection to it.",
    )
    exit_code: int | None = Field(default=None, description="Exit code of the training container.")
    reason: str | None = Field(default=None, description="Reason, e.g. Error, OOMKilled, Evicted, InvalidConfig.")
    message: str | None = Field(default=None, description="Message (from the termination summary or the pod).")


class SFTJobStatus(_StatusModel):
    """Observed state of an SFTJob, written by the operator."""

    phase: Phase | None = Field(
        default=None, description="Pending, Preparing, Running, Succeeded, Failed, Suspended or Restarting."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Latest observations (Prepared, Created, Scheduled, Running, Succeeded, Failed, Suspended; Ready, "
        "Reconciling, Stalled for kstatus/Flux). Why a gang waits is the Scheduled condition's reason (Queued, "
        "Inadmissible, Unschedulable) and message, repeated in Ready/Reconciling.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this status describes."
    )
    attempt: int | None = Field(default=None, ge=0, description="Current gang attempt (0, 1, ...).")
    restarts: int | None = Field(
        default=None, ge=0, description="Gang restarts counted against spec.backoffLimit."
    )
    rdzv_id: str | None = Field(default=None, description="Rendezvous id of the current gang.")
    nodes_ready: int | None = Field(default=None, ge=0, description="Pods of the current gang that are ready.")
    nodes_total: int | None = Field(default=None, ge=0, description="Pods in the gang (spec.nnodes).")
    nodes: str | None = Field(default=None, description='"ready/total", for the printer column.')
    gpus_per_node: int | None = Field(default=None, ge=0, description="GPUs per pod, for the printer column.")
    progress: Progress | None = Field(default=None, description="Training progress reported by rank 0.")
    progress_text: str | None = Field(
        default=None, description='Progress in one line, e.g. "epoch 1 step 40 loss 1.23".'
    )
    start_time: datetime | None = Field(
        default=None,
        description="When the first gang started: created and let through its scheduling gates (admitted by Kueue) "
        "(RFC 3339). activeDeadlineSeconds counts from here.",
    )
    unschedulable_since: datetime | None = Field(
        default=None,
        description="Since when the gang has been Inadmissible or Unschedulable (for unschedulableTimeoutSeconds).",
    )
    completion_time: datetime | None = Field(default=None, description="When the job finished (RFC 3339).")
    summary: Summary | None = Field(default=None, description="Rank 0's termination summary.")
    last_failure: LastFailure | None = Field(
        default=None, description="The failure behind the last restart or the final failure."
    )


# ---- reading a manifest -----------------------------------------------------------------------------------------


class InvalidSFTJob(ValueError):
    """An SFTJob manifest that cannot be run; `problems` lists each bad field as "path: what is wrong"."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid SFTJob:\n  - " + "\n  - ".join(problems))


NAME_MESSAGE = (
    "metadata.name must be a DNS-1035 label of at most 63 characters (lowercase letters, digits, '-', starting "
    "with a letter): it names the rank-0 Service"
)
NAME_RULE_CEL = "size(self.metadata.name) <= 63 && self.metadata.name.matches('" + _DNS1035_LABEL + "')"


def _plain(value: Any) -> Any:
    """Plain dicts/lists from any mappings/sequences (e.g. kopf's read-only views), so free-form fields such as
    extraArgs serialize as JSON."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def load_spec(job: Mapping[str, Any]) -> SFTJobSpec:
    """Validate an SFTJob object (as read from the API or a file) and return its spec; raises `InvalidSFTJob`."""
    problems: list[str] = []
    if job.get("apiVersion") not in (None, API_VERSION):
        problems.append(f"apiVersion: must be {API_VERSION} (got {job.get('apiVersion')!r})")
    if job.get("kind") not in (None, KIND):
        problems.append(f"kind: must be {KIND} (got {job.get('kind')!r})")
    metadata = job.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or len(name) > 63 or not re.match(_DNS1035_LABEL, name):
        problems.append(f"{NAME_MESSAGE} (got {name!r})")
    spec: SFTJobSpec | None = None
    try:
        spec = SFTJobSpec.model_validate(_plain(job.get("spec") or {}))
    except ValidationError as exc:
        problems.extend(validation_problems(exc, by_alias=True, prefix=("spec",)))
    if problems or spec is None:
        raise InvalidSFTJob(problems)
    return spec
