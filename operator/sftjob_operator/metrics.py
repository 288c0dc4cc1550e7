"""Prometheus metrics of the operator, served on `/metrics` (prometheus_client's HTTP server)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sftjob_operator import status as st


class _JobsByPhase(Collector):
    """`sftjob_jobs{phase}`: computed at scrape time from the operator's view of the jobs, so it never drifts."""

    def __init__(self, phases_of_jobs: Callable[[], Iterable[str]]) -> None:
        self._phases_of_jobs = phases_of_jobs

    def collect(self):
        counts = {phase: 0 for phase in st.PHASES}
        for phase in self._phases_of_jobs():
            counts[phase or st.PENDING] = counts.get(phase or st.PENDING, 0) + 1
        family = GaugeMetricFamily("sftjob_jobs", "SFTJobs known to the operator, by status.phase", labels=["phase"])
        for phase, count in sorted(counts.items()):
            family.add_metric([phase], count)
        yield family


class OperatorMetrics:
    def __init__(self, phases_of_jobs: Callable[[], Iterable[str]], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(_JobsByPhase(phases_of_jobs))
        self.reconcile_seconds = Histogram(
            "sftjob_reconcile_duration_seconds",
            "Time of one reconciliation of one SFTJob (reads, decision, status patch, actions)",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reconcile_errors = Counter(
            "sftjob_reconcile_errors_total", "Reconciliations that ended in an API error", ["kind"], registry=self.registry
        )
        self.restarts = Counter(
            "sftjob_gang_restarts_total",
            "Gang restarts, by the failure reason; counted=false for disruptions (eviction, preemption, node loss)",
            ["reason", "counted"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "sftjob_api_requests_total",
            "Kubernetes API requests made by the operator (not its watches), by the API server's verb and resource",
            ["verb", "resource"],
            registry=self.registry,
        )

        self.leader = Gauge(
            "sftjob_operator_leader",
            "1 while this replica is the one acting (holds the leader Lease, or runs without leader election)",
            registry=self.registry,
        )
        self.leader.set(1)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)
