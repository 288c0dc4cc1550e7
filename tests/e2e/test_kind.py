"""End to end on kind with the real images: build both, load them into a kind cluster, install the chart,
and run an SFTJob whose pod really executes the trainer image's entrypoint.

Needs a Docker engine and the `kind` binary (`go install sigs.k8s.io/kind@v0.33.0`); skipped otherwise,
with the reason. Run it with:

    bash hack/test.sh tests/e2e -m e2e -v

Kind nodes have no GPUs: the test gives the node a fake extended resource and the SFTJob asks for it via
`gpuResourceName`. The job points at a data file that does not exist, so `training-hub sft` in the trainer
image exits 78 (invalid config) and the operator must fail the job at once with that message — proof that
the image's entrypoint, its termination summary and the operator's reading of it work under a real kubelet.
Set TRAINING_HUB_E2E_TRAINER_IMAGE / TRAINING_HUB_E2E_OPERATOR_IMAGE to use prebuilt images (the trainer
image is a CUDA PyTorch image of many GB).

The cluster has four worker nodes so that `examples/sftjob-preflight.yaml` (mode: Preflight, 4 nodes, one pod
per node) runs for real: each worker is labelled and given capacity as a GPU node (`nvidia.com/gpu.present`,
`nvidia.com/gpu`), the example is applied with one process per node and a small all-reduce (kind nodes share
one machine's CPUs), its resources come from the chart's `trainer.resources`, and the job must reach condition
Succeeded: the trainer image's `training-hub preflight` rendezvoused across four pods through the rank-0 Service
and all-reduced over gloo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "training-hub-operator"
PREFLIGHT_EXAMPLE = REPO / "examples" / "sftjob-preflight.yaml"
FAKE_GPU = "training-hub.io/fake-gpu"
WORKERS = 4
KIND_CONFIG = {
    "kind": "Cluster",
    "apiVersion": "kind.x-k8s.io/v1alpha4",
    "nodes": [{"role": "control-plane"}] + [{"role": "worker"}] * WORKERS,
}
# Given to every training pod by the chart (trainer.resources): the preflight example sets no resources.
TRAINER_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}}
NAMESPACE = "training-jobs"


def _docker_engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return "no Docker engine reachable (docker info: " + (info.stderr.strip().splitlines() or ["failed"])[-1] + ")"
    return None


def _kind_problem() -> str | None:
    return None if shutil.which("kind") else "kind is not installed (go install sigs.k8s.io/kind@v0.33.0)"


SKIP_REASON = _docker_engine_problem() or _kind_problem()
if SKIP_REASON:
    pytestmark.append(pytest.mark.skip(reason=f"kind e2e needs Docker and kind: {SKIP_REASON}"))


def run(*cmd: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory):
    name = f"th-e2e-{os.getpid()}"
    directory = tmp_path_factory.mktemp("kind")
    kubeconfig = directory / "kubeconfig"
    config = directory / "kind.yaml"
    config.write_text(yaml.safe_dump(KIND_CONFIG))
    run("kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--config", str(config),
        "--wait", "300s", timeout=900)
    try:
        yield name, kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def images(kind_cluster):
    name, _ = kind_cluster
    operator = os.environ.get("TRAINING_HUB_E2E_OPERATOR_IMAGE")
    trainer = os.environ.get("TRAINING_HUB_E2E_TRAINER_IMAGE")
    if not operator:
        operator = "training-hub-operator:e2e"
        run("docker", "build", "-f", "images/operator/Dockerfile", "-t", operator, ".", cwd=REPO, timeout=1800)
    if not trainer:
        trainer = "training-hub-trainer:e2e"
        run("docker", "build", "-f", "images/trainer/Dockerfile", "-t", trainer, ".", cwd=REPO, timeout=7200)
    for image in (operator, trainer):
        run("kind", "load", "docker-image", image, "--name", name, timeout=1800)
    return operator, trainer


def kubectl(kubeconfig: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return run("kubectl", "--kubeconfig", str(kubeconfig), *args, **kwargs)


@pytest.fixture(scope="module")
def operator_installed(kind_cluster, images):
    """The chart installed with the e2e images; every worker looks like a GPU node (labels and capacity)."""
    name, kubeconfig = kind_cluster
    operator_image, trainer_image = images
    repository, _, tag = operator_image.rpartition(":")
    kubectl(kubeconfig, "create", "namespace", NAMESPACE)
    kubectl(kubeconfig, "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    resources = [f"--set=trainer.resources.{part}.{key}={value}"
                 for part, values in TRAINER_RESOURCES.items() for key, value in values.items()]
    run("helm", "install", "training-hub-operator", str(CHART), "--kubeconfig", str(kubeconfig),
        "--namespace", "training-hub-system", "--create-namespace", "--wait", "--timeout", "300s",
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
        "--set", f"trainer.image={trainer_image}", "--set", "trainer.imagePullPolicy=Never", *resources, timeout=600)

    workers = kubectl(kubeconfig, "get", "nodes", "-l", "!node-role.kubernetes.io/control-plane", "-o",
                      "jsonpath={.items[*].metadata.name}").stdout.split()
    assert len(workers) == WORKERS, workers
    for node in workers:
        kubectl(kubeconfig, "label", "node", node, "nvidia.com/gpu.present=true", "--overwrite")
        patch = [{"op": "add", "path": "/status/capacity/" + resource.replace("/", "~1"), "value": "8"}
                 for resource in (FAKE_GPU, "nvidia.com/gpu")]
        kubectl(kubeconfig, "patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(patch))
    return kubeconfig


@pytest.mark.timeout(10800)
def test_chart_and_images_run_an_sftjob_under_a_real_kubelet(operator_installed):
    kubeconfig, namespace = operator_installed, NAMESPACE
    job = {
        "apiVersion": "training-hub.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "e2e-invalid-data", "namespace": namespace},
        "spec": {
            "training": {
                "modelPath": "/tmp/no-model", "dataPath": "/tmp/no-such-data.jsonl", "ckptOutputDir": "/tmp/ckpt",
                "numEpochs": 1, "effectiveBatchSize": 1, "learningRate": 1e-5, "maxSeqLen": 128,
            },
            "nnodes": 1, "nprocPerNode": 1, "gpuResourceName": FAKE_GPU,
            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
        },
    }
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(job))
    deadline = time.monotonic() + 900  # pulling nothing (loaded images), but the trainer imports are slow
    status: dict = {}
    while time.monotonic() < deadline:
        status = json.loads(kubectl(kubeconfig, "get", "sftjob", "-n", namespace, "e2e-invalid-data", "-o", "json")
                            .stdout).get("status") or {}
        if status.get("phase") == "Failed":
            break
        time.sleep(5)
    assert status.get("phase") == "Failed", status
    assert status["lastFailure"]["exitCode"] == 78
    assert "data" in (status["lastFailure"].get("message") or "").lower()
    assert status.get("restarts", 0) == 0  # a permanent error is never retried


@pytest.mark.timeout(10800)  # includes building the images when this test runs alone
def test_preflight_example_gang_succeeds_under_real_kubelets(operator_installed):
    kubeconfig = operator_installed
    job = yaml.safe_load(PREFLIGHT_EXAMPLE.read_text())
    name, nnodes = job["metadata"]["name"], job["spec"]["nnodes"]
    assert job["spec"]["mode"] == "Preflight" and nnodes == WORKERS
    # Kind nodes share one machine's CPUs: one gloo process per node and a small all-reduce; the rest as written.
    job["spec"]["nprocPerNode"] = 1
    job["spec"]["preflight"].update({"sizeMb": 4, "iters": 3})
    kubectl(kubeconfig, "apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(job))

    waited = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "wait", "-n", NAMESPACE, "--for=condition=Succeeded",
         f"sftjob/{name}", "--timeout=1200s"], capture_output=True, text=True, timeout=1300,
    )
    status = json.loads(kubectl(kubeconfig, "get", "sftjob", "-n", NAMESPACE, name, "-o", "json").stdout).get("status") or {}
    if waited.returncode != 0:
        pods = kubectl(kubeconfig, "get", "pods", "-n", NAMESPACE, "-o", "wide").stdout
        raise AssertionError(f"{name} did not succeed: {waited.stderr}\nstatus: {status}\n{pods}")
    assert status["phase"] == "Succeeded" and status.get("restarts", 0) == 0
    # rank 0's summary: every node's rank took part in the all-reduce, over gloo (no GPUs in kind)
    assert f"{nnodes} ranks (gloo)" in status["summary"]["message"], status["summary"]
    pod = json.loads(kubectl(kubeconfig, "get", "pod", "-n", NAMESPACE, f"{name}-node-0", "-o", "json").stdout)
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["training-hub", "preflight"]
    # The example sets no resources: the chart's trainer.resources reached the pod through the operator.
    assert container["resources"]["requests"] == TRAINER_RESOURCES["requests"]
    assert container["resources"]["limits"]["memory"] == TRAINER_RESOURCES["limits"]["memory"]
