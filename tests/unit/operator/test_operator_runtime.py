"""The operator's runtime settings (environment) and metrics, without a cluster."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from sftjob_operator.handlers import RuntimeSettings, _newer, reconcile_policy_from_env
from sftjob_operator.metrics import OperatorMetrics


def test_timings_come_from_the_environment():
    policy = reconcile_policy_from_env({"SFTJOB_OPERATOR_RESTART_BACKOFF_SECONDS": "0.5", "SFTJOB_OPERATOR_PROGRESS_INTERVAL_SECONDS": "2"})
    assert policy.restart_backoff_seconds == 0.5 and policy.progress_interval_seconds == 2
    assert policy.restart_backoff_max_seconds == 300  # unset: default
    settings = RuntimeSettings.from_env({"SFTJOB_OPERATOR_WORKERS": "4", "SFTJOB_OPERATOR_RESYNC_SECONDS": "15"})
    assert settings.workers == 4 and settings.resync_seconds == 15 and settings.debounce_seconds == 0.2


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SFTJOB_OPERATOR_RESTART_BACKOFF_SECONDS": "soon"}, "SFTJOB_OPERATOR_RESTART_BACKOFF_SECONDS: must be a number of seconds (got 'soon')"),
        ({"SFTJOB_OPERATOR_RECHECK_SECONDS": "-1"}, "SFTJOB_OPERATOR_RECHECK_SECONDS: must be >= 0"),
    ],
)
def test_bad_timings_name_the_variable(environ, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        reconcile_policy_from_env(environ)


def test_bad_worker_count_names_the_variable():
    with pytest.raises(ValueError, match="SFTJOB_OPERATOR_WORKERS: must be a whole number"):
        RuntimeSettings.from_env({"SFTJOB_OPERATOR_WORKERS": "many"})


def test_resource_versions_compare_as_revisions():
    assert _newer("101", "99") and not _newer("99", "101") and not _newer("5", "5")
    assert _newer("b", "a") and _newer("x", None)


def test_jobs_by_phase_are_counted_at_scrape_time():
    phases = ["Running", "Running", "Failed"]
    metrics = OperatorMetrics(lambda: list(phases))
    text = generate_latest(metrics.registry).decode()
    assert 'sftjob_jobs{phase="Running"} 2.0' in text
    assert 'sftjob_jobs{phase="Failed"} 1.0' in text
    assert 'sftjob_jobs{phase="Succeeded"} 0.0' in text
    phases.append("Succeeded")
    assert 'sftjob_jobs{phase="Succeeded"} 1.0' in generate_latest(metrics.registry).decode()
    metrics.restarts.labels(reason="OOMKilled", counted="true").inc()
    metrics.reconcile_seconds.observe(0.02)
    text = generate_latest(metrics.registry).decode()
    assert 'sftjob_gang_restarts_total{counted="true",reason="OOMKilled"} 1.0' in text
    assert "sftjob_reconcile_duration_seconds_count 1.0" in text
