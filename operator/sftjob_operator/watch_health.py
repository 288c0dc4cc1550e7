"""Is the operator connected? The API server answers, kopf watches SFTJobs and the pod watch (pod_watch.py) runs.

An operator that looks alive but watches nothing is the worst failure it can have: jobs get no pods and no
status while every probe passes. Three things prevent it:

- start-up waits until the API server serves SFTJobs (discovery lists `sftjobs` in training-hub.io/v1alpha1)
  before kopf scans the cluster's resources. kopf scans once; a scan made while the API server is down or has
  not yet loaded the CRD finds no SFTJobs ("Unresolved resources cannot be served") and kopf never looks again.
- a watchdog looks every few seconds: it asks discovery (so it notices an outage even when no job is busy), and
  when kopf does not watch SFTJobs it scans again, the way kopf does itself when a CRD changes. (The pod watch
  needs no scan: it watches a core resource, and starts after the wait above.)
- while the API server is unreachable for longer than `grace_seconds`, or a resource is not watched, the
  `/healthz` probe fails (liveness and readiness: Kubernetes restarts the operator or stops routing to it) and
  `sftjob_operator_watch_established{resource}` is 0.

Logs: one warning line per failing API call (no traceback: an outage is not a bug), one line when the API
server answers again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("sftjob_operator")

WATCHED = ("sftjobs", "pods")
KOPF_WATCHED = ("sftjobs",)  # through kopf's resource scan; the pods through pod_watch.py


def describe_error(error: BaseException) -> str:
    """One short line for a failed API call (the urllib3 chain of a refused connection is 600 characters)."""
    from kubernetes.client.rest import ApiException

    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}".strip()
    reason = getattr(error, "reason", None)  # urllib3 MaxRetryError wraps the real cause
    if isinstance(reason, BaseException):
        error = reason
    text = str(error)
    if "] " in text and text.startswith("<"):  # "<urllib3.connection.HTTPSConnection object at 0x..>: Failed..."
        text = text.split(">: ", 1)[-1]
    return f"{type(error).__name__}: {text}"[:300]


def _answered(error: BaseException | str) -> bool:
    """The API server answered (an HTTP error status), as opposed to a refused, reset or timed-out connection."""
    from kubernetes.client.rest import ApiException

    if isinstance(error, ApiException):
        return bool(error.status)
    return isinstance(error, str) and error.startswith(("APIServerError", "APITooManyRequestsError", "HTTP "))


def is_connection_error(error: BaseException) -> bool:
    """The API server could not be reached or did not answer (an outage, never a bug in the operator)."""
    import http.client

    import urllib3
    from kubernetes.client.rest import ApiException

    if isinstance(error, ApiException):
        return error.status in (None, 0) or error.status >= 500 or error.status == 429
    # http.client's: kube.DirectTransport (a reply cut short, no status line); urllib3's: the client's transport
    return isinstance(error, (http.client.HTTPException, urllib3.exceptions.HTTPError, OSError))


@dataclass
class WatchHealth:
    """The operator's view of its connection; updated from the API calls the reconciler makes and the watchdog."""

    grace_seconds: float = 30.0  # an outage shorter than this does not fail the probe (no restart for a blip)
    clock: Callable[[], float] = time.monotonic
    on_recovered: Callable[[], None] | None = None  # e.g. reconcile every job at once when the API server is back
    served: dict[str, bool] = field(default_factory=lambda: {name: False for name in WATCHED})
    down_since: float | None = None
    failed_calls: int = 0
    # Answered failures (5xx, 429) this soon after a recovery belong to the same outage (a restarted API server
    # answers 503 "storage is (re)initializing" for a few seconds more): warned about, but no second "reachable
    # again" line nor resync. A refused or reset connection is a new outage, whenever it comes.
    settle_seconds: float = 15.0
    recovered_at: float | None = None
    relapsed: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # calls come from the reconciler's worker threads and the event loop

    def call_failed(self, what: str, error: BaseException | str) -> None:
        """One warning line per failing call (no traceback)."""
        answered = _answered(error)
        with self._lock:
            if self.down_since is None:
                self.down_since = self.clock()
                self.relapsed = (answered and self.recovered_at is not None
                                 and self.down_since - self.recovered_at < self.settle_seconds)
            elif self.relapsed and not answered:
                self.relapsed = False  # unreachable again: a new outage, announced when it ends
            self.failed_calls += 1
        log.warning("API call failed (%s): %s", what, error if isinstance(error, str) else describe_error(error))

    def call_succeeded(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            seconds, calls, relapsed = self.clock() - self.down_since, self.failed_calls, self.relapsed
            self.down_since, self.failed_calls, self.relapsed = None, 0, False
            if not relapsed:
                self.recovered_at = self.clock()
        if relapsed:
            return  # still settling after the recovery already announced
        log.info("API server reachable again after %.1f s (%d failed call(s))", seconds, calls)
        if self.on_recovered is not None:
            self.on_recovered()

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def established(self, resource: str) -> bool:
        return self.served.get(resource, False) and self.reachable

    def problems(self) -> list[str]:
        """Why the operator is not healthy (empty: healthy)."""
        problems = [f"not watching {name}" for name, ok in self.served.items() if not ok]
        if self.down_since is not None and self.clock() - self.down_since > self.grace_seconds:
            problems.append(f"API server unreachable for {self.clock() - self.down_since:.0f} s")
        return problems


class WatchCollector(Collector):
    """`sftjob_operator_watch_established{resource}` and `sftjob_operator_api_reachable`."""

    def __init__(self, health: WatchHealth) -> None:
        self._health = health

    def collect(self) -> Iterable[GaugeMetricFamily]:
        watched = GaugeMetricFamily(
            "sftjob_operator_watch_established",
            "1 while the operator watches the resource and the API server answers, else 0",
            labels=["resource"],
        )
        for name in self._health.served:
            watched.add_metric([name], 1.0 if self._health.established(name) else 0.0)
        yield watched
        yield GaugeMetricFamily(
            "sftjob_operator_api_reachable", "1 while the API server answers the operator's calls",
            value=1.0 if self._health.reachable else 0.0,
        )


# ---------------------------------------------------------------------------------------------------------------
# kopf wiring


def served_plurals(insights: Any) -> set[str]:
    return {resource.plural for resource in insights.watched_resources}


async def wait_until_served(discover: Callable[[], bool], health: WatchHealth, *, max_delay: float = 10.0) -> None:
    """Blocks (kopf start-up) until `discover()` says the API server serves SFTJobs; retries with backoff, never
    gives up. Runs the blocking call in a thread so kopf's loop stays responsive to SIGTERM."""
    delay = 0.5
    loop = asyncio.get_running_loop()
    while True:
        try:
            if await loop.run_in_executor(None, discover):
                health.call_succeeded()
                return
            log.warning("the API server does not serve sftjobs.training-hub.io yet (is the CRD installed?); "
                        "retrying in %.1f s", delay)
        except Exception as error:  # noqa: BLE001 - any failure here is "not yet"; it is logged, then retried
            health.call_failed("discovery of training-hub.io/v1alpha1", error)
        await asyncio.sleep(delay)
        delay = min(max_delay, delay * 2)


async def watchdog(
    discover: Callable[[], bool], health: WatchHealth, insights: Any, rescan: Callable[[], Any], *,
    interval: float = 5.0,
) -> None:
    """Forever: probe discovery (notices outages and recoveries), track what kopf watches, rescan when needed."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            crd_served = await loop.run_in_executor(None, discover)
            health.call_succeeded()
        except Exception as error:  # noqa: BLE001
            health.call_failed("discovery of training-hub.io/v1alpha1", error)
            crd_served = False
        plurals = served_plurals(insights)
        for name in KOPF_WATCHED:
            health.served[name] = name in plurals
        # Before kopf's own first scan (it starts after the start-up handlers) there is nothing to judge.
        if crd_served and insights.ready_resources.is_set() and not set(KOPF_WATCHED) <= plurals:
            log.warning("kopf watches %s, not %s: scanning the API's resources again", sorted(plurals) or "nothing",
                        sorted(set(KOPF_WATCHED) - plurals))
            try:
                await rescan()
            except Exception as error:  # noqa: BLE001 - retried on the next tick
                log.warning("rescanning the API's resources failed: %s", describe_error(error))
            plurals = served_plurals(insights)
            for name in KOPF_WATCHED:
                health.served[name] = name in plurals
        await asyncio.sleep(interval)


def kopf_rescan(insights: Any, registry: Any, settings: Any) -> Callable[[], Any]:
    """What kopf does when a CRD changes (observation.process_discovered_resource_event), for every group.

    kopf has no public call for it; its start-up scan is the only other one. Pinned kopf (pyproject) keeps these
    names; tests/unit/operator/test_watch_health.py runs it against kopf's real insights."""
    from kopf._cogs.clients import scanning
    from kopf._core.reactor import observation

    async def rescan() -> None:
        resources = await scanning.scan_resources(settings=settings, logger=log)
        async with insights.revised:
            observation.revise_resources(resources=resources, insights=insights, registry=registry, group=None)
            await insights.backbone.fill(resources=resources)
            insights.revised.notify_all()

    return rescan


class RetryForever:
    """kopf's `settings.networking.error_backoffs`: kopf gives a request up after its backoffs (54 s by default),
    after which a watch stream can stop for good; not being Sized, this one never runs out."""

    def __init__(self, backoffs: tuple[float, ...] = (0.5, 1), then: float = 2) -> None:
        self.backoffs, self.then = backoffs, then

    def __iter__(self):
        yield from self.backoffs
        while True:
            yield self.then


_KOPF_RETRY = re.compile(r"^Request attempt (#\S+) failed; (?:will retry|escalating): (\S+) (\S+) -> (.*)$", re.S)


class KopfRequestLog(logging.Filter):
    """kopf logs each failed request at ERROR with the whole exception repr (~400 characters); this turns it into
    the operator's own one warning line per failed call (and counts it as an outage). A handler filter: kopf logs
    them through the logger of the caller (watching, scanning, per-object loggers)."""

    def __init__(self, health: WatchHealth) -> None:
        super().__init__()
        self._health = health

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_sftjob_rewritten", False):
            return False  # a second handler sees the record the first one already turned into our line
        match = _KOPF_RETRY.match(record.getMessage()) if record.name.startswith("kopf") else None
        if match is None:
            return True
        record._sftjob_rewritten = True
        attempt, method, url, error = match.groups()
        path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
        kind = "watch" if "watch=true" in url else method
        causes = re.findall(r"(\w+Error)\((?:\d+, )?(?:'([^']*)'|\"([^\"]*)\")", error)
        text = f"{causes[-1][0]}: {causes[-1][1] or causes[-1][2]}" if causes else error[:200]
        self._health.call_failed(f"{kind} /{path}, kopf attempt {attempt}", text[:300])
        return False


class FailedProbeLog(logging.Filter):
    """A failing `watches` probe makes kopf's health endpoint answer 500 (what Kubernetes must see), and aiohttp
    then logs the probe's exception with a traceback; kopf has already said why in one line ("Activity 'watches'
    failed permanently: not watching sftjobs"), so that traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (error is not None and type(error).__name__ == "ActivityError")
