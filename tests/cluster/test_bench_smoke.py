"""The benchmarks in bench/ still run (a smoke run at tiny sizes, on the test session's cluster; no figure is
asserted: the figures are bench/'s business). They import test helpers and operator internals, which move."""

from __future__ import annotations

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
                 ["operator RSS with 3 SFTJobs (1 running)"], id="operator_memory"),
    pytest.param(["bench/operator_outage.py", "--runs", "1", "--cases", "delete"],
                 ["kubectl delete sftjob -> no pods, right after an API-server restart"], id="operator_outage"),
    pytest.param(["bench/operator_ha.py", "--runs", "1", "--kills", "0", "--terms", "1"],
                 ["apply -> 4 pods created", "takeover after SIGTERM"], id="operator_ha"),
]


def _run(command: list[str], expected: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    for words in expected:
        assert words in result.stdout, result.stdout


@pytest.mark.cluster
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("command", "expected"), SMOKE_RUNS)
def test_operator_benchmark_runs_at_tiny_size(operator_pool, cluster, command, expected):
    _run(command, expected, {**os.environ, "TRAINING_HUB_KUBECONFIG": cluster.kubeconfig})


@pytest.mark.timeout(300)
def test_import_time_benchmark_runs():
    _run(["bench/import_time.py", "--runs", "1"], ["import training_hub"], dict(os.environ))
