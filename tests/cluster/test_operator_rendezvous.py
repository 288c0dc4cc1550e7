"""Rendezvous for real: the pods the operator rendered, run as local processes with the library's preflight.

The operator creates the gang on the real control plane; the test then takes each pod's environment exactly as
rendered (node rank, nnodes, nproc per node, the shared rdzv_id, the endpoint) and runs `training-hub preflight`
with it, the endpoint's host (the rank-0 Service's DNS name) mapped to 127.0.0.1. All ranks must rendezvous and
all-reduce over gloo: this proves the node_rank / rdzv_id / rdzv_endpoint wiring end to end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply,
    create_pool,
    env_of,
    install_crd,
    sftjob,
    wait_gang_running,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NNODES = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(420)
def test_rendered_gang_rendezvouses_and_all_reduces_over_gloo(cluster, namespace, tmp_path: Path):
    install_crd(cluster)
    create_pool(cluster)
    operator = OperatorProcess(cluster, [namespace], tmp_path / "operator.log").start()
    try:
        apply(cluster, sftjob("rdzv", namespace, nnodes=NNODES, nproc_per_node=1))
        pods = wait_gang_running(cluster, namespace, "rdzv", NNODES)
    finally:
        operator.stop()

    service_host = f"rdzv.{namespace}.svc"
    port = _free_port()
    training_hub = str(Path(sys.executable).parent / "training-hub")
    processes = []
    for pod in pods:
        rendered = env_of(pod)
        host, _, rendered_port = rendered["TRAINING_HUB_RDZV_ENDPOINT"].rpartition(":")
        assert host == service_host and rendered_port == "29500"
        rank = int(rendered["TRAINING_HUB_NODE_RANK"])
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TRAINING_HUB_")},
            **rendered,
            # the only change: the Service's name resolves to this machine, on a free port
            "TRAINING_HUB_RDZV_ENDPOINT": f"127.0.0.1:{port}",
            "TRAINING_HUB_RDZV_TIMEOUT": "120",
            "TRAINING_HUB_TERMINATION_LOG": str(tmp_path / f"termination-{rank}.json"),
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
        }
        command = [training_hub, "preflight", "--size-mb", "1", "--iters", "2", "--warmup", "0", "--backend", "gloo"]
        assert pod["spec"]["containers"][0]["command"][0] == "training-hub"
        processes.append((rank, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))

    outputs = {}
    try:
        for rank, process in processes:
            outputs[rank] = process.communicate(timeout=300)[0]
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
    for rank, process in processes:
        assert process.returncode == 0, f"rank {rank} exited {process.returncode}:\n{outputs[rank][-3000:]}"

    summaries = {rank: json.loads((tmp_path / f"termination-{rank}.json").read_text()) for rank, _ in processes}
    assert all(s["outcome"] == "succeeded" for s in summaries.values()), summaries
    assert sorted(summaries) == list(range(NNODES))
    # rank 0 reports the world it all-reduced with: every rank of every node, over gloo
    assert f"{NNODES} ranks (gloo)" in summaries[0]["message"], summaries[0]
    report = next(json.loads(line) for line in outputs[0].splitlines() if line.startswith("{") and '"preflight"' in line)
    assert report["ok"] is True and report["world_size"] == NNODES
