"""Leader election on a `coordination.k8s.io/v1` Lease: several replicas, one acts, the others stand by.

The semantics are controller-runtime's (client-go `leaderelection`), so platform teams know what to expect:

* The Lease (`kubectl get lease -n <operator namespace>` shows its HOLDER) names the leader. The leader renews it
  every `retry_period`; a standby that has seen no change of the Lease for `lease_duration` (timed by its OWN
  clock from the moment it saw the last change, never by the timestamps in the Lease: clocks of two machines
  differ) takes it over with an update conditional on the resourceVersion, so exactly one contender wins.
* The leader acts only while `clock() < valid_until`, where `valid_until` is the start of its last successful
  renewal (measured BEFORE the request was sent) plus `renew_deadline`. `renew_deadline < lease_duration`, so a
  leader that cannot renew stops acting at least `lease_duration - renew_deadline` seconds before any standby can
  consider the Lease expired. The check is made by `Kube.request` right before every write, with a monotonic
  clock that keeps running while the process is paused (CLOCK_BOOTTIME: also across a machine suspend): a
  process stopped by SIGSTOP, a long GC pause or a frozen VM wakes up, finds `valid_until` past, and writes
  nothing until it wins the Lease again.
* On SIGTERM the leader stops writing and then releases the Lease (holder emptied): a standby watching the Lease
  takes over at once instead of waiting for the expiry.
* A standby keeps its watches (SFTJobs, pods) running, so on taking over it reconciles every job at once from a
  warm cache; it makes no writes at all (the gate in `Kube.request` refuses them).

Why a Lease and not kopf peering: kopf peering pauses every operator that sees a peer of the same priority (two
replicas of one Deployment have the same priority: nothing runs while both are up), needs its own CRDs and
cluster-scoped objects, and has no renew deadline, so a paused replica could act after a peer took over. A
Lease is the API every Kubernetes controller uses, needs no CRD, and its holder shows in `kubectl get lease`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

log = logging.getLogger("sftjob_operator.leader")

ENV_PREFIX = "SFTJOB_OPERATOR_LEADER_ELECT"
ENABLED = ENV_PREFIX  # SFTJOB_OPERATOR_LEADER_ELECT=true
LEASE_NAME = ENV_PREFIX + "_LEASE_NAME"
LEASE_NAMESPACE = ENV_PREFIX + "_LEASE_NAMESPACE"
LEASE_DURATION = ENV_PREFIX + "_LEASE_DURATION"
RENEW_DEADLINE = ENV_PREFIX + "_RENEW_DEADLINE"
RETRY_PERIOD = ENV_PREFIX + "_RETRY_PERIOD"
JITTER = 1.2  # client-go's JitterFactor: a standby retries every retry_period * [1, 1.2)
_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_clock() -> float:
    """Seconds on a clock that never jumps and keeps counting while the process is stopped or the machine sleeps."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class NotLeader(Exception):
    """A write was attempted by a replica that does not (or no longer) hold the Lease."""


@dataclass(frozen=True)
class LeaderElectionSettings:
    enabled: bool = False
    lease_name: str = "training-hub-operator"
    namespace: str = "default"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        found = []
        for variable, value in ((LEASE_DURATION, self.lease_duration), (RENEW_DEADLINE, self.renew_deadline),
                                (RETRY_PERIOD, self.retry_period)):
            if not value > 0:
                found.append(f"{variable}: must be > 0 seconds (got {value:g})")
        if self.lease_duration <= self.renew_deadline:
            found.append(f"{LEASE_DURATION} ({self.lease_duration:g}) must be greater than {RENEW_DEADLINE} "
                         f"({self.renew_deadline:g}): the leader must stop acting before a standby may take over")
        if self.renew_deadline <= JITTER * self.retry_period:
            found.append(f"{RENEW_DEADLINE} ({self.renew_deadline:g}) must be greater than {JITTER} x {RETRY_PERIOD} "
                         f"({self.retry_period:g}): the leader needs more than one try to renew")
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> "LeaderElectionSettings":
        """Environment, then `overrides` (the command-line flags; None = not given). Raises ValueError naming
        every bad variable."""
        problems: list[str] = []
        values: dict[str, Any] = {}

        def get(name: str) -> str:
            return environ.get(name, "").strip()

        if raw := get(ENABLED):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                problems.append(f"{ENABLED}: must be true or false (got {raw!r})")
            values["enabled"] = raw.lower() in ("true", "1", "yes")
        for variable, attribute in ((LEASE_DURATION, "lease_duration"), (RENEW_DEADLINE, "renew_deadline"),
                                    (RETRY_PERIOD, "retry_period")):
            if raw := get(variable):
                try:
                    values[attribute] = float(raw)
                except ValueError:
                    problems.append(f"{variable}: must be a number of seconds (got {raw!r})")
        if raw := get(LEASE_NAME):
            values["lease_name"] = raw
        values["namespace"] = get(LEASE_NAMESPACE) or get("POD_NAMESPACE") or _service_account_namespace() or "default"
        values.update({key: value for key, value in overrides.items() if value is not None})
        if not values.get("identity"):
            # Pod name (unique among live replicas) + a random part: a restarted container is a new contender.
            base = get("POD_NAME") or get("POD_ID") or socket.gethostname()
            values["identity"] = f"{base}_{uuid.uuid4().hex[:8]}"
        settings = cls(**values)
        problems += settings.problems() if not problems else []
        if problems:
            raise ValueError("invalid leader election settings:\n  - " + "\n  - ".join(problems))
        return settings


def _service_account_namespace() -> str | None:
    try:
        with open(_SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


class LeaseClient(Protocol):
    """The four calls on one Lease object (the real one is `KubeLeaseClient`; tests use an in-memory one)."""

    def get(self) -> dict[str, Any] | None: ...

    def create(self, spec: Mapping[str, Any]) -> dict[str, Any]: ...

    def replace(self, lease: Mapping[str, Any]) -> dict[str, Any]: ...  # raises LeaseConflict on 409

    def wait_for_change(self, resource_version: str | None, timeout: float) -> None: ...


class LeaseConflict(Exception):
    """Someone else created or updated the Lease first (HTTP 409)."""


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One contender. `run` (a thread) campaigns and renews; `is_leader` / `check_may_write` gate the writes."""

    def __init__(
        self,
        leases: LeaseClient,
        settings: LeaderElectionSettings,
        *,
        clock: Callable[[], float] = default_clock,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        on_started_leading: Callable[[], None] = lambda: None,
        on_stopped_leading: Callable[[], None] = lambda: None,
        on_leader_changed: Callable[[str], None] = lambda holder: None,
    ) -> None:
        self.leases = leases
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_leader_changed = on_leader_changed
        self._valid_until = -math.inf
        self._lock = threading.Lock()
        self._campaign_lock = threading.Lock()  # one Lease request sequence at a time: a renewal never races the release
        self._observed_spec: dict[str, Any] | None = None
        self._observed_time = -math.inf
        self._observed_version: str | None = None
        self._leading = False  # what the callbacks were last told
        self._holder = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def identity(self) -> str:
        return self.settings.identity

    @property
    def holder(self) -> str:
        """The leader as last seen in the Lease ('' when none)."""
        return self._holder

    def is_leader(self) -> bool:
        return self.clock() < self._valid_until

    def check_may_write(self) -> None:
        if not self.is_leader():
            raise NotLeader(f"{self.identity} does not hold the lease {self.settings.namespace}/{self.settings.lease_name}")

    # --- one step ----------------------------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """client-go's tryAcquireOrRenew: True when this replica holds the Lease after the call."""
        started = self.clock()  # validity counts from BEFORE the request: it may have landed any time after this
        now = _micro_time(self.wall_clock())
        me = self.identity
        lease = self.leases.get()
        duration = int(math.ceil(self.settings.lease_duration))
        if lease is None:
            spec = {"holderIdentity": me, "leaseDurationSeconds": duration, "acquireTime": now, "renewTime": now,
                    "leaseTransitions": 0}
            try:
                created = self.leases.create(spec)
            except LeaseConflict:
                return False
            self._observe(created, started)
            self._extend(started)
            return True
        spec = dict(lease.get("spec") or {})
        self._observe(lease, self.clock())
        holder = spec.get("holderIdentity") or ""
        expired = self.clock() >= self._observed_time + float(spec.get("leaseDurationSeconds") or duration)
        if holder and holder != me and not expired:
            return False
        new_spec = {
            **spec,
            "holderIdentity": me,
            "leaseDurationSeconds": duration,
            "renewTime": now,
            "acquireTime": spec.get("acquireTime") if holder == me else now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if holder == me else 1),
        }
        try:
            updated = self.leases.replace({**lease, "spec": new_spec})
        except LeaseConflict:
            return False
        self._observe(updated, started)
        self._extend(started)
        return True

    def _extend(self, started: float) -> None:
        with self._lock:
            if self._stop.is_set():
                return  # stopping: the Lease is about to be released, validity must not come back
            self._valid_until = max(self._valid_until, started + self.settings.renew_deadline)

    def _observe(self, lease: Mapping[str, Any], when: float) -> None:
        spec = dict(lease.get("spec") or {})
        self._observed_version = (lease.get("metadata") or {}).get("resourceVersion")
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_time = when
        holder = spec.get("holderIdentity") or ""
        if holder != self._holder:
            self._holder = holder
            log.info("leader is now %s", holder or "(none)", extra={"leader": holder, "identity": self.identity})
            self.on_leader_changed(holder)

    # --- the loop ----------------------------------------------------------------------------------------------

    def start(self) -> "LeaderElector":
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        log.info("leader election: %s campaigns for lease %s/%s", self.identity, self.settings.namespace,
                 self.settings.lease_name)
        while not self._stop.is_set():
            try:
                with self._campaign_lock:
                    if not self._stop.is_set():
                        self.try_acquire_or_renew()
            except Exception as error:  # noqa: BLE001 - an API error is a failed try; validity runs out on its own
                log.warning("leader election: cannot reach lease %s/%s: %s", self.settings.namespace,
                            self.settings.lease_name, error)
            self._notify()
            if self._stop.is_set():
                break
            self._wait()
        self._notify()

    def _notify(self) -> None:
        leading = self.is_leader() and not self._stop.is_set()
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("became leader: %s holds lease %s/%s", self.identity, self.settings.namespace,
                     self.settings.lease_name, extra={"leader": self.identity})
            self.on_started_leading()
        elif self._stop.is_set():
            log.info("stopped leading: %s is shutting down", self.identity)
            self.on_stopped_leading()
        else:
            log.warning("lost leadership: %s stops acting (lease %s/%s not renewed within %gs)", self.identity,
                        self.settings.namespace, self.settings.lease_name, self.settings.renew_deadline)
            self.on_stopped_leading()

    def _wait(self) -> None:
        """Leader: sleep one retry period (or less, so a failing renewal is noticed when validity ends).
        Standby: watch the Lease until it changes (released: act at once), it expires, or a jittered retry period."""
        now = self.clock()
        if self.is_leader():
            self._stop.wait(max(0.0, min(self.settings.retry_period, self._valid_until - now)))
            return
        period = self.settings.retry_period * random.uniform(1.0, JITTER)
        spec = self._observed_spec or {}
        if spec.get("holderIdentity"):
            expiry = self._observed_time + float(spec.get("leaseDurationSeconds") or self.settings.lease_duration)
            period = min(period, max(0.0, expiry - now) + 0.01)
        else:
            return  # no holder: try again right away (another contender may have won meanwhile; that is fine)
        if period <= 0.05:
            self._stop.wait(period)
            return
        try:
            self.leases.wait_for_change(self._observed_version, period)
        except Exception as error:  # noqa: BLE001 - fall back to sleeping
            log.debug("leader election: lease watch failed: %s", error)
            self._stop.wait(period)

    def stop(self, *, release: bool = True) -> None:
        """Stop acting at once, then (SIGTERM) hand the Lease back so a standby need not wait for it to expire.
        Does not wait for the thread (it may be in a watch of up to a retry period; it is a daemon)."""
        with self._lock:
            self._stop.set()
            self._valid_until = -math.inf
        if release:
            with self._campaign_lock:  # waits for a renewal in flight, which may have made us the holder
                self.release()

    def release(self) -> bool:
        try:
            lease = self.leases.get()
            spec = dict((lease or {}).get("spec") or {})
            if lease is None or spec.get("holderIdentity") != self.identity:
                return False
            now = _micro_time(self.wall_clock())
            # client-go's release: empty holder, 1 s duration, so every reader sees it free at once.
            self.leases.replace({**lease, "spec": {**spec, "holderIdentity": None, "leaseDurationSeconds": 1,
                                                   "renewTime": now, "acquireTime": now}})
            log.info("released lease %s/%s", self.settings.namespace, self.settings.lease_name)
            return True
        except Exception as error:  # noqa: BLE001 - the Lease then expires on its own
            log.warning("could not release lease %s/%s: %s", self.settings.namespace, self.settings.lease_name, error)
            return False


class KubeLeaseClient:
    """The Lease through the operator's API client (raw JSON, not gated: these are the leader election's own writes)."""

    def __init__(self, kube: Any, namespace: str, name: str, *, timeout: float = 5.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self._collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.kube.request("get", "GET", f"{self._collection}/{self.name}", timeout=self.timeout, gated=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        from kubernetes.client.rest import ApiException

        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "training-hub-operator"}},
                "spec": dict(spec)}
        try:
            return self.kube.request("create", "POST", self._collection, body=body, timeout=self.timeout, gated=False)
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflict(error.reason) from error
            raise

    def replace(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        from kubernetes.client.rest import ApiException

        try:  # PUT carries metadata.resourceVersion: the update is conditional
            return self.kube.request("update", "PUT", f"{self._collection}/{self.name}", body=dict(lease),
                                     timeout=self.timeout, gated=False)
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflict(error.reason) from error
            raise

    def wait_for_change(self, resource_version: str | None, timeout: float) -> None:
        """Block until the Lease changes after `resource_version` or `timeout` passes (a watch on this one object)."""
        from kubernetes import watch
        from kubernetes.client import CoordinationV1Api

        deadline = time.monotonic() + timeout
        stream = watch.Watch()
        try:
            for _event in stream.stream(
                CoordinationV1Api(self.kube.api_client).list_namespaced_lease,
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                resource_version=resource_version or None,
                timeout_seconds=max(1, int(math.ceil(timeout))),
                _request_timeout=timeout,
            ):
                return  # any change (renewal, release, takeover): look again
        except Exception as error:  # noqa: BLE001 - e.g. 410 Gone (too old a version), a read timeout
            log.debug("lease watch ended: %s", error)
        finally:
            stream.stop()
        remaining = deadline - time.monotonic()
        if remaining > 0.05:
            time.sleep(min(remaining, 0.5))  # the watch failed fast: do not spin
