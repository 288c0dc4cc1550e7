"""SFTJob models: defaults, camelCase, the shared SFTParams, and clear errors naming the field."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from sftjob_operator import api, labels
from training_hub.launch import env as launch_env
from training_hub.params import SFTParams

TRAINING = {
    "modelPath": "/models/qwen",
    "dataPath": "/data/train.jsonl",
    "ckptOutputDir": "/ckpt",
    "numEpochs": 2,
    "effectiveBatchSize": 64,
    "learningRate": 2e-5,
    "maxSeqLen": 2048,
}


def job(**spec):
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {"training": copy.deepcopy(TRAINING), **spec},
    }


def problems_of(manifest) -> list[str]:
    with pytest.raises(api.InvalidSFTJob) as caught:
        api.load_spec(manifest)
    assert isinstance(caught.value, ValueError)  # callers may catch ValueError
    return caught.value.problems


def test_minimal_spec_gets_every_documented_default():
    spec = api.load_spec(job())
    assert spec.nnodes == 1
    assert spec.nproc_per_node == 1
    assert spec.gpu_resource_name == "nvidia.com/gpu"
    assert spec.rdzv_port == 29500
    assert spec.backoff_limit == 3
    assert spec.suspend is False
    assert spec.clean_pod_policy is api.CleanPodPolicy.RUNNING
    assert spec.mode is api.JobMode.TRAIN
    for unset in (
        "image", "image_pull_policy", "image_pull_secrets", "volumes", "env", "env_from", "node_selector",
        "tolerations", "affinity", "priority_class_name", "service_account_name", "pod_labels", "pod_annotations",
        "termination_grace_period_seconds", "active_deadline_seconds", "ttl_seconds_after_finished", "resources",
        "shm_size", "preflight",
    ):
        assert getattr(spec, unset) is None, unset


def test_training_is_the_library_parameter_model_itself():
    spec = api.load_spec(job())
    assert type(spec.training) is SFTParams
    assert api.SFTJobSpec.model_fields["training"].annotation is SFTParams
    assert spec.training.learning_rate == TRAINING["learningRate"]
    # camelCase round trip: what the API server stores is what the model dumps
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["training"]["modelPath"] == TRAINING["modelPath"]
    assert api.SFTJobSpec.model_validate(dumped) == spec


def test_snake_case_names_are_accepted_in_python():
    spec = api.SFTJobSpec(training=SFTParams(**{
        "model_path": "m", "data_path": "d", "ckpt_output_dir": "c", "num_epochs": 1,
        "effective_batch_size": 1, "learning_rate": 1e-5, "max_seq_len": 8,
    }), nproc_per_node=8, clean_pod_policy="All")
    assert spec.nproc_per_node == 8 and spec.clean_pod_policy is api.CleanPodPolicy.ALL


def test_full_spec_is_accepted():
    spec = api.load_spec(job(
        nnodes=4, nprocPerNode=8, gpuResourceName="amd.com/gpu", rdzvPort=30000,
        resources={"requests": {"cpu": 32, "memory": "256Gi"}, "limits": {"memory": "512Gi", "rdma/ib": 1}},
        image="registry.example/trainer:1", imagePullPolicy="Always", imagePullSecrets=[{"name": "pull"}],
        volumes=[{"name": "data", "claimName": "shared", "mountPath": "/mnt/data", "readOnly": True, "subPath": "x"}],
        env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        envFrom=[{"secretRef": {"name": "s3"}, "prefix": "S3_"}],
        nodeSelector={"gpu": "h100"}, tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}},
        priorityClassName="high", serviceAccountName="trainer", podLabels={"team": "a"},
        podAnnotations={"note": "x"}, terminationGracePeriodSeconds=120, shmSize="64Gi",
        backoffLimit=0, suspend=True, activeDeadlineSeconds=3600, ttlSecondsAfterFinished=0, cleanPodPolicy="None",
    ))
    assert spec.resources.limits == {"memory": "512Gi", "rdma/ib": 1}
    assert spec.volumes[0].read_only is True
    assert spec.env[0].value_from.secret_key_ref.key == "token"
    assert spec.clean_pod_policy is api.CleanPodPolicy.NONE


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"nnodes": 0}, "spec.nnodes", "greater than or equal to 1"),
        ({"nnodes": api.MAX_NNODES + 1}, "spec.nnodes", "less than or equal to"),
        ({"nnodes": "four"}, "spec.nnodes", "valid integer"),
        ({"nprocPerNode": 0}, "spec.nprocPerNode", "greater than or equal to 1"),
        ({"rdzvPort": 80}, "spec.rdzvPort", "greater than or equal to 1024"),
        ({"rdzvPort": 70000}, "spec.rdzvPort", "less than or equal to 65535"),
        ({"backoffLimit": -1}, "spec.backoffLimit", "greater than or equal to 0"),
        ({"cleanPodPolicy": "Some"}, "spec.cleanPodPolicy", "'All', 'Running' or 'None'"),
        ({"suspend": "maybe"}, "spec.suspend", "valid boolean"),
        ({"activeDeadlineSeconds": 0}, "spec.activeDeadlineSeconds", "greater than or equal to 1"),
        ({"gpuResourceName": "nvidia gpu"}, "spec.gpuResourceName", "pattern"),
        ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory", "Kubernetes quantity"),
        ({"resources": {"limits": {"nvidia.com/gpu": 8}}}, "spec.resources", "GPU limit of each pod is nprocPerNode"),
        ({"resources": {"requests": {"amd.com/gpu": 1}}, "gpuResourceName": "amd.com/gpu"}, "spec.resources", "GPU"),
        ({"shmSize": "1x"}, "spec.shmSize", "Kubernetes quantity"),
        ({"volumes": [{"name": "Data", "claimName": "c", "mountPath": "/d"}]}, "spec.volumes[0].name", "pattern"),
        ({"volumes": [{"name": "d", "claimName": "c", "mountPath": "rel"}]}, "spec.volumes[0].mountPath", "pattern"),
        ({"volumes": [{"name": "d", "mountPath": "/d"}]}, "spec.volumes[0].claimName", "required"),
        ({"volumes": [{"name": "d", "claimName": "c", "mountPath": "/dev/shm"}]}, "spec.volumes", "reserved"),
        ({"volumes": [{"name": "training-hub-x", "claimName": "c", "mountPath": "/d"}]}, "spec.volumes", "reserved"),
        (
            {"volumes": [{"name": "a", "claimName": "c", "mountPath": "/d"}, {"name": "b", "claimName": "c", "mountPath": "/d"}]},
            "spec.volumes", "mountPath must be unique",
        ),
        ({"env": [{"name": launch_env.NODE_RANK, "value": "3"}]}, "spec.env", launch_env.NODE_RANK),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "spec.env", "unique"),
        ({"env": [{"value": "x"}]}, "spec.env[0].name", "required"),
        ({"tolerations": [{"operator": "Maybe"}]}, "spec.tolerations[0].operator", "'Exists' or 'Equal'"),
        ({"podLabels": {labels.NODE_RANK: "1"}}, "spec.podLabels", "must not set keys"),
        ({"podLabels": {labels.KUEUE_QUEUE_NAME: "q"}}, "spec.podLabels", "must not set keys"),
        ({"podLabels": {"team": "not a label value"}}, "spec.podLabels.team", "pattern"),
        ({"podAnnotations": {labels.KUEUE_POD_GROUP_TOTAL_COUNT: "9"}}, "spec.podAnnotations", "operator's keys"),
        ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", "'Always', 'IfNotPresent' or 'Never'"),
        ({"image": "has space"}, "spec.image", "pattern"),
        ({"replicas": 3}, "spec.replicas", "extra inputs are not permitted"),
        ({"affinity": {"nodeAfinity": {}}}, "spec.affinity.nodeAfinity", "extra inputs"),
        ({"mode": "Dryrun"}, "spec.mode", "'Train' or 'Preflight'"),
        ({"preflight": {"sizeMb": 8}}, "spec.preflight", "may only be set when mode is Preflight"),
        ({"mode": "Train", "preflight": {}}, "spec.preflight", "may only be set when mode is Preflight"),
        ({"mode": "Preflight", "preflight": {"sizeMb": 0}}, "spec.preflight.sizeMb", "greater than or equal to 1"),
        ({"mode": "Preflight", "preflight": {"iters": 0}}, "spec.preflight.iters", "greater than or equal to 1"),
        ({"mode": "Preflight", "preflight": {"backend": "mpi"}}, "spec.preflight.backend", "'auto', 'gloo' or 'nccl'"),
        ({"mode": "Preflight", "preflight": {"size": 8}}, "spec.preflight.size", "extra inputs"),
        # specs the Pod API would refuse (HTTP 422) after the gang was half created: refused here and by the CRD
        ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
         "spec.env[0]", "set value or valueFrom, not both"),
        ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"},
                                              "secretKeyRef": {"name": "s", "key": "k"}}}]},
         "spec.env[0].valueFrom", "set exactly one of configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef"),
        ({"env": [{"name": "A", "valueFrom": {}}]}, "spec.env[0].valueFrom", "set exactly one of"),
        ({"envFrom": [{"prefix": "X_"}]}, "spec.envFrom[0]", "set exactly one of configMapRef, secretRef"),
        ({"envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]}, "spec.envFrom[0]", "exactly one"),
        ({"volumes": [{"name": "d", "claimName": "c", "mountPath": "/d", "subPath": "../escape"}]},
         "spec.volumes[0].subPath", "must not contain a '..' part"),
        ({"volumes": [{"name": "d", "claimName": "c", "mountPath": "/d", "subPath": "a/../../b"}]},
         "spec.volumes[0].subPath", "'..'"),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}},
         "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms", "at least 1"),
        ({"resources": {"requests": {"cpu": "-1"}}}, "spec.resources.requests.cpu", "non-negative"),
        ({"resources": {"limits": {"memory": -5}}}, "spec.resources.limits.memory", "non-negative"),
        ({"shmSize": "-1"}, "spec.shmSize", "non-negative"),
    ],
)
def test_bad_spec_is_rejected_naming_the_field(spec, path, fragment):
    problems = problems_of(job(**spec))
    matching = [p for p in problems if p.startswith(path + ":")]
    assert matching, problems
    assert any(fragment in p for p in matching), problems


@pytest.mark.parametrize(
    ("training", "path", "fragment"),
    [
        ({"learningRate": 0}, "spec.training.learningRate", "greater than 0"),
        ({"numEpochs": "two"}, "spec.training.numEpochs", "valid integer"),
        ({"isPretraining": True}, "spec.training.blockSize", "blockSize is required when isPretraining is true"),
        ({"maxTokensPerGpu": 1024}, "spec.training.maxTokensPerGpu", "maxTokensPerGpu must be >= maxSeqLen"),
        ({"modelPath": ""}, "spec.training.modelPath", "at least 1 character"),
        ({"modelPath": "/m/" + "x" * 300}, "spec.training.modelPath", "at most 255 characters"),
        ({"ckptOutputDir": "/c" * 2100}, "spec.training.ckptOutputDir", "at most 4095 characters"),
        ({"learningRate": "1e-5"}, "spec.training.learningRate", "must be a valid number (got '1e-5')"),
        ({"numEpochs": True}, "spec.training.numEpochs", "must be a valid integer (got True)"),
        ({"checkpointAtEpoch": "yes"}, "spec.training.checkpointAtEpoch", "must be a valid boolean (got 'yes')"),
        ({"unknownParam": 1}, "spec.training.unknownParam", "extra inputs"),
    ],
)
def test_bad_training_parameters_are_rejected_with_camel_case_paths(training, path, fragment):
    manifest = job()
    manifest["spec"]["training"].update(training)
    problems = problems_of(manifest)
    assert any(p.startswith(path + ":") and fragment in p for p in problems), problems


def test_missing_training_fields_are_each_reported():
    manifest = job()
    del manifest["spec"]["training"]["modelPath"], manifest["spec"]["training"]["learningRate"]
    problems = problems_of(manifest)
    assert "spec.training.modelPath: required (Path to the model to fine-tune)" in problems
    assert "spec.training.learningRate: required (Learning rate for the optimizer)" in problems


def test_every_problem_is_reported_at_once():
    problems = problems_of(job(nnodes=0, rdzvPort=1, cleanPodPolicy="x"))
    assert {p.split(":")[0] for p in problems} == {"spec.nnodes", "spec.rdzvPort", "spec.cleanPodPolicy"}


def test_preflight_mode_with_its_options_and_their_defaults():
    spec = api.load_spec(job(mode="Preflight", preflight={"sizeMb": 256, "backend": "nccl"}))
    assert spec.mode is api.JobMode.PREFLIGHT
    assert (spec.preflight.size_mb, spec.preflight.iters, spec.preflight.warmup, spec.preflight.backend) == (
        256, 5, 1, "nccl"
    )
    assert api.load_spec(job(mode="Preflight")).preflight is None  # the entrypoint's defaults then


def test_preflight_mode_still_requires_training():
    # One schema for both modes: a training manifest becomes its own preflight by setting mode alone.
    manifest = job(mode="Preflight")
    del manifest["spec"]["training"]
    assert any(p.startswith("spec.training: required") for p in problems_of(manifest))


def test_missing_spec_and_training_are_reported():
    assert any(p.startswith("spec.training: required") for p in problems_of({"metadata": {"name": "x"}}))


@pytest.mark.parametrize("name", ["Demo", "1job", "a" * 64, "my_job", "", None, "job."])
def test_name_must_be_a_dns1035_label(name):
    manifest = job()
    manifest["metadata"]["name"] = name
    problems = problems_of(manifest)
    assert any(p.startswith("metadata.name must be a DNS-1035 label") for p in problems), problems


def test_name_of_63_characters_is_accepted():
    manifest = job()
    manifest["metadata"]["name"] = "a" * 63
    assert api.load_spec(manifest).nnodes == 1


def test_wrong_api_version_and_kind_are_reported():
    manifest = job()
    manifest["apiVersion"], manifest["kind"] = "batch/v1", "Job"
    problems = problems_of(manifest)
    assert any(p.startswith("apiVersion: must be training-hub.io/v1alpha1") for p in problems)
    assert any(p.startswith("kind: must be SFTJob") for p in problems)


def test_status_model_reads_the_contract_fields_in_camel_case():
    status = api.SFTJobStatus.model_validate({
        "phase": "Restarting",
        "conditions": [{"type": "Created", "status": "True", "reason": "Restarting", "message": "m",
                        "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 2}],
        "observedGeneration": 2, "attempt": 1, "restarts": 1, "rdzvId": "abc-1",
        "nodesReady": 3, "nodesTotal": 4, "nodes": "3/4", "gpusPerNode": 8,
        "progress": {"epoch": 1, "step": 40, "loss": 1.23, "samplesSeen": 640, "updatedAt": "2026-01-02T03:04:05Z"},
        "progressText": "epoch 1 step 40 loss 1.23",
        "startTime": "2026-01-02T03:04:05Z", "completionTime": None,
        "summary": {"outcome": "succeeded", "finalCheckpoint": "/ckpt/last", "epoch": 2, "step": 80, "loss": 0.9,
                    "resumedFromEpoch": 1},
        "lastFailure": {"rank": 2, "exitCode": 137, "reason": "OOMKilled", "message": "oom"},
        "someFutureField": 1,  # another operator version's field is ignored, not an error
    })
    assert status.phase is api.Phase.RESTARTING
    assert status.conditions[0].last_transition_time.year == 2026
    assert status.progress.samples_seen == 640
    assert status.summary.resumed_from_epoch == 1
    assert status.last_failure.exit_code == 137
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["rdzvId"] == "abc-1" and dumped["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"


def test_status_rejects_unknown_phase_and_condition_status():
    with pytest.raises(ValidationError):
        api.SFTJobStatus.model_validate({"phase": "Exploding"})
    with pytest.raises(ValidationError):
        api.SFTJobStatus.model_validate({"conditions": [{"type": "Running", "status": "yes"}]})


def test_phase_and_condition_enums_match_the_contract():
    assert [p.value for p in api.Phase] == [
        "Pending", "Preparing", "Running", "Succeeded", "Failed", "Suspended", "Restarting"
    ]
    assert [c.value for c in api.ConditionType] == [
        "Prepared", "Created", "Scheduled", "Running", "Succeeded", "Failed", "Suspended", "Ready", "Reconciling", "Stalled"
    ]


def test_reserved_env_names_are_the_launch_contract_variables():
    assert set(api.RESERVED_ENV_NAMES) == set(launch_env.DISTRIBUTED_VARIABLES) | {
        launch_env.RDZV_TIMEOUT, launch_env.TERMINATION_LOG
    }
