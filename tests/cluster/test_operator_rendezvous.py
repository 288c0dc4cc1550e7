"""Rendezvous for real: the preflight example's gang, as the operator rendered it, run as local processes.

The operator creates the gang of `examples/sftjob-preflight.yaml` (mode: Preflight) on the real control plane;
the test then runs each pod's container exactly as rendered — its command (`training-hub preflight ...`) and
its environment (node rank, nnodes, nproc per node, the shared rdzv_id, the endpoint) — with the endpoint's
host (the rank-0 Service's DNS name) mapped to 127.0.0.1. All ranks must rendezvous and all-reduce over gloo:
this proves the node_rank / rdzv_id / rdzv_endpoint wiring and the Preflight command end to end. Each pod then
ends (as a kubelet would report it) with its process's real exit code and termination summary, and the
operator must mark the SFTJob Succeeded with rank 0's summary (the world size and bandwidth) in its status.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.operator_harness import (
    POOL,
    POOL_LABEL,
    OperatorProcess,
    apply,
    condition,
    env_of,
    get_job,
    wait_gang_running,
    wait_phase,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PREFLIGHT_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sftjob-preflight.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def preflight_example_for_the_test_pool(namespace: str) -> dict:
    """The example as written, but sized for 2 CPU cores: one process per node and a 1 MiB all-reduce (8 GPUs
    per node would be 32 gloo ranks here), scheduled onto the operator tests' node pool."""
    job = yaml.safe_load(PREFLIGHT_EXAMPLE.read_text())
    job["metadata"]["namespace"] = namespace
    spec = job["spec"]
    assert spec["mode"] == "Preflight"
    spec["nprocPerNode"] = 1
    spec["preflight"].update({"sizeMb": 1, "iters": 2, "warmup": 0})  # backend stays the example's (auto: gloo here)
    spec["nodeSelector"] = {POOL_LABEL: POOL}
    spec["tolerations"] = [{"key": POOL_LABEL, "operator": "Equal", "value": POOL, "effect": "NoSchedule"}]
    return job


def run_pods_locally(pods: list[dict], service_host: str, rdzv_port: int, tmp_path: Path) -> dict[int, tuple[int, str]]:
    """Run each pod's container command with its rendered environment; the Service's name resolves to this
    machine, on a free port. Returns rank -> (exit code, output)."""
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    processes = []
    for pod in pods:
        container = pod["spec"]["containers"][0]
        rendered = env_of(pod)
        host, _, rendered_port = rendered["TRAINING_HUB_RDZV_ENDPOINT"].rpartition(":")
        assert host == service_host and rendered_port == str(rdzv_port)
        rank = int(rendered["TRAINING_HUB_NODE_RANK"])
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TRAINING_HUB_")},
            **rendered,
            # the only changes: the endpoint, a shorter wait, a writable summary path, no GPU
            "TRAINING_HUB_RDZV_ENDPOINT": f"127.0.0.1:{port}",
            "TRAINING_HUB_RDZV_TIMEOUT": "120",
            "TRAINING_HUB_TERMINATION_LOG": str(tmp_path / f"termination-{rank}.json"),
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # `training-hub` of this venv
        }
        processes.append((rank, subprocess.Popen(container["command"], env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True)))
    results = {}
    try:
        for rank, process in processes:
            output = process.communicate(timeout=300)[0]
            results[rank] = (process.returncode, output)
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
    return results


@pytest.mark.timeout(480)
def test_preflight_example_gang_rendezvouses_all_reduces_and_the_job_succeeds(
    operator_pool, cluster, namespace, tmp_path: Path
):
    job = preflight_example_for_the_test_pool(namespace)
    name, nnodes = job["metadata"]["name"], job["spec"]["nnodes"]
    operator = OperatorProcess(cluster, [namespace], tmp_path / "operator.log").start()
    try:
        apply(cluster, job)
        pods = wait_gang_running(cluster, namespace, name, nnodes)
        assert {tuple(p["spec"]["containers"][0]["command"][:2]) for p in pods} == {("training-hub", "preflight")}

        results = run_pods_locally(pods, f"{name}.{namespace}.svc", job["spec"]["rdzvPort"], tmp_path)
        for rank, (code, output) in results.items():
            assert code == 0, f"rank {rank} exited {code}:\n{output[-3000:]}"
        summaries = {rank: (tmp_path / f"termination-{rank}.json").read_text() for rank in results}
        assert sorted(summaries) == list(range(nnodes))
        assert all(json.loads(s)["outcome"] == "succeeded" for s in summaries.values()), summaries
        # rank 0 reports the world it all-reduced with: every rank of every node, over gloo
        assert f"{nnodes} ranks (gloo)" in json.loads(summaries[0])["message"], summaries[0]
        report = next(json.loads(line) for line in results[0][1].splitlines()
                      if line.startswith("{") and '"preflight"' in line)
        assert report["ok"] is True and report["world_size"] == nnodes

        # The pods end as the kubelet would report these processes: the operator reads rank 0's summary.
        for pod in pods:
            rank = int(env_of(pod)["TRAINING_HUB_NODE_RANK"])
            cluster.set_pod_terminated(namespace, pod["metadata"]["name"], results[rank][0], message=summaries[rank])
        wait_phase(cluster, namespace, name, "Succeeded", timeout=60)
        status = get_job(cluster, namespace, name)["status"]
    finally:
        operator.stop()
    assert condition({"status": status}, "Succeeded")["status"] == "True"
    assert status["summary"]["outcome"] == "succeeded"
    assert f"{nnodes} ranks (gloo)" in status["summary"]["message"] and "busbw" in status["summary"]["message"]
    assert status.get("restarts", 0) == 0
