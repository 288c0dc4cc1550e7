"""SFTJob gangs in real containers on real kubelet nodes: the trainer image (hack/images.sh) runs
`training-hub preflight` in each pod; the pods find rank 0 through the headless Service's DNS name, rendezvous,
and all-reduce over gloo; what the operator reports comes from the kubelet (exit codes, termination messages,
container logs), not from a test. The pods use the product's `spec.hostNetwork` (real nodes here have no pod
network)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest

from tests.cluster.deploy_helpers import install_crd
from tests.cluster.operator_harness import (
    OperatorProcess,
    apply,
    describe_job,
    get_job,
    job_pods,
    sftjob,
    wait_gang_running,
    wait_phase,
    wait_until,
)
from tests.support import real_nodes

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def gang_namespace(real_cluster, real_images, tmp_path_factory):
    """The CRD, a namespace, and the operator (a local process) watching it with the trainer image as default."""
    install_crd(real_cluster)
    namespace = real_cluster.create_namespace(f"real-gangs-{os.getpid()}")
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    operator = OperatorProcess(
        real_cluster, [namespace], log,
        env={"SFTJOB_OPERATOR_TRAINER_IMAGE": real_images["trainer"], "SFTJOB_OPERATOR_IMAGE_PULL_POLICY": "Never"},
    ).start()
    yield namespace
    operator.stop()
    if os.environ.get("TRAINING_HUB_KEEP_OPERATOR_LOG"):
        print(operator.log_tail(200))
    real_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _port() -> int:
    """Real nodes share the host's network: each job its own rendezvous port, free now, and below the ephemeral
    range (32768-60999 by default: a port there can be any connection's local port at any time, and torchrun's
    store on rank 0 then fails to bind it in every attempt; CI saw it: "torchrun exited with code 1" three times)."""
    start = getattr(_port, "next", 20000 + (os.getpid() % 500) * 20)  # below test_real_train's 31000-31998
    for port in range(start + 1, start + 200):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _port.next = port
        return port
    raise RuntimeError(f"no free port in {start + 1}-{start + 199}")


def preflight_job(name: str, namespace: str, *, iters: int = 5, size_mb: int = 16, **spec) -> dict:
    settings = {
        "mode": "Preflight",
        "preflight": {"sizeMb": size_mb, "iters": iters, "warmup": 1, "backend": "gloo"},
        "hostNetwork": True,
        "rdzvPort": _port(),
        "nodeSelector": {real_nodes.REAL_NODE_LABEL: "real"},
        "tolerations": [],
        "backoffLimit": 0,
    }
    return sftjob(name, namespace, nnodes=2, nproc_per_node=1, **{**settings, **spec})


def _logs(cluster, namespace: str, pod: str) -> str:
    return cluster.kubectl("logs", "-n", namespace, pod, check=False).stdout


def test_preflight_gang_rendezvouses_through_dns_and_succeeds_with_the_bandwidth(real_cluster, gang_namespace):
    ns = gang_namespace
    started = time.monotonic()
    apply(real_cluster, preflight_job("preflight", ns))
    job = wait_phase(real_cluster, ns, "preflight", "Succeeded", timeout=600)
    wall = time.monotonic() - started

    pods = job_pods(real_cluster, ns, "preflight")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(real_cluster.real_nodes.names())  # one per real node
    for pod in pods:
        assert pod["spec"]["hostNetwork"] and pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 0 and terminated["containerID"].startswith("containerd://")
        summary = json.loads(terminated["message"])  # the entrypoint's own file, read back by the kubelet
        assert summary["outcome"] == "succeeded"
    rank0 = _logs(real_cluster, ns, "preflight-node-0")
    report = json.loads(next(line for line in rank0.splitlines() if line.startswith('{"event": "preflight"')))
    assert report["ok"] and report["backend"] == "gloo" and report["world_size"] == 2
    rank1 = _logs(real_cluster, ns, "preflight-node-1")
    # Rank 1 found rank 0 by the Service's DNS name (cluster DNS) before torchrun started.
    assert f"preflight.{ns}.svc" in rank1
    summary = job["status"]["summary"]
    assert summary["outcome"] == "succeeded"
    succeeded = next(c for c in job["status"]["conditions"] if c["type"] == "Succeeded")
    assert re.search(r"GB/s", succeeded["message"]), succeeded
    print(f"\npreflight 2x1 gloo on real nodes: {wall:.1f} s from apply to Succeeded; "
          f"algbw {report['algbw_gbps']:.3f} GB/s, busbw {report['busbw_gbps']:.3f} GB/s "
          f"({report['size_bytes'] >> 20} MiB x {report['iters']}); status: {succeeded['message']}")


def _worker_pid(cluster, node_name: str) -> int | None:
    """The preflight worker (torchrun's child) running in a pod on `node_name`, by the node's cgroups."""
    node = next(n for n in cluster.real_nodes.nodes if n.name == node_name)
    for pid in real_nodes._cgroup_pids(real_nodes.node_cgroups(node.cgroup_name)):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"training_hub.launch.preflight" in cmdline and b"torch.distributed.run" not in cmdline:
            return pid
    return None


def test_killing_one_ranks_process_recreates_the_gang_which_rendezvouses_again_then_delete_stops_it(
    real_cluster, gang_namespace
):
    ns = gang_namespace
    timeline: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - t0, what))

    # Long enough to be killed mid-way (1000 all-reduces of 64 MiB: minutes); rank 0 reports progress in its log.
    apply(real_cluster, preflight_job("restart", ns, iters=1000, size_mb=64, backoffLimit=2))
    pods = wait_gang_running(real_cluster, ns, "restart", 2, attempt=0, timeout=300)
    first_rdzv = get_job(real_cluster, ns, "restart")["status"]["rdzvId"]
    mark("gang attempt 0 running")
    # e. progress read by the operator from rank 0's container log
    job = wait_until(
        lambda: (j := get_job(real_cluster, ns, "restart")) and (j["status"].get("progress") or {}).get("step") and j,
        180, "progress from rank 0's log", describe=describe_job(real_cluster, ns, "restart"),
    )
    mark(f"status.progressText {job['status']['progressText']!r}")

    rank1_node = next(p["spec"]["nodeName"] for p in pods if p["metadata"]["name"] == "restart-node-1")
    victim = wait_until(lambda: _worker_pid(real_cluster, rank1_node), 60, "rank 1's worker process")
    os.kill(victim, signal.SIGKILL)
    mark(f"kill -9 of rank 1's worker (pid {victim})")

    job = wait_until(
        lambda: (j := get_job(real_cluster, ns, "restart")) and j["status"].get("attempt") == 1 and j,
        180, "the gang restarted", describe=describe_job(real_cluster, ns, "restart"),
    )
    mark(f"attempt 1, lastFailure {job['status']['lastFailure']}")
    assert job["status"]["restarts"] == 1 and job["status"]["rdzvId"] != first_rdzv
    # Rank 0 failed in the same second (it lost rank 1): the operator blames the rank that was killed.
    assert job["status"]["lastFailure"]["rank"] == 1 and job["status"]["lastFailure"]["exitCode"] == 137
    assert "worker rank 1 (local rank 0) was killed by SIGKILL" in job["status"]["lastFailure"]["message"]
    new_pods = wait_gang_running(real_cluster, ns, "restart", 2, attempt=1, timeout=300)
    mark("gang attempt 1 running")
    assert {p["metadata"]["labels"]["training-hub.io/rdzv-id"] for p in new_pods} == {job["status"]["rdzvId"]}
    # The new attempt rendezvoused again: its rank 0 reports progress in its (kubelet-served) log.
    wait_until(lambda: '"progress"' in _logs(real_cluster, ns, "restart-node-0"), 180, "attempt 1 all-reducing")
    mark("attempt 1 all-reducing (progress in rank 0's log)")

    # f. delete: containers stopped, pods gone
    containers_before = {n.name: _running_task_count(n) for n in real_cluster.real_nodes.nodes}
    assert sum(containers_before.values()) >= 4  # 2 pods x (sandbox + trainer)
    real_cluster.kubectl("delete", "sftjob", "restart", "-n", ns, "--wait=true", "--timeout=120s")
    wait_until(lambda: not job_pods(real_cluster, ns, "restart"), 120, "pods gone")
    mark("SFTJob deleted, pods gone")
    wait_until(lambda: all(_running_task_count(n) == 0 for n in real_cluster.real_nodes.nodes), 120,
               "containers stopped on the nodes")
    mark("no container left running on either node")
    print("\nrestart timeline:\n" + "\n".join(f"  {t:6.1f} s  {what}" for t, what in timeline))


def _running_task_count(node: real_nodes.RealNode) -> int:
    """Containers (pause sandboxes included) that containerd runs on `node`."""
    out = node.ctr("tasks", "ls").stdout.splitlines()[1:]
    return sum(1 for line in out if "RUNNING" in line)
