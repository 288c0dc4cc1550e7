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
    """What was spent in between; without the background looks that are no job's: the watchdog's at API discovery
    (every 5 s, watch_health.watchdog) and the orphan sweep's LIST of the SFTJobs (orphans.py: every 2 s for a
    minute after start-up, then every resync; its pods come from the pod cache)."""
    background = {("get", "discovery"), ("list", "sftjobs")}
    return {key: after[key] - before.get(key, 0) for key in after
            if after[key] - before.get(key, 0) and key not in background}


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
        running = {job["metadata"]["name"] for job in items if (job.get("status") or {}).get("phase") == "Running"}
        return set(names) <= running

    try:
        wait_until(all_running, 120, "every gang of the burst Running")
    except AssertionError:
        print(cluster.kubectl("get", "sftjobs,pods", "-n", namespace, "-o", "wide", check=False).stdout)
        raise
    spent = delta(settled(port), before)
    per_job = sum(spent.values()) / len(names)
    print(f"burst of {len(names)}: {per_job:.2f} requests per job start: {spent}")
    creates = {resource: spent.pop(("create", resource), 0) for resource in ("pods", "services", "configmaps", "events")}
    # No duplicate: exactly one create per object; one event per start.
    assert creates == {"pods": 2 * len(names), "services": len(names), "configmaps": len(names), "events": len(names)}
    status_writes = spent.pop(("patch", "sftjobs/status"), 0)
    # One per start when its pods run by the look after the creates; a busy machine (2 shared cores) can show a
    # gang "scheduled" or "1/2 ready" in between: at most 3 on average here.
    assert status_writes <= 3 * len(names), status_writes
    assert spent == {}, spent  # no LIST, no read-back, no log read
    assert per_job <= BUDGET


def test_the_api_servers_audit_log_counts_the_same_requests(audited_cluster, tmp_path: Path):
    """The operator's own counter against the API server's audit log (tests/support/audit_log.py): the same
    requests, verb by verb and resource by resource, for a gang start."""
    from tests.cluster.deploy_helpers import install_crd
    from tests.cluster.operator_harness import create_pool
    from tests.support import audit_log

    cluster = audited_cluster
    install_crd(cluster)
    if not cluster.kubectl("get", "nodes", "-l", "training-hub.io/test-pool", "-o", "name").stdout.strip():
        create_pool(cluster)
    namespace = cluster.create_namespace(f"audit-ops-{int(time.time())}")
    port, health_port = free_port(), free_port()
    process = OperatorProcess(cluster, [namespace], tmp_path / "operator.log", env=QUIET, metrics_port=port,
                              fast=False, health_port=health_port).start()
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{health_port}/healthz"), 60, "the operator's watches established")
        before = settled(port)
        time.sleep(1.1)  # a clear gap: nothing before `since` is in the window
        since = time.time()
        apply(cluster, sftjob("audited", namespace, nnodes=4, nproc_per_node=1))
        wait_gang_running(cluster, namespace, "audited", 4)
        wait_until(lambda: (get_job(cluster, namespace, "audited") or {}).get("status", {}).get("phase") == "Running",
                   30, "audited Running")
        counted = delta(settled(port), before)
        until = time.time()
        time.sleep(1)  # the last lines reach the log

        def operators(request: audit_log.Request) -> bool:
            # The operator's own calls (kube.USER_AGENT), not kopf's watches (user agent kopf/...), nor the
            # orphan sweep's LIST of the SFTJobs (left out of `counted` too).
            return (request.namespace == namespace and request.user_agent.startswith("sftjob-operator")
                    and request.kind != "list sftjobs")

        logged = audit_log.count(audit_log.requests(cluster.audit_log, since=since, until=until, where=operators))
        print(f"operator counter: {counted}\naudit log: {dict(logged)}")
        assert {f"{verb} {resource}": count for (verb, resource), count in counted.items()} == dict(logged)
        assert sum(logged.values()) <= BUDGET
    finally:
        process.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_sweeps_list_of_sftjobs_comes_in_pages_and_misses_none(operator_pool, cluster, namespace, monkeypatch):
    """The orphan sweep's LIST of the SFTJobs (kube.Kube.list_job_uids) is paged: at 1,000 jobs one answer was the
    operator's memory peak. Paged, it still finds every job, once."""
    from sftjob_operator import kube as kube_module
    from sftjob_operator.kube import Kube, load_api_client

    apply(cluster, *(sftjob(f"paged-{i}", namespace, nnodes=1, suspend=True) for i in range(5)))
    created = {item["metadata"]["uid"] for item in cluster.kubectl_json("get", "sftjobs", "-n", namespace)["items"]}
    monkeypatch.setattr(kube_module, "LIST_PAGE_SIZE", 2)
    kube = Kube(load_api_client(cluster.kubeconfig))
    assert len(created) == 5 and kube.list_job_uids(namespace) == created
    assert kube.counter.by_verb_resource[("list", "sftjobs")] == 3  # 2 + 2 + 1
