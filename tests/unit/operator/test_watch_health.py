"""watch_health: the operator's view of its connection (outage logs, probe, metric, start-up wait, watchdog)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import urllib3
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry, generate_latest

from sftjob_operator import watch_health
from sftjob_operator.watch_health import WatchCollector, WatchHealth, describe_error, is_connection_error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused() -> Exception:
    cause = urllib3.exceptions.NewConnectionError(
        object(), "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    return urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/ns/pods", reason=cause)


def test_connection_errors_and_server_errors_are_outages_client_errors_are_not():
    assert is_connection_error(refused())
    assert is_connection_error(ConnectionResetError())
    assert is_connection_error(ApiException(status=503, reason="Service Unavailable"))
    assert is_connection_error(ApiException(status=429, reason="Too Many Requests"))
    assert not is_connection_error(ApiException(status=422, reason="Unprocessable Entity"))
    assert not is_connection_error(KeyError("status"))


def test_a_failed_call_is_one_short_line():
    line = describe_error(refused())
    assert line.startswith("NewConnectionError: ") and "Connection refused" in line and "\n" not in line
    assert len(line) <= 300
    assert describe_error(ApiException(status=503, reason="Service Unavailable")) == "HTTP 503 Service Unavailable"


def test_outage_one_warning_per_failed_call_and_one_line_when_back(caplog):
    clock = Clock()
    recovered = []
    health = WatchHealth(grace_seconds=30, clock=clock, on_recovered=lambda: recovered.append(clock.now))
    health.served.update(sftjobs=True, pods=True)
    caplog.set_level(logging.INFO, logger="sftjob_operator")
    for _ in range(3):
        health.call_failed("GET /api/v1/namespaces/ns/pods", refused())
        clock.now += 5
    assert not health.reachable and not health.established("sftjobs")
    assert health.problems() == []  # 15 s < grace: no restart for a blip
    clock.now += 30
    assert health.problems() == ["API server unreachable for 45 s"]
    health.call_succeeded()
    health.call_succeeded()  # the next successes say nothing
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in records] == ["WARNING"] * 3 + ["INFO"]
    assert all(r.exc_info is None for r in caplog.records)  # no tracebacks
    assert records[-1][1] == "API server reachable again after 45.0 s (3 failed call(s))"
    assert recovered == [145.0]
    assert health.established("sftjobs") and health.problems() == []


def test_failures_while_the_api_server_settles_after_a_recovery_are_the_same_outage(caplog):
    """A restarted API server answers 503 ("storage is (re)initializing") for a few seconds after its first answer:
    still one "reachable again" line and one resync per outage; a failure after the settling time is a new one."""
    from kubernetes.client.rest import ApiException

    clock, recovered = Clock(), []
    health = WatchHealth(clock=clock, on_recovered=lambda: recovered.append(clock.now), settle_seconds=15)
    caplog.set_level(logging.INFO, logger="sftjob_operator")
    health.call_failed("GET /api", refused())
    clock.now += 4
    health.call_succeeded()
    clock.now += 2
    health.call_failed("GET /apis/training-hub.io/v1alpha1/namespaces/ns/sftjobs", ApiException(status=503, reason="Service Unavailable"))
    assert not health.reachable
    clock.now += 1
    health.call_succeeded()
    assert health.reachable and len(recovered) == 1
    health.call_failed("watch sftjobs, kopf attempt #3", "APITooManyRequestsError: storage is (re)initializing")
    health.call_succeeded()
    clock.now += 20  # after the settling time, even an answered failure is a new outage
    health.call_failed("GET /api", ApiException(status=503, reason="Service Unavailable"))
    clock.now += 3
    health.call_succeeded()
    clock.now += 1  # within the settling time, a refused connection is a new outage (the API server restarted again)
    health.call_failed("GET /api", ApiException(status=503, reason="Service Unavailable"))
    health.call_failed("GET /api", refused())
    clock.now += 2
    health.call_succeeded()
    lines = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert lines == ["API server reachable again after 4.0 s (1 failed call(s))",
                     "API server reachable again after 3.0 s (1 failed call(s))",
                     "API server reachable again after 2.0 s (2 failed call(s))"]
    assert len(recovered) == 3
    assert sum("API call failed" in r.getMessage() for r in caplog.records) == 6  # every failed call still warned


def test_probe_problems_name_the_resource_not_watched():
    health = WatchHealth()
    health.served.update(sftjobs=False, pods=True)
    assert health.problems() == ["not watching sftjobs"]


def test_metric_shows_watches_and_reachability():
    clock = Clock()
    health = WatchHealth(clock=clock)
    registry = CollectorRegistry()
    registry.register(WatchCollector(health))
    health.served.update(sftjobs=True, pods=False)
    text = generate_latest(registry).decode()
    assert 'sftjob_operator_watch_established{resource="sftjobs"} 1.0' in text
    assert 'sftjob_operator_watch_established{resource="pods"} 0.0' in text
    assert "sftjob_operator_api_reachable 1.0" in text
    health.call_failed("GET /readyz", refused())
    text = generate_latest(registry).decode()
    assert 'sftjob_operator_watch_established{resource="sftjobs"} 0.0' in text
    assert "sftjob_operator_api_reachable 0.0" in text


def test_start_up_waits_until_the_crd_is_served_retrying_without_giving_up(monkeypatch, caplog):
    answers = [refused(), refused(), False, True]  # down, down, up without the CRD yet, served
    calls = []

    def discover() -> bool:
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sleeps = []

    async def no_sleep(seconds):
        sleeps.append(seconds)

    monkeypatch.setattr(watch_health.asyncio, "sleep", no_sleep)
    health = WatchHealth()
    caplog.set_level(logging.INFO, logger="sftjob_operator")
    asyncio.run(watch_health.wait_until_served(discover, health, max_delay=1.0))
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 1.0]  # backoff, capped
    assert health.reachable
    messages = [r.getMessage() for r in caplog.records]
    assert sum("API call failed" in m for m in messages) == 2
    assert any("does not serve sftjobs.training-hub.io yet" in m for m in messages)
    assert messages[-1].startswith("API server reachable again after")


class _Resource:
    def __init__(self, plural: str) -> None:
        self.plural = plural


class _Insights:
    def __init__(self, *plurals: str) -> None:
        self.watched_resources = {_Resource(p) for p in plurals}
        self.ready_resources = asyncio.Event()
        self.ready_resources.set()  # kopf's first scan is done


def _run_watchdog_ticks(monkeypatch, discover, insights, rescan, ticks: int) -> None:
    count = 0

    async def tick(seconds):
        nonlocal count
        count += 1
        if count >= ticks:
            raise asyncio.CancelledError

    monkeypatch.setattr(watch_health.asyncio, "sleep", tick)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(watch_health.watchdog(discover, health_for_watchdog, insights, rescan))


health_for_watchdog = WatchHealth()


def test_watchdog_rescans_when_kopf_gave_up_on_sftjobs(monkeypatch):
    insights = _Insights()  # kopf's scan ran while the CRD was not served: "Unresolved resources ..."
    rescans = []

    async def rescan():
        rescans.append(1)
        insights.watched_resources.add(_Resource("sftjobs"))

    health_for_watchdog.served.update(sftjobs=False, pods=False)
    _run_watchdog_ticks(monkeypatch, lambda: True, insights, rescan, ticks=2)
    assert rescans == [1]  # once: after it the resource is watched
    # The pods are the pod watch's to report (pod_watch.py, started by the start-up handler), not kopf's.
    assert health_for_watchdog.served == {"sftjobs": True, "pods": False}


def test_watchdog_does_not_rescan_while_the_crd_is_not_served(monkeypatch):
    insights = _Insights()
    health_for_watchdog.served.update(pods=True)
    rescans = []

    async def rescan():
        rescans.append(1)

    _run_watchdog_ticks(monkeypatch, lambda: False, insights, rescan, ticks=3)
    assert rescans == []
    insights.ready_resources.clear()  # nor before kopf's own first scan
    _run_watchdog_ticks(monkeypatch, lambda: True, insights, rescan, ticks=3)
    assert rescans == []
    assert health_for_watchdog.served == {"sftjobs": False, "pods": True}
    assert health_for_watchdog.problems() == ["not watching sftjobs"]


def test_kopf_rescan_makes_kopf_watch_what_the_api_now_serves(monkeypatch):
    """Runs kopf's own revision of its insights (a kopf upgrade that moves these internals fails here)."""
    import kopf
    from kopf._cogs.clients import scanning
    from kopf._cogs.structs.references import Insights, Resource

    registry = kopf.OperatorRegistry()

    @kopf.on.event("training-hub.io", "v1alpha1", "sftjobs", registry=registry)
    def job(**_):
        pass

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod(**_):
        pass

    verbs = ["list", "watch", "patch", "get"]
    served = [Resource("", "v1", "pods", kind="Pod", namespaced=True, verbs=verbs)]

    async def scan(**_):
        return list(served)

    monkeypatch.setattr(scanning, "scan_resources", scan)

    async def scenario():
        insights = Insights()
        rescan = watch_health.kopf_rescan(insights, registry, kopf.OperatorSettings())
        await rescan()
        first = watch_health.served_plurals(insights)
        served.append(Resource("training-hub.io", "v1alpha1", "sftjobs", kind="SFTJob", namespaced=True, verbs=verbs))
        await rescan()
        return first, watch_health.served_plurals(insights)

    first, second = asyncio.run(scenario())
    assert first == {"pods"} and second == {"pods", "sftjobs"}


def test_kopf_retries_never_run_out():
    backoffs = watch_health.RetryForever(backoffs=(1, 2), then=10)
    first = [b for _, b in zip(range(50), backoffs)]
    assert first[:3] == [1, 2, 10] and first[-1] == 10 and len(first) == 50
    assert next(iter(backoffs)) == 1  # every request starts over
    assert not hasattr(backoffs, "__len__")  # kopf counts Sized backoffs and escalates after the last one


def test_kopf_request_failures_become_one_short_warning_each(caplog):
    health = WatchHealth()
    logger = logging.getLogger("kopf._cogs.clients.watching")
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(watch_health.KopfRequestLog(health))
    logger.error(
        "Request attempt #2/9 failed; will retry: GET https://127.0.0.1:32752/api/v1/namespaces/ns/pods?watch=true"
        "&resourceVersion=305 -> ClientConnectorError(ConnectionKey(host='127.0.0.1', port=32752, is_ssl=True, "
        "ssl=True, proxy=None), ConnectionRefusedError(111, \"Connect call failed ('127.0.0.1', 32752)\"))"
    )
    logger.error("something kopf says that is not a failed request")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "API call failed (watch /api/v1/namespaces/ns/pods, kopf attempt #2/9): "
                    "ConnectionRefusedError: Connect call failed ('127.0.0.1', 32752)"),
        ("ERROR", "something kopf says that is not a failed request"),
    ]
    assert not health.reachable
