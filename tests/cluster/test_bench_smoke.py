"""The benchmarks in bench/ still run (a smoke run at tiny sizes, on the test session's cluster; no figure is
asserted: the figures are bench/'s business). They import test helpers and operator internals, which move."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SMOKE_RUNS = [
    pytest.param(["bench/operator_startup.py", "--single-runs", "1", "--burst-jobs", "2", "--nnodes", "2"],
                 ["apply -> all pods created", "API requests per job start"], id="operator_startup"),
    pytest.param(["bench/operator_memory.py", "--jobs", "3", "--running", "1"],
                 ["operator RSS with 3 SFTJobs (1 running)", "all deleted at once: every pod gone after"],
                 id="operator_memory"),
    pytest.param(["bench/operator_outage.py", "--runs", "1", "--cases", "delete"],
                 ["kubectl delete sftjob -> no pods, right after an API-server restart"], id="operator_outage"),
    pytest.param(["bench/operator_ha.py", "--runs", "1", "--kills", "0", "--terms", "1"],
                 ["apply -> 4 pods created", "takeover after SIGTERM"], id="operator_ha"),
    pytest.param(["bench/sftjob_create_cost.py", "--creates", "4", "--rounds", "1"],
                 ["API server CPU per create", "sftjob-no-cel", "sftjob-no-schema"], id="sftjob_create_cost"),
]


def _run(command: list[str], expected: list[str], env: dict[str, str], timeout: float = 280) -> None:
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    for words in expected:
        assert words in result.stdout, result.stdout


@pytest.mark.cluster
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("command", "expected"), SMOKE_RUNS)
def test_operator_benchmark_runs_at_tiny_size(operator_pool, cluster, command, expected):
    _run(command, expected, {**os.environ, "TRAINING_HUB_KUBECONFIG": cluster.kubeconfig})


@pytest.mark.cluster
@pytest.mark.timeout(1200)  # hack/test.sh builds the peer in the background: a cold run waits here for the build
def test_anchors_benchmark_runs_floor_peer_and_operator(audited_cluster, tmp_path):
    """bench/operator_anchors.py at tiny size on a cluster with an audit log: every subject (the floor at 16 and 1
    concurrent POSTs, the floor behind each SFTJob's POST, the Go peer, the operator, and the operator as a variant)
    produces its figures, requests per job and CPU per process included; `--timeline` prints where each burst's
    requests fell."""
    build = subprocess.run(["bash", "hack/control-plane.sh", "peer-build"], cwd=REPO, capture_output=True, text=True,
                           timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    figures_file = tmp_path / "figures.json"
    # The variant: the operator again, its requests through the kubernetes client (the transport it falls back to).
    _run(["bench/operator_anchors.py", "--single-runs", "1", "--bursts", "2", "--nnodes", "2",
          "--variant", "client:SFTJOB_OPERATOR_API_TRANSPORT=client", "--timeline", "--json", str(figures_file)],
         ["1 job x 2 nodes, alone", "2 jobs x 2 nodes at once", "API requests per job start", "operator / floor-cr",
          "timeline of operator", "own create pods", "bench create sftjobs", "CPU s until the last pods",
          "operator-client / operator, repeat by repeat"],
         {**os.environ, "TRAINING_HUB_KUBECONFIG": audited_cluster.kubeconfig}, timeout=360)
    figures = json.loads(figures_file.read_text())
    subjects = {"floor", "floor-cr", "floor-1", "peer", "operator", "operator-client"}
    for phase in ("single", "burst_2"):
        assert set(figures[phase]) == subjects
        for subject, row in figures[phase].items():
            # each subject created pods, and its own requests were found in the audit log (at least its creates)
            assert row["requests_per_job_total"] >= 2, (phase, subject, row)
            assert row["requests_per_job"].get("create pods") == 2, (phase, subject, row)
    for subject in ("peer", "operator", "operator-client"):  # the processes measured: CPU and RSS per burst
        assert figures["burst_2"][subject]["cpu_s"] > 0 and figures["burst_2"][subject]["rss_peak_mib"] > 0
        assert figures["burst_2"][subject]["cpu_to_last_per_repeat"][0]["subject"] >= 0
    for subject in ("operator", "operator-client"):
        assert figures["burst_2"][subject]["pods_seen"] == figures["burst_2"][subject]["pods_expected"] == 4


@pytest.mark.timeout(300)
def test_import_time_benchmark_runs():
    _run(["bench/import_time.py", "--runs", "1"], ["import training_hub"], dict(os.environ))
