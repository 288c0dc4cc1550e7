"""The generated CRD on the real API server: it is accepted (structural schema, CEL within the cost budget),
valid SFTJobs and the examples are stored with the model's defaults, invalid ones are rejected with messages
naming the field — by the API server and, identically, by the operator's own validation — fields that shape a
running gang cannot change, the printer columns and `kubectl explain` work, and the pods `render` produces pass
the API server's validation and the `restricted` Pod Security admission."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftjob_operator import api, render
from sftjob_operator.config import OperatorConfig
from training_hub.params import SFTParams
from tests.cluster.deploy_helpers import install_crd

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ("sftjob-single-node.yaml", "sftjob-multi-node.yaml")

TRAINING = {
    "modelPath": "/mnt/shared/model",
    "dataPath": "/mnt/shared/data.jsonl",
    "ckptOutputDir": "/mnt/shared/ckpt",
    "numEpochs": 1,
    "effectiveBatchSize": 32,
    "learningRate": 1e-5,
    "maxSeqLen": 1024,
}


@pytest.fixture(scope="module")
def crd_installed(cluster):
    install_crd(cluster)
    return cluster


def sftjob(name: str = "job", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {"training": copy.deepcopy(TRAINING), **spec},
    }


def apply(cluster, namespace: str, manifest: dict[str, Any]):
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)


def get_job(cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", "sftjob", "-n", namespace, name)


def json_documents(text: str) -> list[dict[str, Any]]:
    """kubectl prints one JSON object per created object, back to back."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        document, end = decoder.raw_decode(text, position)
        documents.append(document)
        position = end + (len(text[end:]) - len(text[end:].lstrip()))
    return documents


def patch(cluster, namespace: str, name: str, body: dict[str, Any], *, status: bool = False):
    args = ["patch", "sftjob", name, "-n", namespace, "--type=merge", "-p", json.dumps(body)]
    if status:
        args.append("--subresource=status")
    return cluster.kubectl(*args, check=False)


@pytest.mark.timeout(180)
def test_crd_is_established_with_status_subresource_and_short_name(crd_installed):
    stored = crd_installed.kubectl_json("get", "crd", "sftjobs.training-hub.io")
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert stored["status"]["acceptedNames"]["shortNames"] == ["sft"]
    resources = crd_installed.kubectl("api-resources", "--api-group=training-hub.io", "-o", "wide").stdout
    assert "sftjobs" in resources and "sft" in resources and "SFTJob" in resources


@pytest.mark.timeout(180)
@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_apply_and_are_stored_with_the_model_defaults(crd_installed, namespace, example):
    manifest = yaml.safe_load((REPO / "examples" / example).read_text())
    result = apply(crd_installed, namespace, manifest)
    assert result.returncode == 0, result.stderr
    stored = get_job(crd_installed, namespace, manifest["metadata"]["name"])
    # The API server's defaulting (from the CRD) and the model's defaults agree field for field.
    expected = api.SFTJobSpec.model_validate(manifest["spec"]).model_dump(mode="json", by_alias=True, exclude_none=True)
    if not manifest["spec"]["training"].get("extraArgs"):
        del expected["training"]["extraArgs"]  # a pydantic default_factory, not a CRD default
    assert stored["spec"] == expected


@pytest.mark.timeout(180)
def test_defaults_are_filled_by_the_api_server(crd_installed, namespace):
    assert apply(crd_installed, namespace, sftjob("minimal")).returncode == 0
    spec = get_job(crd_installed, namespace, "minimal")["spec"]
    assert (spec["nnodes"], spec["nprocPerNode"], spec["gpuResourceName"], spec["rdzvPort"]) == (
        1, 1, "nvidia.com/gpu", 29500
    )
    assert (spec["backoffLimit"], spec["suspend"], spec["cleanPodPolicy"]) == (3, False, "Running")
    assert spec["training"]["isPretraining"] is False and spec["training"]["documentColumnName"] == "document"
    assert SFTParams.model_validate(spec["training"]).learning_rate == TRAINING["learningRate"]


def _with(path: str, value: Any) -> dict[str, Any]:
    manifest = sftjob("bad")
    node = manifest
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return manifest


INVALID = [
    # (manifest, field named in the API server's message, words of the message)
    pytest.param(_with("spec.nnodes", "four"), "spec.nnodes", "must be of type integer", id="wrong-type"),
    pytest.param(_with("spec.training.numEpochs", "two"), "spec.training.numEpochs", "must be of type integer",
                 id="wrong-type-training"),
    pytest.param(_with("spec.nnodes", 0), "spec.nnodes", "greater than or equal to 1", id="nnodes-0"),
    pytest.param(_with("spec.nprocPerNode", 65), "spec.nprocPerNode", "less than or equal to 64", id="nproc-65"),
    pytest.param(_with("spec.rdzvPort", 80), "spec.rdzvPort", "greater than or equal to 1024", id="rdzv-port"),
    pytest.param(_with("spec.training.learningRate", 0), "spec.training.learningRate", "greater than 0",
                 id="learning-rate-0"),
    pytest.param(_with("spec.cleanPodPolicy", "Some"), "spec.cleanPodPolicy", "Unsupported value", id="enum"),
    pytest.param(_with("spec.training.isPretraining", True), "spec.training.blockSize",
                 "blockSize is required when isPretraining is true", id="pretraining-without-block-size"),
    pytest.param(_with("spec.training.maxTokensPerGpu", 512), "spec.training.maxTokensPerGpu",
                 "maxTokensPerGpu must be >= maxSeqLen", id="max-tokens-below-seq-len"),
    pytest.param(_with("spec.resources", {"limits": {"nvidia.com/gpu": 8}}), "spec.resources",
                 "GPU limit of each pod is nprocPerNode", id="gpu-in-resources"),
    pytest.param(_with("spec.resources", {"requests": {"memory": "lots"}}), "spec.resources.requests.memory",
                 "should match", id="bad-quantity"),
    pytest.param(_with("spec.env", [{"name": "TRAINING_HUB_RDZV_ENDPOINT", "value": "x:1"}]), "spec.env",
                 "must not set the variables the operator sets", id="reserved-env"),
    pytest.param(_with("spec.volumes", [{"name": "a", "claimName": "c", "mountPath": "/etc/training-hub"}]),
                 "spec.volumes", "reserved for the operator", id="reserved-mount-path"),
    pytest.param(_with("spec.volumes", [{"name": "a", "claimName": "c", "mountPath": "/d"},
                                        {"name": "b", "claimName": "c", "mountPath": "/d"}]),
                 "spec.volumes", "each mountPath must be unique", id="duplicate-mount-path"),
    pytest.param(_with("spec.podLabels", {"training-hub.io/node-rank": "9"}), "spec.podLabels",
                 "must not set keys starting with 'training-hub.io/'", id="reserved-label"),
    pytest.param(_with("spec.volumes", [{"name": "Data", "claimName": "c", "mountPath": "/d"}]),
                 "spec.volumes[0].name", "should match", id="volume-name"),
    pytest.param(_with("spec.mode", "Dryrun"), "spec.mode", "Unsupported value", id="mode"),
    pytest.param(_with("spec.preflight", {"sizeMb": 8}), "spec.preflight",
                 "may only be set when mode is Preflight", id="preflight-options-in-train-mode"),
    # Specs the Pod API refuses (HTTP 422): refused at `kubectl apply` instead of failing a half-created gang.
    pytest.param(_with("spec.env", [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
                 "spec.env[0]", "set value or valueFrom, not both", id="env-value-and-value-from"),
    pytest.param(_with("spec.env", [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"},
                                                                "configMapKeyRef": {"name": "c", "key": "k"}}}]),
                 "spec.env[0].valueFrom", "set exactly one of", id="env-two-sources"),
    pytest.param(_with("spec.env", [{"name": "A", "valueFrom": {}}]), "spec.env[0].valueFrom", "set exactly one of",
                 id="env-empty-value-from"),
    pytest.param(_with("spec.envFrom", [{"prefix": "X_"}]), "spec.envFrom[0]", "set exactly one of", id="env-from-empty"),
    pytest.param(_with("spec.volumes", [{"name": "a", "claimName": "c", "mountPath": "/d", "subPath": "../escape"}]),
                 "spec.volumes[0].subPath", "must not contain a '..' part", id="sub-path-escape"),
    pytest.param(_with("spec.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                                                          {"nodeSelectorTerms": []}}}),
                 "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
                 "should have at least 1 items", id="empty-node-selector-terms"),
    pytest.param(_with("spec.resources", {"requests": {"cpu": "-1"}}), "spec.resources.requests.cpu", "should match",
                 id="negative-cpu"),
    pytest.param(_with("spec.shmSize", "-1"), "spec.shmSize", "should match", id="negative-shm-size"),
    pytest.param(_with("spec.training.modelPath", "/m/" + "x" * 300), "spec.training.modelPath",
                 "at most 255 characters", id="path-part-too-long"),
    pytest.param(_with("spec.training.ckptOutputDir", "/c" * 2100), "spec.training.ckptOutputDir",
                 "may not be more than 4095", id="path-too-long"),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("manifest", "field", "words"), INVALID)
def test_invalid_sftjob_is_rejected_naming_the_field(crd_installed, namespace, manifest, field, words):
    result = apply(crd_installed, namespace, manifest)
    assert result.returncode != 0, f"accepted: {manifest['spec']}"
    messages = [line for line in result.stderr.splitlines() if field + ":" in line or f"{field} " in line]
    assert any(words in line for line in messages), result.stderr
    # The operator's own validation (render, reconcile) rejects the same manifest at the same field.
    with pytest.raises(api.InvalidSFTJob) as caught:
        api.load_spec(manifest)
    assert any(problem.startswith(field) for problem in caught.value.problems), caught.value.problems
    assert crd_installed.kubectl("get", "sftjob", "bad", "-n", namespace, check=False).returncode != 0


@pytest.mark.timeout(180)
def test_missing_training_field_and_unknown_field_are_rejected(crd_installed, namespace):
    manifest = sftjob("bad")
    del manifest["spec"]["training"]["modelPath"]
    result = apply(crd_installed, namespace, manifest)
    assert result.returncode != 0 and "spec.training.modelPath: Required value" in result.stderr
    result = apply(crd_installed, namespace, sftjob("bad", replicas=4))
    assert result.returncode != 0 and 'unknown field "spec.replicas"' in result.stderr


@pytest.mark.timeout(180)
def test_name_must_be_a_dns1035_label(crd_installed, namespace):
    result = apply(crd_installed, namespace, sftjob("7-starts-with-digit"))
    assert result.returncode != 0 and "metadata.name must be a DNS-1035 label" in result.stderr


@pytest.mark.timeout(240)
def test_gang_shape_and_training_are_immutable_once_started(crd_installed, namespace):
    cluster = crd_installed
    assert apply(cluster, namespace, sftjob("pinned", nnodes=4, nprocPerNode=8)).returncode == 0
    # Before the operator has started it, anything may change.
    assert patch(cluster, namespace, "pinned", {"spec": {"training": {"learningRate": 2e-5}}}).returncode == 0

    assert patch(cluster, namespace, "pinned", {"status": {"phase": "Running"}}, status=True).returncode == 0
    for body, field in (
        ({"spec": {"training": {"learningRate": 3e-5}}}, "spec.training"),
        ({"spec": {"nnodes": 2}}, "spec.nnodes"),
        ({"spec": {"nprocPerNode": 4}}, "spec.nprocPerNode"),
        ({"spec": {"gpuResourceName": "amd.com/gpu"}}, "spec.gpuResourceName"),
        ({"spec": {"mode": "Preflight"}}, "spec.mode"),
    ):
        result = patch(cluster, namespace, "pinned", body)
        assert result.returncode != 0, body
        assert f"{field}: Forbidden: {field} may not change once the job has started" in result.stderr
    # Run policy may change while running.
    assert patch(cluster, namespace, "pinned", {"spec": {"backoffLimit": 5, "suspend": True}}).returncode == 0

    # Once suspended, the gang shape and parameters may change (the next gang uses them).
    assert patch(cluster, namespace, "pinned", {"status": {"phase": "Suspended"}}, status=True).returncode == 0
    result = patch(cluster, namespace, "pinned", {"spec": {"nnodes": 2, "training": {"learningRate": 3e-5}}})
    assert result.returncode == 0, result.stderr
    spec = get_job(cluster, namespace, "pinned")["spec"]
    assert (spec["nnodes"], spec["training"]["learningRate"], spec["backoffLimit"]) == (2, 3e-5, 5)


CONTRACT_STATUS = {
    "phase": "Running",
    "conditions": [
        {"type": "Created", "status": "True", "reason": "GangCreated", "message": "gang attempt 1: 4 pod(s)",
         "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 1},
        {"type": "Scheduled", "status": "True", "reason": "AllPodsScheduled", "message": "all 4 pod(s) have a node",
         "lastTransitionTime": "2026-01-02T03:04:35Z", "observedGeneration": 1},
        {"type": "Running", "status": "True", "reason": "AllPodsRunning", "message": "all 4 pod(s) are running",
         "lastTransitionTime": "2026-01-02T03:05:05Z", "observedGeneration": 1},
        {"type": "Ready", "status": "True", "reason": "GangRunning", "message": "all-4-running",
         "lastTransitionTime": "2026-01-02T03:05:05Z", "observedGeneration": 1},
    ],
    "observedGeneration": 1,
    "attempt": 1,
    "restarts": 1,
    "rdzvId": "0123456789abcdef-1",
    "nodesReady": 3,
    "nodesTotal": 4,
    "nodes": "3/4",
    "gpusPerNode": 8,
    "progress": {"epoch": 1, "step": 40, "loss": 1.23, "samplesSeen": 640, "updatedAt": "2026-01-02T03:06:05Z"},
    "progressText": "epoch 1 step 40 loss 1.23",
    "startTime": "2026-01-02T03:04:05Z",
    "summary": {"outcome": "failed", "message": "m", "finalCheckpoint": "/ckpt/epoch-0", "epoch": 0, "step": 20,
                "loss": 1.5, "resumedFromEpoch": 0},
    "lastFailure": {"rank": 2, "exitCode": 137, "reason": "OOMKilled", "message": "container OOMKilled"},
}


@pytest.mark.timeout(180)
def test_contract_status_is_stored_whole_and_shown_in_the_printer_columns(crd_installed, namespace):
    cluster = crd_installed
    assert apply(cluster, namespace, sftjob("shown", nnodes=4, nprocPerNode=8)).returncode == 0
    result = patch(cluster, namespace, "shown", {"status": CONTRACT_STATUS}, status=True)
    assert result.returncode == 0, result.stderr
    # Nothing the contract names is pruned by the schema.
    assert get_job(cluster, namespace, "shown")["status"] == CONTRACT_STATUS
    assert api.SFTJobStatus.model_validate(CONTRACT_STATUS).restarts == 1

    table = cluster.kubectl("get", "sft", "shown", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "REASON", "NODES", "GPUS/NODE", "RESTARTS", "PROGRESS", "AGE"]
    assert table[1].split()[:11] == ["shown", "Running", "GangRunning", "3/4", "8", "1", "epoch", "1", "step", "40", "loss"]
    wide = cluster.kubectl("get", "sft", "shown", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["ATTEMPT", "RDZV-ID", "MESSAGE"]
    assert wide[1].split()[-3:] == ["1", "0123456789abcdef-1", "all-4-running"]

    bad = patch(cluster, namespace, "shown", {"status": {"phase": "Exploding"}}, status=True)
    assert bad.returncode != 0 and "status.phase" in bad.stderr


@pytest.mark.timeout(180)
def test_kubectl_explain_shows_the_model_descriptions(crd_installed):
    out = crd_installed.kubectl("explain", "sftjob.spec.training.learningRate").stdout
    assert SFTParams.model_fields["learning_rate"].description in out
    out = crd_installed.kubectl("explain", "sftjob.spec.nprocPerNode").stdout
    assert api.SFTJobSpec.model_fields["nproc_per_node"].description.split(":")[0] in out
    out = crd_installed.kubectl("explain", "sft.status.progress").stdout
    assert "samplesSeen" in out


@pytest.mark.timeout(240)
def test_largest_allowed_job_fits_the_cel_cost_budget(crd_installed, namespace):
    # Every list and map at its maximum size, with long strings: the CEL rules still evaluate within budget.
    manifest = sftjob(
        "big",
        volumes=[{"name": f"v{i}", "claimName": "c" * 200, "mountPath": f"/mnt/{i}/" + "p" * 900}
                 for i in range(api.MAX_VOLUMES)],
        env=[{"name": f"VAR_{i}_" + "X" * 200, "value": "v" * 1000} for i in range(api.MAX_ENV)],
        podLabels={f"example.com/label-{i}": "v" * 63 for i in range(api.MAX_MAP_ENTRIES)},
        podAnnotations={f"example.com/annotation-{i}": "a" * 2000 for i in range(api.MAX_MAP_ENTRIES)},
        resources={"limits": {f"example.com/r{i}": 1 for i in range(api.MAX_MAP_ENTRIES)}},
    )
    result = crd_installed.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    api.load_spec(manifest)  # and the operator accepts it too


@pytest.mark.timeout(240)
@pytest.mark.parametrize("example", EXAMPLES)
def test_rendered_objects_pass_the_api_server_and_restricted_pod_security(crd_installed, namespace, example):
    cluster = crd_installed
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    manifest = yaml.safe_load((REPO / "examples" / example).read_text())
    assert apply(cluster, namespace, manifest).returncode == 0
    stored = get_job(cluster, namespace, manifest["metadata"]["name"])  # with its uid, as the operator reads it
    gang = render.render_gang(stored, attempt=0, rdzv_id=render.new_rdzv_id(stored["metadata"]["uid"], 0),
                              config=OperatorConfig())
    documents = "\n---\n".join(json.dumps(obj) for obj in gang.objects())
    result = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-", input=documents,
                             check=False)
    assert result.returncode == 0, result.stderr
    assert "violate PodSecurity" not in result.stderr and "Warning" not in result.stderr
    items = json_documents(result.stdout)
    assert [item["kind"] for item in items] == [obj["kind"] for obj in gang.objects()]
    for item in items:
        assert item["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]
