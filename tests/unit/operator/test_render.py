"""Pure rendering of one gang attempt: names, ranks, rendezvous wiring, pod security, scheduling, ownership."""

from __future__ import annotations

import re

import copy
import json

import pytest

from sftjob_operator import api, labels, render
from sftjob_operator.config import OperatorConfig
from training_hub.launch import env as launch_env
from training_hub.params import DistributedParams, SFTParams

UID = "5c6f0b8e-2f43-4d7e-9a55-0d6a5f7c1e11"
CONFIG = OperatorConfig(trainer_image="registry.example/trainer:9")


def four_node_job(**spec):
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "llama", "namespace": "team-a", "uid": UID, "labels": {labels.KUEUE_QUEUE_NAME: "gpu-q"}},
        "spec": {
            "training": {
                "modelPath": "/mnt/shared/model", "dataPath": "/mnt/shared/data.jsonl", "ckptOutputDir": "/mnt/shared/ckpt",
                "numEpochs": 2, "effectiveBatchSize": 256, "learningRate": 1e-5, "maxSeqLen": 4096,
                "extraArgs": {"random_seed": 7},
            },
            "nnodes": 4,
            "nprocPerNode": 8,
            "resources": {"requests": {"cpu": 16, "memory": "128Gi"}, "limits": {"memory": "256Gi"}},
            "volumes": [
                {"name": "shared", "claimName": "shared-pvc", "mountPath": "/mnt/shared"},
                {"name": "models", "claimName": "models-pvc", "mountPath": "/models", "readOnly": True},
            ],
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
            "envFrom": [{"configMapRef": {"name": "nccl"}}],
            **spec,
        },
    }


@pytest.fixture
def gang():
    job = four_node_job()
    return render.render_gang(job, attempt=2, rdzv_id=render.new_rdzv_id(UID, 2), config=CONFIG)


def env_of(pod) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_names_follow_the_contract(gang):
    assert gang.service["metadata"]["name"] == "llama"
    assert gang.configmap["metadata"]["name"] == "llama-params"
    assert [p["metadata"]["name"] for p in gang.pods] == [f"llama-node-{r}" for r in range(4)]
    assert {o["metadata"]["namespace"] for o in gang.objects()} == {"team-a"}
    assert gang.prepare_pod["metadata"]["name"] == "llama-prepare-2"
    assert [o["kind"] for o in gang.objects()] == ["Service", "ConfigMap", "Pod", "Pod", "Pod", "Pod", "Pod"]
    assert gang.objects()[2] is gang.prepare_pod  # created first: the gang waits for it


def test_ranks_and_one_shared_rdzv_id(gang):
    rdzv_id = render.new_rdzv_id(UID, 2)
    for rank, pod in enumerate(gang.pods):
        env = env_of(pod)
        assert env[launch_env.NODE_RANK] == str(rank)
        assert pod["metadata"]["labels"][labels.NODE_RANK] == str(rank)
        assert env[launch_env.NNODES] == "4"
        assert env[launch_env.NPROC_PER_NODE] == "8"
        assert env[launch_env.RDZV_ID] == rdzv_id == pod["metadata"]["labels"][labels.RDZV_ID]
        assert pod["metadata"]["labels"][labels.ATTEMPT] == "2"
        assert env[launch_env.RDZV_ENDPOINT] == "llama.team-a.svc:29500"
        assert env[launch_env.RDZV_TIMEOUT] == "600"
        assert env[launch_env.TERMINATION_LOG] == "/dev/termination-log"


def test_pod_environment_is_what_the_entrypoint_accepts(gang):
    # The library's own reader and model accept every pod's environment: the two ends of the contract agree.
    for rank, pod in enumerate(gang.pods):
        launch = launch_env.read_launch_environment({k: v for k, v in env_of(pod).items() if v is not None})
        distributed = DistributedParams.model_validate(launch.distributed)
        assert distributed.node_rank == rank and distributed.nnodes == 4 and distributed.nproc_per_node == 8
        assert launch.termination_log == pod["spec"]["containers"][0]["terminationMessagePath"]


def test_rank0_service_is_headless_and_selects_only_rank0(gang):
    service = gang.service
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [{"name": "rdzv", "port": 29500, "targetPort": 29500, "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    selected = [p["metadata"]["name"] for p in gang.pods if selector.items() <= p["metadata"]["labels"].items()]
    assert selected == ["llama-node-0"]
    host, port = env_of(gang.pods[0])[launch_env.RDZV_ENDPOINT].rsplit(":", 1)
    assert host.split(".")[:2] == [service["metadata"]["name"], service["metadata"]["namespace"]]
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert gang.pods[0]["spec"]["containers"][0]["ports"][0]["containerPort"] == int(port)


def test_configmap_holds_the_training_parameters(gang):
    params = json.loads(gang.configmap["data"]["params.json"])
    assert SFTParams.model_validate(params).to_camel_dict() == params
    assert params["modelPath"] == "/mnt/shared/model" and params["extraArgs"] == {"random_seed": 7}
    container = gang.pods[0]["spec"]["containers"][0]
    assert container["command"] == ["training-hub", "sft", "--config", "/etc/training-hub/params.json"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/training-hub")
    volume = next(v for v in gang.pods[0]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == gang.configmap["metadata"]["name"] and mount["readOnly"] is True


def test_gpu_limit_and_resources(gang):
    for pod in gang.pods:
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources["limits"] == {"memory": "256Gi", "nvidia.com/gpu": 8}
        assert resources["requests"] == {"cpu": 16, "memory": "128Gi"}


def test_other_gpu_resource_name():
    job = four_node_job(gpuResourceName="amd.com/gpu", nprocPerNode=4, resources=None)
    gang = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG)
    assert gang.pods[0]["spec"]["containers"][0]["resources"] == {"limits": {"amd.com/gpu": 4}}


def test_shared_volumes_and_shm(gang):
    for pod in gang.pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert volumes["shared"]["persistentVolumeClaim"] == {"claimName": "shared-pvc", "readOnly": False}
        assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models-pvc", "readOnly": True}
        assert mounts["shared"]["mountPath"] == "/mnt/shared" and mounts["models"]["readOnly"] is True
        shm = next(name for name, v in volumes.items() if "emptyDir" in v)
        assert volumes[shm]["emptyDir"] == {"medium": "Memory"}
        assert mounts[shm]["mountPath"] == "/dev/shm"
        assert set(volumes) == set(mounts)


def test_shm_size_from_spec_or_operator_config():
    job = four_node_job(shmSize="64Gi")
    gang = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG)
    assert {"medium": "Memory", "sizeLimit": "64Gi"} in [v.get("emptyDir") for v in gang.pods[0]["spec"]["volumes"]]
    config = OperatorConfig(shm_size_limit="8Gi")
    gang = render.render_gang(four_node_job(), attempt=0, rdzv_id="r", config=config)
    assert {"medium": "Memory", "sizeLimit": "8Gi"} in [v.get("emptyDir") for v in gang.pods[0]["spec"]["volumes"]]


def test_restricted_security_context(gang):
    for pod in gang.pods:
        assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        for container in pod["spec"]["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any("hostPath" in v for v in pod["spec"]["volumes"])
        assert not pod["spec"].get("hostNetwork") and not pod["spec"].get("hostIPC")


def test_pods_never_restart_and_report_their_summary(gang):
    for pod in gang.pods:
        assert pod["spec"]["restartPolicy"] == "Never"
        container = pod["spec"]["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert container["image"] == "registry.example/trainer:9"


def test_one_pod_per_node_anti_affinity(gang):
    for pod in gang.pods:
        (term,) = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        # the term matches every pod of the gang (so any two of them conflict), and only this job's pods
        matches = term["labelSelector"]["matchLabels"]
        assert all(matches.items() <= p["metadata"]["labels"].items() for p in gang.pods)
        other = render.render_gang({**four_node_job(), "metadata": {"name": "other", "uid": "u"}}, attempt=0,
                                   rdzv_id="r", config=CONFIG)
        assert not matches.items() <= other.pods[0]["metadata"]["labels"].items()


def test_user_affinity_is_kept_and_the_anti_affinity_term_added():
    user_term = {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}
    node_affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}
    job = four_node_job(affinity={
        "nodeAffinity": node_affinity,
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [user_term]},
    })
    before = copy.deepcopy(job)
    gang = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG)
    affinity = gang.pods[0]["spec"]["affinity"]
    assert affinity["nodeAffinity"] == node_affinity
    terms = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0] == user_term and terms[1]["labelSelector"]["matchLabels"] == {labels.JOB_NAME: "llama"}
    assert job == before  # rendering never mutates its input
    # each pod has its own copy: editing one pod's affinity does not change another's
    terms.append({})
    assert len(gang.pods[1]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]) == 2


def test_owner_references_make_the_job_the_controller(gang):
    for obj in gang.objects():
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "training-hub.io/v1alpha1", "kind": "SFTJob", "name": "llama", "uid": UID,
            "controller": True, "blockOwnerDeletion": True,
        }]
        assert obj["metadata"]["labels"][labels.JOB_NAME] == "llama"
        assert obj["metadata"]["labels"][labels.MANAGED_BY] == labels.MANAGED_BY_VALUE


def test_kueue_pod_group(gang):
    for pod in gang.pods:
        assert pod["metadata"]["labels"][labels.KUEUE_QUEUE_NAME] == "gpu-q"
        assert pod["metadata"]["labels"][labels.KUEUE_POD_GROUP_NAME] == "llama-a2"  # one group (Workload) per attempt
        assert pod["metadata"]["annotations"][labels.KUEUE_POD_GROUP_TOTAL_COUNT] == "4"
        # The operator replaces a gang that ended, never Kueue: the group finishes once its pods have terminated.
        assert pod["metadata"]["annotations"][labels.KUEUE_RETRIABLE_IN_GROUP] == "false"
    job = four_node_job()
    del job["metadata"]["labels"]
    pod = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG).pods[0]
    assert labels.KUEUE_QUEUE_NAME not in pod["metadata"]["labels"]


def test_pod_group_name_is_per_attempt_and_a_valid_label_value():
    assert render.pod_group_name("llama", 0) == "llama-a0"
    assert render.pod_group_name("llama", 12) == "llama-a12"
    long_a, long_b = "j" * 63, "j" * 62 + "k"
    names = {render.pod_group_name(name, attempt) for name in (long_a, long_b) for attempt in (0, 1, 1000)}
    assert len(names) == 6
    for name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)


def test_user_env_comes_after_the_operator_variables(gang):
    container = gang.pods[0]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names[:7] == list(api.RESERVED_ENV_NAMES) and names[7:] == ["HF_TOKEN"]
    assert container["env"][7]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "nccl"}}]


def test_user_env_may_not_override_the_contract_variables():
    job = four_node_job(env=[{"name": launch_env.RDZV_ENDPOINT, "value": "evil:1"}])
    with pytest.raises(api.InvalidSFTJob, match="spec.env"):
        render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG)


def test_pod_customisation_is_applied():
    job = four_node_job(
        nodeSelector={"gpu": "h100"}, tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        priorityClassName="train-high", serviceAccountName="trainer", terminationGracePeriodSeconds=600,
        podLabels={"team": "nlp"}, podAnnotations={"cost-center": "42"}, image="mine:1", imagePullPolicy="Always",
        imagePullSecrets=[{"name": "regcred"}], rdzvPort=31000,
    )
    pod = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG).pods[3]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"gpu": "h100"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert (spec["priorityClassName"], spec["serviceAccountName"]) == ("train-high", "trainer")
    assert spec["terminationGracePeriodSeconds"] == 600
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["labels"]["team"] == "nlp" and pod["metadata"]["annotations"]["cost-center"] == "42"
    container = spec["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == ("mine:1", "Always")
    assert env_of(pod)[launch_env.RDZV_ENDPOINT] == "llama.team-a.svc:31000"


def test_cluster_domain_gives_the_fqdn_endpoint():
    config = OperatorConfig(cluster_domain="cluster.local", rdzv_timeout_s=90)
    pod = render.render_gang(four_node_job(), attempt=0, rdzv_id="r", config=config).pods[1]
    assert env_of(pod)[launch_env.RDZV_ENDPOINT] == "llama.team-a.svc.cluster.local:29500"
    assert env_of(pod)[launch_env.RDZV_TIMEOUT] == "90"


def test_rendering_is_pure_and_repeatable():
    job = four_node_job()
    before = copy.deepcopy(job)
    first = render.render_gang(job, attempt=1, rdzv_id="x-1", config=CONFIG)
    second = render.render_gang(job, attempt=1, rdzv_id="x-1", config=CONFIG)
    assert first == second and job == before


def test_single_node_job():
    job = four_node_job(nnodes=1)
    gang = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG)
    assert [p["metadata"]["name"] for p in gang.pods] == ["llama-node-0"]
    assert gang.pods[0]["metadata"]["annotations"][labels.KUEUE_POD_GROUP_TOTAL_COUNT] == "1"


def test_invalid_job_raises_naming_the_field():
    job = four_node_job(nnodes=0)
    with pytest.raises(api.InvalidSFTJob) as caught:
        render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG)
    assert any(p.startswith("spec.nnodes:") for p in caught.value.problems)


def test_rdzv_id_is_deterministic_per_attempt_and_fresh_across_attempts():
    ids = [render.new_rdzv_id(UID, attempt) for attempt in range(50)]
    assert ids == [render.new_rdzv_id(UID, attempt) for attempt in range(50)]
    assert len(set(ids)) == 50
    assert render.new_rdzv_id("another-uid", 0) != ids[0]
    for rdzv_id in ids:
        assert len(rdzv_id) <= 63 and rdzv_id.replace("-", "").isalnum()  # a valid label value
    with pytest.raises(ValueError, match="attempt"):
        render.new_rdzv_id(UID, -1)


def test_read_only_mappings_render_like_dicts():
    from types import MappingProxyType

    def frozen(value):
        if isinstance(value, dict):
            return MappingProxyType({k: frozen(v) for k, v in value.items()})
        if isinstance(value, list):
            return tuple(frozen(v) for v in value)
        return value

    job = four_node_job()
    expected = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG)
    assert render.render_gang(frozen(job), attempt=0, rdzv_id="r", config=CONFIG) == expected


# ---- Preflight mode ---------------------------------------------------------------------------------------------


def test_preflight_mode_runs_the_preflight_with_the_same_gang_wiring(gang):
    job = four_node_job(mode="Preflight", preflight={"sizeMb": 8, "iters": 3, "warmup": 0, "backend": "gloo"})
    preflight = render.render_gang(job, attempt=2, rdzv_id=render.new_rdzv_id(UID, 2), config=CONFIG)
    for train_pod, preflight_pod in zip(gang.pods, preflight.pods, strict=True):
        container = preflight_pod["spec"]["containers"][0]
        assert container["command"] == [
            "training-hub", "preflight", "--size-mb", "8", "--iters", "3", "--warmup", "0", "--backend", "gloo"
        ]
        # Everything but the command is the training gang's: the env (rendezvous), scheduling, volumes, resources.
        train_container = train_pod["spec"]["containers"][0]
        assert {k: v for k, v in container.items() if k != "command"} == {
            k: v for k, v in train_container.items() if k != "command"
        }
        assert {k: v for k, v in preflight_pod["spec"].items() if k != "containers"} == {
            k: v for k, v in train_pod["spec"].items() if k != "containers"
        }
    assert preflight.service == gang.service and preflight.configmap == gang.configmap


def test_preflight_command_is_accepted_by_the_entrypoint_with_the_options_defaults():
    from training_hub.launch.cli import build_parser

    job = four_node_job(mode="Preflight")
    command = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG).pods[0]["spec"]["containers"][0]["command"]
    assert command[:2] == ["training-hub", "preflight"]
    args = build_parser().parse_args(command[1:])
    defaults = build_parser().parse_args(["preflight"])
    # The operator's defaults are the entrypoint's defaults.
    assert (args.size_mb, args.iters, args.warmup, args.backend) == (
        defaults.size_mb, defaults.iters, defaults.warmup, defaults.backend
    )


def test_train_mode_is_the_default_and_runs_sft():
    for job in (four_node_job(), four_node_job(mode="Train")):
        container = render.render_gang(job, attempt=0, rdzv_id="r", config=CONFIG).pods[0]["spec"]["containers"][0]
        assert container["command"] == ["training-hub", "sft", "--config", "/etc/training-hub/params.json"]


# ---- default trainer resources from the operator's configuration ------------------------------------------------


def resources_of(job, config) -> dict:
    return render.render_gang(job, attempt=0, rdzv_id="r", config=config).pods[0]["spec"]["containers"][0]["resources"]


DEFAULTS = OperatorConfig(
    default_trainer_resources=(
        (("cpu", "4"), ("ephemeral-storage", "20Gi"), ("memory", "32Gi")),
        (("cpu", "32"), ("memory", "64Gi")),
    )
)


def test_operator_default_resources_apply_when_the_job_sets_none():
    assert resources_of(four_node_job(resources=None), DEFAULTS) == {
        "requests": {"cpu": "4", "ephemeral-storage": "20Gi", "memory": "32Gi"},
        "limits": {"cpu": "32", "memory": "64Gi", "nvidia.com/gpu": 8},
    }


def test_the_jobs_own_resources_win_per_key():
    # The job sets requests.cpu/memory and limits.memory; the defaults fill requests.ephemeral-storage and limits.cpu.
    assert resources_of(four_node_job(), DEFAULTS) == {
        "requests": {"cpu": 16, "ephemeral-storage": "20Gi", "memory": "128Gi"},
        "limits": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": 8},
    }


def test_defaults_that_would_contradict_the_job_are_left_out():
    # Job requests 48 CPUs: the default cpu limit (32) would be below it, so no cpu limit. Job limits memory to
    # 16Gi: the default request (32Gi) would exceed it, so Kubernetes takes the request from the limit.
    job = four_node_job(resources={"requests": {"cpu": 48}, "limits": {"memory": "16Gi"}})
    resources = resources_of(job, DEFAULTS)
    assert resources == {
        "requests": {"cpu": 48, "ephemeral-storage": "20Gi"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": 8},
    }
    for name, request in resources["requests"].items():
        if name in resources["limits"]:
            assert render.quantity_value(request) <= render.quantity_value(resources["limits"][name])


def test_default_resources_never_touch_the_gpu_resource():
    config = OperatorConfig(default_trainer_resources=((("amd.com/gpu", "1"),), (("amd.com/gpu", "2"),)))
    job = four_node_job(resources=None, gpuResourceName="amd.com/gpu", nprocPerNode=4)
    assert resources_of(job, config) == {"limits": {"amd.com/gpu": 4}}


def test_no_operator_defaults_keep_the_jobs_resources_exactly(gang):
    assert resources_of(four_node_job(), CONFIG) == gang.pods[0]["spec"]["containers"][0]["resources"]


def test_pods_use_the_cluster_network_by_default(gang):
    for pod in gang.pods:
        assert "hostNetwork" not in pod["spec"] and "dnsPolicy" not in pod["spec"]
        assert pod["spec"]["containers"][0]["ports"] == [{"name": "rdzv", "containerPort": 29500, "protocol": "TCP"}]


def test_host_network_pods_resolve_the_service_and_reserve_the_rdzv_port_on_their_node():
    gang = render.render_gang(four_node_job(hostNetwork=True, rdzvPort=31000), attempt=0, rdzv_id="r", config=CONFIG)
    for pod in gang.pods:
        spec = pod["spec"]
        assert spec["hostNetwork"] is True
        # ClusterFirst would use the node's resolver on the host network; the rank-0 Service must still resolve.
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        # Every rank reserves the port as a hostPort: the scheduler keeps gangs that need it off each other's nodes.
        assert spec["containers"][0]["ports"] == [
            {"name": "rdzv", "containerPort": 31000, "hostPort": 31000, "protocol": "TCP"}
        ]
        assert env_of(pod)[launch_env.RDZV_ENDPOINT] == "llama.team-a.svc:31000"
    assert gang.service["spec"]["ports"][0]["targetPort"] == 31000
    # the prepare pod runs where the gang's pods may: on the host network too (it opens no port)
    assert gang.prepare_pod["spec"]["hostNetwork"] is True
    assert gang.prepare_pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_host_network_must_be_a_boolean():
    with pytest.raises(api.InvalidSFTJob, match=r"spec\.hostNetwork"):
        render.render_gang(four_node_job(hostNetwork="yes please"), attempt=0, rdzv_id="r", config=CONFIG)


# --- the prepare pod -----------------------------------------------------------------------------------------------


def test_prepare_pod_runs_the_prepare_command_on_cpu_with_the_jobs_volumes_outside_the_kueue_group(gang):
    pod = gang.prepare_pod
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["training-hub", "prepare", "--config", "/etc/training-hub/params.json"]
    assert container["image"] == gang.pods[0]["spec"]["containers"][0]["image"]
    assert container["resources"] == {}  # no GPU; no CPU/memory unless the job or the operator's defaults say so
    assert pod["metadata"]["labels"] == {labels.JOB_NAME: "llama", labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
                                         labels.ROLE: "prepare", labels.ATTEMPT: "2"}
    assert not pod["metadata"].get("annotations")  # no Kueue pod-group count either
    # the same parameters and volumes as the gang, no /dev/shm, no rendezvous environment
    gang_mounts = gang.pods[0]["spec"]["containers"][0]["volumeMounts"]
    assert container["volumeMounts"] == [m for m in gang_mounts if m["mountPath"] != "/dev/shm"]
    assert [e["name"] for e in container["env"]] == [launch_env.TERMINATION_LOG, "HF_TOKEN"]
    assert container["envFrom"] == [{"configMapRef": {"name": "nccl"}}]
    assert container["securityContext"]["runAsNonRoot"] and not container["securityContext"]["allowPrivilegeEscalation"]
    assert pod["spec"]["restartPolicy"] == "Never" and "affinity" not in pod["spec"]
    assert pod["metadata"]["ownerReferences"] == gang.pods[0]["metadata"]["ownerReferences"]


def test_prepare_pod_resources_and_node_selector_from_the_job_then_the_operator_defaults():
    config = OperatorConfig(default_prepare_resources=((("cpu", "2"), ("memory", "8Gi")), (("memory", "16Gi"),)))
    job = four_node_job(prepare={"resources": {"requests": {"cpu": 8}}, "nodeSelector": {"pool": "cpu"}},
                        nodeSelector={"pool": "h100"}, tolerations=[{"key": "gpu", "operator": "Exists"}])
    pod = render.render_gang(job, attempt=0, rdzv_id="r", config=config).prepare_pod
    assert pod["spec"]["containers"][0]["resources"] == {"requests": {"cpu": 8, "memory": "8Gi"},
                                                         "limits": {"memory": "16Gi"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}  # not the GPU nodes' selector
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]


def test_gang_anti_affinity_ignores_the_prepare_pod(gang):
    (term,) = gang.pods[0]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchExpressions"] == [{"key": labels.ROLE, "operator": "DoesNotExist"}]
    assert labels.ROLE in gang.prepare_pod["metadata"]["labels"]  # so it never keeps a gang pod off its node


def test_prepare_pod_is_off_when_disabled_and_in_preflight_mode():
    assert render.render_gang(four_node_job(prepare={"enabled": False}), attempt=0, rdzv_id="r", config=CONFIG).prepare_pod is None
    assert render.render_gang(four_node_job(mode="Preflight"), attempt=0, rdzv_id="r", config=CONFIG).prepare_pod is None


def test_prepare_resources_may_not_ask_for_a_gpu():
    with pytest.raises(api.InvalidSFTJob, match="prepare.resources must not request the GPU resource"):
        render.render_gang(four_node_job(prepare={"resources": {"limits": {"nvidia.com/gpu": 1}}}), attempt=0,
                           rdzv_id="r", config=CONFIG)
