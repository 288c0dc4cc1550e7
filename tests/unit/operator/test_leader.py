"""Leader election (sftjob_operator/leader.py): two contenders on one in-memory Lease with a conditional update,
and a hand-driven clock, so the safety property can be checked step by step: a leader stops acting before any
standby may take over, also after a pause (SIGSTOP) it did not notice."""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import pytest

from sftjob_operator.kube import Kube
from sftjob_operator.leader import (
    LeaderElectionSettings,
    LeaderElector,
    LeaseConflict,
    NotLeader,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryLease:
    """One Lease object with the API server's optimistic concurrency (resourceVersion) and a switch to fail calls."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    def get(self) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    def create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise LeaseConflict("exists")
        self.version += 1
        self.writes += 1
        self.lease = {"metadata": {"name": "l", "resourceVersion": str(self.version)}, "spec": dict(spec)}
        return copy.deepcopy(self.lease)

    def replace(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is None or lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise LeaseConflict("changed")
        self.version += 1
        self.writes += 1
        self.lease = {"metadata": {**lease["metadata"], "resourceVersion": str(self.version)}, "spec": dict(lease["spec"])}
        return copy.deepcopy(self.lease)

    def wait_for_change(self, resource_version: str | None, timeout: float) -> None:
        return None

    @property
    def holder(self) -> str | None:
        return (self.lease or {}).get("spec", {}).get("holderIdentity")


SETTINGS = LeaderElectionSettings(enabled=True, lease_duration=15, renew_deadline=10, retry_period=2)


def contender(store: MemoryLease, clock: Clock, name: str) -> LeaderElector:
    return LeaderElector(store, LeaderElectionSettings(**{**SETTINGS.__dict__, "identity": name}), clock=clock)


@pytest.fixture
def two():
    store, clock_a, clock_b = MemoryLease(), Clock(), Clock()
    return store, clock_a, clock_b, contender(store, clock_a, "a"), contender(store, clock_b, "b")


def test_first_contender_creates_the_lease_and_the_second_stands_by(two):
    store, _, _, a, b = two
    assert a.try_acquire_or_renew() and a.is_leader()
    assert store.holder == "a" and store.lease["spec"]["leaseTransitions"] == 0
    assert not b.try_acquire_or_renew() and not b.is_leader()
    assert b.holder == "a"
    with pytest.raises(NotLeader):
        b.check_may_write()
    a.check_may_write()


def test_renewals_keep_the_leader_and_keep_the_standby_out(two):
    store, clock_a, clock_b, a, b = two
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    for _ in range(20):  # 40 s of renewals every 2 s: the standby sees a change each time
        clock_a.advance(2)
        clock_b.advance(2)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert store.holder == "a" and a.is_leader()


def test_a_dead_leader_is_replaced_only_after_the_lease_duration_on_the_standbys_clock(two):
    store, _, clock_b, a, b = two
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()  # b saw the Lease at t=0 (its clock)
    clock_b.advance(14.9)
    assert not b.try_acquire_or_renew()
    clock_b.advance(0.2)
    assert b.try_acquire_or_renew() and b.is_leader()
    assert store.holder == "b" and store.lease["spec"]["leaseTransitions"] == 1


def test_standby_ignores_the_timestamps_in_the_lease(two):
    """A leader whose wall clock is an hour behind renews with old renewTimes: the standby still waits, because
    it times the Lease by when IT saw it change."""
    store, _, clock_b, a, b = two
    from datetime import datetime, timedelta, timezone

    a.wall_clock = lambda: datetime.now(timezone.utc) - timedelta(hours=1)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock_b.advance(5)
    assert not b.try_acquire_or_renew()


def test_a_leader_that_cannot_renew_stops_acting_before_a_standby_can_take_over(two):
    store, clock_a, clock_b, a, b = two
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    store.down = True  # a's renewals fail from now on (partition between a and the API server)
    stopped_at = None
    for step in range(1, 200):
        clock_a.advance(0.1)
        clock_b.advance(0.1)
        with pytest.raises(ConnectionError):
            a.try_acquire_or_renew()
        if stopped_at is None and not a.is_leader():
            stopped_at = step * 0.1
        store.down = False
        took_over = b.try_acquire_or_renew()
        store.down = True
        if took_over:
            break
    assert stopped_at is not None and stopped_at <= 10.0 + 1e-9
    assert took_over and step * 0.1 >= 15.0 - 1e-9
    # No overlap: a stopped at least lease_duration - renew_deadline before b began.
    assert step * 0.1 - stopped_at >= 5.0 - 1e-6


def test_a_paused_leader_refuses_to_write_when_it_wakes_up(two):
    """SIGSTOP for 30 s: nothing in the process ran, but its clock kept counting; the first write is refused,
    before any request, even though the elector's thread has not looked at the Lease yet."""
    store, clock_a, clock_b, a, b = two
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    clock_a.advance(30)
    clock_b.advance(30)
    assert b.try_acquire_or_renew()
    with pytest.raises(NotLeader):
        a.check_may_write()
    assert not a.try_acquire_or_renew()  # and it does not get the Lease back while b renews


def test_validity_counts_from_before_the_renewal_request():
    """A renewal that takes 3 s to come back: the leader's validity starts when it SENT it."""
    store, clock = MemoryLease(), Clock()
    elector = contender(store, clock, "a")
    original_replace = store.replace

    def slow_replace(lease):
        clock.advance(3)
        return original_replace(lease)

    elector.try_acquire_or_renew()
    store.replace = slow_replace
    started = clock.now
    elector.try_acquire_or_renew()
    assert elector._valid_until == pytest.approx(started + SETTINGS.renew_deadline)


def test_two_standbys_racing_for_an_expired_lease_elect_exactly_one():
    store, clock = MemoryLease(), Clock()
    a, b, c = (contender(store, clock, name) for name in "abc")
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    c.try_acquire_or_renew()
    clock.advance(16)  # a died; b and c both find the Lease expired and read the same version
    plain_replace = store.replace

    def c_wins_in_between(lease):
        store.replace = plain_replace
        assert c.try_acquire_or_renew()  # c's update lands between b's read and b's update
        return plain_replace(lease)

    store.replace = c_wins_in_between
    assert not b.try_acquire_or_renew()  # b's update is conditional on the version it read: 409
    assert store.holder == "c"
    assert [x.is_leader() for x in (a, b, c)] == [False, False, True]


def test_release_hands_over_without_waiting_for_the_expiry(two):
    store, clock_a, clock_b, a, b = two
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    a.stop(release=True)
    assert not a.is_leader() and store.holder is None
    assert b.try_acquire_or_renew()  # no waiting: the holder is empty
    assert store.holder == "b"


def test_a_stopped_elector_never_gets_validity_back(two):
    store, _, _, a, _ = two
    a.try_acquire_or_renew()
    a.stop(release=False)
    a.try_acquire_or_renew()  # a renewal that was already in flight
    assert not a.is_leader()


def test_callbacks_follow_leadership(two):
    store, clock_a, clock_b, a, b = two
    events = []
    a.on_started_leading = lambda: events.append("start")
    a.on_stopped_leading = lambda: events.append("stop")
    a.try_acquire_or_renew()
    a._notify()
    clock_a.advance(11)
    a._notify()
    assert events == ["start", "stop"]


# --- the write gate in Kube -----------------------------------------------------------------------------------


class _Response:
    status, reason = 201, "Created"

    def read(self):
        return b"{}"


class _ApiClient:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def param_serialize(self, method, path, **_):
        return method, path, {}, None, None

    def call_api(self, method, url, **_):
        self.sent.append(method)
        return _Response()


def test_kube_refuses_writes_without_the_lease_but_still_reads():
    store, clock = MemoryLease(), Clock()
    elector = contender(store, clock, "a")
    api = _ApiClient()
    kube = Kube(api)
    kube.write_guard = elector.check_may_write
    kube.request("get", "GET", "/api/v1/pods")
    with pytest.raises(NotLeader):
        kube.request("create", "POST", "/api/v1/namespaces/x/pods", body={})
    kube.request("update", "PUT", "/apis/coordination.k8s.io/v1/x", body={}, gated=False)  # the Lease's own
    assert api.sent == ["GET", "PUT"]
    elector.try_acquire_or_renew()
    kube.request("create", "POST", "/api/v1/namespaces/x/pods", body={})
    assert api.sent[-1] == "POST"


# --- settings ---------------------------------------------------------------------------------------------------


def test_settings_defaults_are_controller_runtimes(monkeypatch):
    settings = LeaderElectionSettings.from_env({"POD_NAME": "op-7d9-x", "POD_NAMESPACE": "th-system"})
    assert (settings.enabled, settings.lease_duration, settings.renew_deadline, settings.retry_period) == (
        False, 15, 10, 2)
    assert settings.namespace == "th-system" and settings.identity.startswith("op-7d9-x_")
    assert settings.lease_name == "training-hub-operator"


def test_flags_win_over_the_environment():
    settings = LeaderElectionSettings.from_env(
        {"SFTJOB_OPERATOR_LEADER_ELECT": "true", "SFTJOB_OPERATOR_LEADER_ELECT_LEASE_DURATION": "30",
         "SFTJOB_OPERATOR_LEADER_ELECT_LEASE_NAMESPACE": "ops"},
        lease_duration=20.0, namespace=None, renew_deadline=None)
    assert settings.enabled and settings.lease_duration == 20 and settings.namespace == "ops"


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SFTJOB_OPERATOR_LEADER_ELECT": "maybe"}, "SFTJOB_OPERATOR_LEADER_ELECT: must be true or false"),
        ({"SFTJOB_OPERATOR_LEADER_ELECT_RETRY_PERIOD": "2s"}, "SFTJOB_OPERATOR_LEADER_ELECT_RETRY_PERIOD: must be a number"),
        ({"SFTJOB_OPERATOR_LEADER_ELECT_LEASE_DURATION": "10"},
         "SFTJOB_OPERATOR_LEADER_ELECT_LEASE_DURATION (10) must be greater than SFTJOB_OPERATOR_LEADER_ELECT_RENEW_DEADLINE"),
        ({"SFTJOB_OPERATOR_LEADER_ELECT_RETRY_PERIOD": "9"},
         "SFTJOB_OPERATOR_LEADER_ELECT_RENEW_DEADLINE (10) must be greater than 1.2 x"),
        ({"SFTJOB_OPERATOR_LEADER_ELECT_RETRY_PERIOD": "0"}, "SFTJOB_OPERATOR_LEADER_ELECT_RETRY_PERIOD: must be > 0"),
    ],
)
def test_bad_settings_name_the_variable(environ, message):
    with pytest.raises(ValueError, match="invalid leader election settings") as error:
        LeaderElectionSettings.from_env(environ)
    assert message in str(error.value)


def test_never_leader_before_the_first_acquisition():
    elector = contender(MemoryLease(), Clock(), "a")
    assert elector._valid_until == -math.inf and not elector.is_leader()


# --- the reconciler on a standby and on taking over ------------------------------------------------------------


def _job(name: str, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}, "spec": {}}


def test_a_standby_caches_jobs_but_reconciles_only_after_taking_over():
    import asyncio

    from sftjob_operator.handlers import JobReconciler, RuntimeSettings

    leading = {"now": False}
    reconciled: list[tuple[str, str]] = []
    refuse = {"now": False}

    class Recording(JobReconciler):
        def reconcile_now(self, key):
            reconciled.append(key)
            if refuse["now"]:
                raise NotLeader("lease lost mid-reconciliation")
            return 0.01  # asks to be looked at again soon

    async def scenario() -> None:
        class NoKube:
            calls: list[str] = []

            def delete_owned_pods(self, namespace, name, uid):
                self.calls.append(f"delete pods of {name}")
                return 0

        kube = NoKube()
        reconciler = Recording(kube=kube, config=None, settings=RuntimeSettings(debounce_seconds=0, workers=2),
                               is_leader=lambda: leading["now"])
        reconciler._loop = asyncio.get_running_loop()
        reconciler.job_event("ADDED", _job("a"))
        reconciler.job_event("ADDED", _job("b"))
        reconciler.pod_event("ADDED", {"metadata": {"namespace": "ns", "name": "a-node-0",
                                                    "labels": {"training-hub.io/job-name": "a"}}})
        reconciler.resync_all()
        reconciler.job_event("ADDED", _job("gone"))
        reconciler.job_event("DELETED", {"metadata": {**_job("gone")["metadata"], "uid": "u-1"}})
        await asyncio.sleep(0.1)
        assert reconciled == []  # standby: no reconciliation, hence no reads and no writes
        assert kube.calls == []  # not even the clean-up of a deleted job's pods
        assert {key: state.body["metadata"]["name"] for key, state in reconciler.jobs.items()} == {
            ("ns", "a"): "a", ("ns", "b"): "b"}  # but the cache is warm

        leading["now"] = True
        reconciler.lead()
        await asyncio.sleep(0.05)
        assert {("ns", "a"), ("ns", "b")} <= set(reconciled)  # every job at once on taking over

        leading["now"] = False
        reconciler.stand_by()
        await asyncio.sleep(0.05)
        count = len(reconciled)
        await asyncio.sleep(0.1)
        assert len(reconciled) == count  # requeues stopped with the leadership
        assert all(state.handle is None for state in reconciler.jobs.values())

        leading["now"] = True
        refuse["now"] = True  # the lease runs out during a reconciliation: the write is refused, no retry loop
        reconciler.trigger(("ns", "a"))
        await asyncio.sleep(0.05)
        assert reconciler.jobs[("ns", "a")].handle is None
        reconciler.close()

    asyncio.run(scenario())
