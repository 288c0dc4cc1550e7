"""API requests per gang start, counted by the operator itself (`sftjob_api_requests_total{verb,resource}`, where every
call passes: kube.Kube.request) on the real control plane with fake GPU nodes: a gang of 4 costs its 6 creates
(Service, ConfigMap, 4 pods), its status write(s) and one event; no LIST, no read-back of what it created, no log
read before training can have printed progress (docs/operator.md, "API requests per job start")."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply,
    free_port,
    get_job,
    sftjob,
    wait_gang_running,
    wait_until,
)

pytestmark = [pytest.mark.cluster]

# Production timings (fast=False), with the steady-state looks (progress, resync) pushed out of the window: they
# are not part of a start.
QUIET = {"SFTJOB_OPERATOR_PROGRESS_INTERVAL_SECONDS": "600", "SFTJOB_OPERATOR_RESYNC_SECONDS": "600"}
BUDGET = 9  # 6 creates + status + event, and one spare status write (docs/operator.md)


def api_requests(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for labels, value in re.findall(r'^sftjob_api_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counts[pairs["verb"], pairs["resource"]] = float(value)
    return counts


def settled(port: int, quiet_for: float = 1.5, timeout: float = 30) -> dict[tuple[str, str], float]:
    """The counters once they have not moved for `quiet_for` seconds (the last status write is done)."""
    deadline = time.monotonic() + timeout
    last = api_requests(port)
    while time.monotonic() < deadline:
        time.sleep(quiet_for)
        now = api_requests(port)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the operator kept making requests for {timeout}s: {last}")


def delta(after: dict, before: dict) -> dict[tuple[str, str], float]:
    """What was spent in between; without the watchdog's look at API discovery every 5 s (watch_health.watchdog),
    which is no job's."""
    return {key: after[key] - before.get(key, 0) for key in after
            if after[key] - before.get(key, 0) and key != ("get", "discovery")}


@pytest.fixture
def quiet_operator(operator_pool, cluster, namespace, tmp_path: Path):
    """The operator with its watches established and a first gang started (its first requests are the start-up's)."""
    port, health_port = free_port(), free_port()
    process = OperatorProcess(cluster, [namespace], tmp_path / "operator.log", env=QUIET, metrics_port=port,
                              fast=False, health_port=health_port).start()
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{health_port}/healthz"), 60, "the operator's watches established")
        apply(cluster, sftjob("warm-up", namespace, nnodes=1, nproc_per_node=1))
        wait_gang_running(cluster, namespace, "warm-up", 1)
        yield port
    finally:
        process.stop()
        print(f"--- operator log ({namespace}) ---\n{process.log_tail(80)}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_gang_start_costs_its_creates_one_status_write_and_one_event(cluster, namespace, quiet_operator):
    port = quiet_operator
    settled(port)
    for run in range(3):
        name = f"start-{run}"
        before = settled(port, quiet_for=0.5)
        apply(cluster, sftjob(name, namespace, nnodes=4, nproc_per_node=1))
        wait_gang_running(cluster, namespace, name, 4)
        wait_until(lambda: (get_job(cluster, namespace, name) or {}).get("status", {}).get("phase") == "Running", 30,
                   f"{name} Running")
        spent = delta(settled(port), before)
        print(f"{name}: {sum(spent.values()):.0f} requests: {spent}")
        creates = {resource: spent.pop(("create", resource), 0) for resource in ("pods", "services", "configmaps", "events")}
        assert creates == {"pods": 4, "services": 1, "configmaps": 1, "events": 1}, creates
        status_writes = spent.pop(("patch", "sftjobs/status"), 0)
        assert 1 <= status_writes <= 2, status_writes
        # No LIST (the pod watch feeds a cache), no read-back of the Service/ConfigMap, no log read, nothing else.
        assert spent == {}, spent
        assert 6 + 1 + status_writes <= BUDGET
        cluster.kubectl("delete", "sftjob", name, "-n", namespace, "--wait=false")


def test_a_burst_of_gang_starts_stays_within_the_budget_per_job(cluster, namespace, quiet_operator):
    port = quiet_operator
    before = settled(port)
    names = [f"burst-{i}" for i in range(8)]
    apply(cluster, *(sftjob(name, namespace, nnodes=2, nproc_per_node=1) for name in names))

    def all_running() -> bool:
        items = cluster.kubectl_json("get", "sftjobs", "-n", namespace)["items"]
        return sum(1 for job in items if (job.get("status") or {}).get("phase") == "Running") == len(names)

    wait_until(all_running, 120, "every gang of the burst Running")
    spent = delta(settled(port), before)
    per_job = sum(spent.values()) / len(names)
    print(f"burst of {len(names)}: {per_job:.2f} requests per job start: {spent}")
    assert spent.get(("create", "pods"), 0) == 2 * len(names)  # no duplicate: exactly one create per pod
    assert ("list", "pods") not in spent and ("get", "pods/log") not in spent
    assert per_job <= 2 + 2 + 1 + 2, spent  # 2 pods + Service + ConfigMap, one event, at most two status writes
