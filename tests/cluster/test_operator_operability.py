"""Operability on the real control plane: /metrics, the liveness probe, and disruptions that must not count."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply,
    env_of,
    free_port,
    get_job,
    sftjob,
    wait_gang_running,
    wait_until,
)

pytestmark = [pytest.mark.cluster]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def _metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? ([0-9.e+-]+)$", line)
        if match and match.group(1) == name and ",".join(sorted((match.group(2) or "").split(","))) == wanted:
            return float(match.group(3))
    return None


@pytest.mark.timeout(180)
def test_metrics_and_liveness_probe(operator_pool, cluster, namespace, tmp_path: Path):
    metrics_port, health_port = free_port(), free_port()
    operator = OperatorProcess(cluster, [namespace], tmp_path / "operator.log", metrics_port=metrics_port,
                               health_port=health_port).start()
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200, 60, "liveness probe answering")
        status, body = _get(f"http://127.0.0.1:{health_port}/healthz")
        assert json.loads(body)["jobs"] == 0

        apply(cluster, sftjob("metered", namespace, nnodes=2, backoffLimit=3))
        wait_gang_running(cluster, namespace, "metered", 2)
        cluster.set_pod_terminated(namespace, "metered-node-1", 137, reason="OOMKilled")
        wait_gang_running(cluster, namespace, "metered", 2, attempt=1)

        def scraped():
            text = _get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            return text if _metric(text, "sftjob_jobs", phase="Running") == 1 else None

        text = wait_until(scraped, 30, "sftjob_jobs{phase=Running} == 1")
        assert _metric(text, "sftjob_jobs", phase="Failed") == 0
        assert _metric(text, "sftjob_gang_restarts_total", reason="OOMKilled", counted="true") == 1
        assert _metric(text, "sftjob_reconcile_duration_seconds_count") >= 3
        assert _metric(text, "sftjob_api_requests_total", verb="create", resource="pods") == 4  # 2 gangs of 2 pods
        # kopf re-runs probes at most every few seconds; the count catches up
        wait_until(lambda: json.loads(_get(f"http://127.0.0.1:{health_port}/healthz")[1] or "{}").get("jobs") == 1,
                   30, "the probe counting the job", interval=1)
    finally:
        operator.stop()
        print(operator.log_tail())


@pytest.mark.timeout(180)
def test_eviction_restarts_the_gang_without_counting(operator_pool, cluster, namespace, tmp_path: Path):
    operator = OperatorProcess(cluster, [namespace], tmp_path / "operator.log").start()
    try:
        apply(cluster, sftjob("evicted", namespace, nnodes=3, backoffLimit=0))
        before = wait_gang_running(cluster, namespace, "evicted", 3)
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evicted-node-1", "namespace": namespace}}
        cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/evicted-node-1/eviction", "-f", "-",
                        input=json.dumps(eviction))
        after = wait_gang_running(cluster, namespace, "evicted", 3, attempt=1)
        job = get_job(cluster, namespace, "evicted")
        # backoffLimit 0 and still running: an eviction is not the training's fault
        assert job["status"]["phase"] == "Running" and job["status"]["restarts"] == 0 and job["status"]["attempt"] == 1
        assert job["status"]["lastFailure"]["rank"] == 1
        assert env_of(after[0])["TRAINING_HUB_RDZV_ID"] != env_of(before[0])["TRAINING_HUB_RDZV_ID"]
    finally:
        operator.stop()
        print(operator.log_tail())
