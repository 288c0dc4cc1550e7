"""The images built here (hack/images.sh) run: as pods would run them, read-only and non-root, on the host network.

- the operator image serves /healthz and reconciles an SFTJob on the test cluster (the real API server), given
  only `--kubeconfig` (no $KUBECONFIG: kopf's login must still find the file);
- the trainer image's entrypoint answers, imports its stack, and runs a real preflight (torchrun, 2 ranks, gloo
  all-reduce on CPU) that writes its termination summary.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.cluster.deploy_helpers import free_port, install_crd
from tests.cluster.operator_harness import JOB_LABEL, apply, get_job, job_pods, sftjob, wait_until

pytestmark = [pytest.mark.images]

OPERATOR_UID = 65532
TRAINER_UID = 1000
# What the chart and the operator's pods set: no capabilities, no privilege gain, nothing written to the image.
LOCKED_DOWN = ["--network", "host", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def container_name(kind: str) -> str:
    return f"th-test-{kind}-{secrets.token_hex(4)}"


def process_uid(podman, name: str) -> int:
    pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_operator_image_runs_read_only_non_root_serves_healthz_and_reconciles(
    operator_image, podman, cluster, namespace, tmp_path
):
    install_crd(cluster)
    # Self-contained kubeconfig (certificates inline), readable by the image's non-root user.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubectl("config", "view", "--raw", "--minify", "--flatten").stdout)
    kubeconfig.chmod(0o644)
    port = free_port()
    name = container_name("operator")
    podman(
        "run", "--detach", "--name", name, *LOCKED_DOWN, "--user", f"{OPERATOR_UID}:{OPERATOR_UID}",
        "--volume", f"{kubeconfig}:/etc/training-hub/kubeconfig:ro",
        operator_image, "run", "--kubeconfig", "/etc/training-hub/kubeconfig", "--namespace", namespace,
        "--metrics-port", "0", "--health-port", str(port),
    )
    try:
        def logs() -> str:
            return podman("logs", "--tail", "60", name, check=False).stderr[-6000:]

        inspect = json.loads(podman("inspect", name).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert process_uid(podman, name) == OPERATOR_UID
        wait_until(lambda: healthz(port) == 200, 90, "the operator's /healthz", interval=0.5, describe=logs)

        apply(cluster, sftjob("image-smoke", namespace, nnodes=2, nproc_per_node=1))
        pods = wait_until(lambda: len(job_pods(cluster, namespace, "image-smoke")) == 2 and
                          job_pods(cluster, namespace, "image-smoke"), 90, "the gang's 2 pods", describe=logs)
        assert {pod["metadata"]["labels"][JOB_LABEL] for pod in pods} == {"image-smoke"}
        job = wait_until(lambda: ((get_job(cluster, namespace, "image-smoke") or {}).get("status") or {}).get("phase")
                         and get_job(cluster, namespace, "image-smoke"), 60, "a status phase", describe=logs)
        assert job["status"]["phase"] in ("Pending", "Running", "Starting"), job["status"]
        assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", logs()
    finally:
        podman("rm", "--force", "--time", "5", name, check=False)


@pytest.mark.timeout(120)
def test_trainer_image_entrypoint_answers_and_imports_its_stack(trainer_image, podman):
    common = ["run", "--rm", *LOCKED_DOWN, "--user", f"{TRAINER_UID}:0", "--tmpfs", "/tmp"]
    version = podman(*common, trainer_image, "--version").stdout.strip()
    assert version == "training-hub 0.1.0"
    usage = podman(*common, trainer_image, "--help").stdout
    assert "sft" in usage and "preflight" in usage
    stack = podman(
        *common, "--entrypoint", "python", trainer_image, "-c",
        "import training_hub.launch.cli, instructlab.training, torch, transformers, sys; "
        "print(torch.__version__, torch.cuda.is_available(), sys.argv)",
    ).stdout.split()
    assert stack[1] == "False"  # CPU: the image runs here without a GPU
    # An invalid config is reported with its exit code and the field named, as the operator reads it.
    invalid = podman(*common, trainer_image, "sft", "--num-epochs", "0", "--termination-log", "/tmp/summary", check=False)
    assert invalid.returncode == 78, invalid.stdout + invalid.stderr
    assert "num_epochs: must be greater than or equal to 1 (got 0)" in invalid.stderr, invalid.stderr


@pytest.mark.timeout(240)
def test_trainer_image_runs_a_real_preflight_on_cpu(trainer_image, podman, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by the image's non-root user
    port = free_port()
    result = podman(
        "run", "--rm", *LOCKED_DOWN, "--user", f"{TRAINER_UID}:0", "--tmpfs", "/tmp",
        "--volume", f"{out}:/out", trainer_image,
        "preflight", "--nnodes", "1", "--node-rank", "0", "--nproc-per-node", "2",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "image-test", "--size-mb", "1", "--iters", "2",
        "--termination-log", "/out/summary.json",
        timeout=200, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert "all-reduce sum correct" in summary["message"], summary
    assert "2 ranks (gloo)" in summary["message"], summary


@pytest.mark.timeout(600)
def test_trainer_image_runs_the_prepare_pods_command(trainer_image, podman, tmp_path):
    """The prepare pod's container as the operator renders it (`training-hub prepare --config
    /etc/training-hub/params.json`, non-root, the job's volume mounted): real data processing in the image, then a
    matching manifest reused, and a bad line reported with its file and line (exit 78)."""
    from training_hub.testing import build_tiny_model, write_chat_dataset

    shared = tmp_path / "shared"
    build_tiny_model(shared / "model")
    data = write_chat_dataset(shared / "train.jsonl", n_samples=24, seed=2)
    (shared / "params.json").write_text(json.dumps({
        "modelPath": "/shared/model", "dataPath": "/shared/train.jsonl", "ckptOutputDir": "/shared/ckpt",
        "numEpochs": 1, "effectiveBatchSize": 8, "learningRate": 1e-4, "maxSeqLen": 256,
    }))
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)  # the image's non-root user writes the volume
    run = ["run", "--rm", *LOCKED_DOWN, "--user", f"{TRAINER_UID}:0", "--tmpfs", "/tmp",
           "--volume", f"{shared}:/shared", "--volume", f"{shared / 'params.json'}:/etc/training-hub/params.json:ro",
           trainer_image, "prepare", "--config", "/etc/training-hub/params.json",
           "--termination-log", "/shared/summary.json"]

    first = podman(*run, timeout=400, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    made = json.loads((shared / "summary.json").read_text())
    assert made["outcome"] == "succeeded" and made["reused"] is False and made["samples"] > 0, made
    assert (shared / "ckpt" / "data" / "training-hub-prepared.json").is_file()

    again = podman(*run, timeout=200, check=False)
    assert again.returncode == 0 and json.loads((shared / "summary.json").read_text())["reused"] is True

    data.write_text(data.read_text() + "{not json\n")
    bad = podman(*run, timeout=200, check=False)
    assert bad.returncode == 78, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert "/shared/train.jsonl line 25: not valid JSON" in json.loads((shared / "summary.json").read_text())["message"]
