"""The prepare pod on the real control plane: it comes before the gang and gates it, a data error fails the job with
the file and line, and a gang restart prepares again, reusing the data (or re-preparing when the input changed).

kwok runs no containers, so the test runs the prepare pod's container as the operator rendered it — its command
(`training-hub prepare --config /etc/training-hub/params.json`) and environment, with the mounted params.json taken
from the job's ConfigMap — as a local process: real instructlab data processing on the tiny local model. The pod
then ends as a kubelet would report that process (its exit code and termination summary), and the operator acts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply,
    condition,
    describe_job,
    get_job,
    job_pods,
    sftjob,
    wait_gang_running,
    wait_phase,
    wait_until,
)
from training_hub.testing import build_tiny_model, write_chat_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROLE = "training-hub.io/role"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("prepare-model") / "model")


@pytest.fixture
def operator(operator_pool, cluster, namespace, tmp_path: Path):
    process = OperatorProcess(cluster, [namespace], tmp_path / "operator.log").start()
    yield process
    process.stop()
    print(f"--- operator log ({namespace}) ---\n{process.log_tail(80)}")


def training(model, data: Path, ckpt: Path) -> dict:
    return {"modelPath": str(model), "dataPath": str(data), "ckptOutputDir": str(ckpt), "numEpochs": 1,
            "effectiveBatchSize": 8, "learningRate": 1e-4, "maxSeqLen": 256,
            "extraArgs": {"data_process_num_cpu_procs": 1}}


def prepare_job(name: str, namespace: str, model, data: Path, ckpt: Path) -> dict:
    return sftjob(name, namespace, nnodes=2, training=training(model, data, ckpt),
                  prepare={"enabled": True, "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}})


def wait_prepare_pod_running(cluster, namespace: str, name: str, attempt: int) -> dict:
    return cluster.wait_for_pod(namespace, f"{name}-prepare-{attempt}",
                                lambda p: (p.get("status") or {}).get("phase") == "Running", timeout=60)


def run_prepare_pod(cluster, namespace: str, pod: dict, tmp_path: Path) -> tuple[int, str, str]:
    """The pod's container as rendered, as a local process. Returns (exit code, termination summary, output)."""
    (container,) = pod["spec"]["containers"]
    job = pod["metadata"]["labels"]["training-hub.io/job-name"]
    params = cluster.kubectl_json("get", "configmap", f"{job}-params", "-n", namespace)["data"]["params.json"]
    mounted = tmp_path / f"{pod['metadata']['name']}-params.json"
    mounted.write_text(params)
    command = [mounted.as_posix() if arg == "/etc/training-hub/params.json" else arg for arg in container["command"]]
    summary = tmp_path / f"{pod['metadata']['name']}-termination.json"
    rendered_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRAINING_HUB_")},
        **rendered_env,
        "TRAINING_HUB_TERMINATION_LOG": str(summary),  # the only change: a writable summary path
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's training-hub
    }
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    return process.returncode, summary.read_text(), process.stdout + process.stderr


def events(cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    items = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return [(e["reason"], e.get("message", "")) for e in items["items"]]


@pytest.mark.timeout(900)
def test_prepare_pod_gates_the_gang_and_restarts_reuse_the_data(cluster, namespace, operator, tiny_model, tmp_path):
    data = write_chat_dataset(tmp_path / "train.jsonl", n_samples=40, seed=5)
    ckpt = tmp_path / "ckpt"
    apply(cluster, prepare_job("prep", namespace, tiny_model, data, ckpt))

    pod = wait_prepare_pod_running(cluster, namespace, "prep", 0)
    job = wait_phase(cluster, namespace, "prep", "Preparing")
    assert condition(job, "Prepared")["status"] == "False" and condition(job, "Reconciling")["reason"] == "Preparing"
    assert "Preparing" in cluster.kubectl("get", "sftjob", "prep", "-n", namespace).stdout  # the PHASE column
    assert [p["metadata"]["name"] for p in job_pods(cluster, namespace, "prep")] == ["prep-prepare-0"]  # no gang yet
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["training-hub", "prepare"] and pod["spec"].get("nodeName")
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert not [k for k in pod["metadata"]["labels"] if k.startswith("kueue.x-k8s.io/")]

    code, summary, output = run_prepare_pod(cluster, namespace, pod, tmp_path)
    assert code == 0, output[-3000:]
    assert json.loads(summary)["reused"] is False and json.loads(summary)["samples"] > 0
    cluster.set_pod_terminated(namespace, "prep-prepare-0", code, message=summary)
    wait_gang_running(cluster, namespace, "prep", 2, attempt=0)
    job = get_job(cluster, namespace, "prep")
    prepared = condition(job, "Prepared")
    assert (prepared["status"], prepared["reason"]) == ("True", "DataPrepared")
    assert prepared["message"] == json.loads(summary)["message"]
    assert {"Preparing", "DataPrepared", "GangCreated"} <= {reason for reason, _ in events(cluster, namespace, "prep")}
    data_file = ckpt / "data" / "data.jsonl"
    inode = data_file.stat().st_ino

    # A node fails: the gang restarts, and the new attempt's prepare pod comes first again ...
    cluster.set_pod_terminated(namespace, "prep-node-1", 1, message=json.dumps({"outcome": "failed", "message": "NCCL"}))
    pod = wait_prepare_pod_running(cluster, namespace, "prep", 1)
    wait_until(lambda: not [p for p in job_pods(cluster, namespace, "prep") if ROLE not in p["metadata"]["labels"]],
               60, "the old gang gone", describe=describe_job(cluster, namespace, "prep"))
    assert get_job(cluster, namespace, "prep")["status"]["phase"] == "Preparing"
    # ... and reuses the prepared data: same manifest, same file, seconds instead of a re-tokenization.
    code, summary, output = run_prepare_pod(cluster, namespace, pod, tmp_path)
    assert code == 0 and json.loads(summary)["reused"] is True, output[-3000:]
    assert data_file.stat().st_ino == inode
    cluster.set_pod_terminated(namespace, "prep-prepare-1", code, message=summary)
    wait_gang_running(cluster, namespace, "prep", 2, attempt=1)
    assert condition(get_job(cluster, namespace, "prep"), "Prepared")["reason"] == "DataReused"

    # The data set changed between attempts: the next attempt prepares it again.
    with data.open("a") as handle:
        handle.write(data.read_text().splitlines()[0] + "\n")
    cluster.set_pod_terminated(namespace, "prep-node-0", 1, message=json.dumps({"outcome": "failed", "message": "Xid"}))
    pod = wait_prepare_pod_running(cluster, namespace, "prep", 2)
    code, summary, output = run_prepare_pod(cluster, namespace, pod, tmp_path)
    assert code == 0 and json.loads(summary)["reused"] is False, output[-3000:]
    assert "data file content (sha256)" in json.loads(summary)["message"]
    assert data_file.stat().st_ino != inode
    cluster.set_pod_terminated(namespace, "prep-prepare-2", code, message=summary)
    wait_gang_running(cluster, namespace, "prep", 2, attempt=2)
    assert get_job(cluster, namespace, "prep")["status"]["restarts"] == 2


@pytest.mark.timeout(600)
def test_a_data_error_fails_the_job_at_once_with_file_and_line(cluster, namespace, operator, tiny_model, tmp_path):
    data = write_chat_dataset(tmp_path / "train.jsonl", n_samples=5)
    lines = data.read_text().splitlines()
    lines[3] = '{"messages": [{"role": "user", "content": 42}]}'
    data.write_text("\n".join(lines) + "\n")
    apply(cluster, prepare_job("baddata", namespace, tiny_model, data, tmp_path / "ckpt"))

    pod = wait_prepare_pod_running(cluster, namespace, "baddata", 0)
    code, summary, output = run_prepare_pod(cluster, namespace, pod, tmp_path)
    assert code == 78, output[-3000:]
    cluster.set_pod_terminated(namespace, "baddata-prepare-0", code, message=summary)
    job = wait_phase(cluster, namespace, "baddata", "Failed")

    problem = f"{data} line 4: messages[0].content must be a string (got int)"
    failed = condition(job, "Failed")
    assert failed["reason"] == "InvalidConfig" and problem in failed["message"], failed
    assert problem in condition(job, "Prepared")["message"] and condition(job, "Stalled")["status"] == "True"
    assert job["status"]["lastFailure"]["exitCode"] == 78 and "rank" not in job["status"]["lastFailure"]
    assert job["status"].get("restarts", 0) == 0
    assert [p["metadata"]["name"] for p in job_pods(cluster, namespace, "baddata")] == ["baddata-prepare-0"]  # no gang
    assert any(reason == "InvalidConfig" and problem in message for reason, message in events(cluster, namespace, "baddata"))
    assert not (tmp_path / "ckpt" / "data").exists()
