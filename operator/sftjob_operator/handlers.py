"""kopf wiring: turn watch events into reconciliations of one SFTJob at a time.

Thin on purpose. Every trigger (an SFTJob event: create, update, resume after an operator restart; an event of
one of its pods; a resync tick; a time-based requeue) goes through `JobReconciler.trigger`, which coalesces
bursts of pod events (a gang start produces ~20; a new job is reconciled at once) and runs at most one
reconciliation per job at a time. One reconciliation: take the job's pods from the pod cache (pod_cache.py, fed by
the pod watch; a LIST only when the cache cannot be trusted), call the pure `reconcile.reconcile`, patch the status
(conditionally on the job's resourceVersion), then apply the actions (the pods of a gang concurrently), then post
the events. No GET of the Service/ConfigMap it creates (a create answered 409 is read, then compared), no log read
before rank 0 has run for a progress interval: a gang start costs its creates, one status patch and one event
(docs/operator.md, "API requests per job start").

Status is patched BEFORE actions: the status is the operator's memory (attempt, restarts), so a crash between
the two must leave a state from which the next reconciliation redoes the actions, never one that forgets a
counted failure. The one exception is a status that only says "creating" (creates only, no memory changed): it is
left to the reconciliation that sees the created pods, since a crash in between forgets nothing. No finalizers:
everything the operator creates carries an owner reference to the SFTJob, and the garbage collector deletes it with
the job. The handlers never write to spec.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from kubernetes.client.rest import ApiException

from sftjob_operator import labels
from sftjob_operator import reconcile as rc
from sftjob_operator import status as st
from sftjob_operator.kube import GROUP, PLURAL, VERSION, ClientTransport, Conflict, Kube, transport_for
from sftjob_operator.orphans import OrphanSweeper
from sftjob_operator.pod_cache import PodCache, newer as _newer
from sftjob_operator.watch_health import WatchCollector, WatchHealth, is_connection_error
from sftjob_operator.leader import KubeLeaseClient, LeaderElectionSettings, LeaderElector, NotLeader

log = logging.getLogger("sftjob_operator")
COMPONENT = "sftjob-operator"

JobKey = tuple[str, str]  # (namespace, name)


BURST_GAP_SECONDS = 0.5  # new jobs this close together are one burst (JobReconciler._note_arrival)


TRANSPORTS = ("direct", "client")


@dataclass
class RuntimeSettings:
    """Timing of the wiring itself (env-overridable: SFTJOB_OPERATOR_RESYNC_SECONDS, ..._DEBOUNCE_SECONDS)."""

    resync_seconds: float = 60.0  # every unfinished job is looked at least this often (from the watches' cache)
    # ... and its body and pods are read from the API server at least this often, whatever watch events were missed
    # (spread over a resync period: 1,000 jobs are 2,000 reads, not one burst of them). Also the orphan sweep's period.
    reread_seconds: float = 600.0
    debounce_seconds: float = 0.2  # pod events for one job within this window cause one reconciliation
    # A status write that only reports progress within a phase (rc.status_only_reports) waits until this long after
    # the job's previous write; phase changes, remembered state and events are written at once.
    status_report_seconds: float = 2.0
    # While jobs created meanwhile wait for their first look (their gang's creates), the looks at other jobs wait, up
    # to this long: a burst of new jobs gets its pods first, and the API server's time is theirs; the others'
    # reports and progress follow. 0: no waiting.
    starts_first_seconds: float = 5.0
    workers: int = 16  # threads doing API calls (jobs reconciled in parallel)
    error_retry_seconds: float = 5.0
    # How requests travel (kube.py): "direct", keep-alive connections of the standard library; "client", through
    # the kubernetes client's urllib3 pool, twice the CPU per request (the way back, should direct not suit a setup).
    api_transport: str = "direct"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "RuntimeSettings":
        values: dict[str, Any] = {}
        for name, attribute, kind in (
            ("SFTJOB_OPERATOR_RESYNC_SECONDS", "resync_seconds", float),
            ("SFTJOB_OPERATOR_REREAD_SECONDS", "reread_seconds", float),
            ("SFTJOB_OPERATOR_DEBOUNCE_SECONDS", "debounce_seconds", float),
            ("SFTJOB_OPERATOR_STATUS_REPORT_SECONDS", "status_report_seconds", float),
            ("SFTJOB_OPERATOR_STARTS_FIRST_SECONDS", "starts_first_seconds", float),
            ("SFTJOB_OPERATOR_WORKERS", "workers", int),
            ("SFTJOB_OPERATOR_ERROR_RETRY_SECONDS", "error_retry_seconds", float),
        ):
            raw = environ.get(name, "").strip()
            if raw:
                try:
                    values[attribute] = kind(raw)
                except ValueError:
                    what = "a whole number" if kind is int else "a number of seconds"
                    raise ValueError(f"{name}: must be {what} (got {raw!r})") from None
        transport = environ.get("SFTJOB_OPERATOR_API_TRANSPORT", "").strip()
        if transport:
            if transport not in TRANSPORTS:
                raise ValueError(f"SFTJOB_OPERATOR_API_TRANSPORT: must be one of {', '.join(TRANSPORTS)} (got {transport!r})")
            values["api_transport"] = transport
        return cls(**values)


def reconcile_policy_from_env(environ: Mapping[str, str] = os.environ) -> rc.ReconcilePolicy:
    values: dict[str, float] = {}
    for name, attribute in (
        ("SFTJOB_OPERATOR_RESTART_BACKOFF_SECONDS", "restart_backoff_seconds"),
        ("SFTJOB_OPERATOR_RESTART_BACKOFF_MAX_SECONDS", "restart_backoff_max_seconds"),
        ("SFTJOB_OPERATOR_PROGRESS_INTERVAL_SECONDS", "progress_interval_seconds"),
        ("SFTJOB_OPERATOR_RECHECK_SECONDS", "recheck_seconds"),
        ("SFTJOB_OPERATOR_QUEUED_RECHECK_SECONDS", "queued_recheck_seconds"),
    ):
        raw = environ.get(name, "").strip()
        if raw:
            try:
                values[attribute] = float(raw)
            except ValueError:
                raise ValueError(f"{name}: must be a number of seconds (got {raw!r})") from None
            if values[attribute] < 0:
                raise ValueError(f"{name}: must be >= 0 (got {raw!r})")
    return rc.ReconcilePolicy(**values)


_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _kept(job: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The job as the reconciler keeps it between looks: without managedFields and kubectl's copy of the last
    applied manifest (each about as big as the rest; nothing reads them). 1,000 jobs: a few MiB less."""
    if job is None:
        return None
    meta = job.get("metadata") or {}
    if "managedFields" not in meta and _LAST_APPLIED not in (meta.get("annotations") or {}):
        return dict(job)
    meta = {key: value for key, value in meta.items() if key != "managedFields"}
    if _LAST_APPLIED in (meta.get("annotations") or {}):
        meta["annotations"] = {key: value for key, value in meta["annotations"].items() if key != _LAST_APPLIED}
    return {**job, "metadata": meta}


def _api_message(error: ApiException) -> str:
    """The API server's own words (a Status object's message names the invalid field)."""
    import json

    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.body or error.reason)


def _api_error_text(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status}: {_api_message(error)}"
    return f"{type(error).__name__}: {error}"


@dataclass
class _JobState:
    # The job as the watch (or our own patch) last delivered it, as compact JSON: 1,000 jobs kept as nested dicts
    # are ~10 MiB of long-lived small objects (2.4 KiB of JSON each, 10.7 KiB as dicts); `body` decodes per look.
    packed: bytes | None = None
    version: str | None = None  # its resourceVersion
    uid: str | None = None
    phase: str | None = None  # its status.phase (the jobs-by-phase metric reads it at every scrape)
    written_resource_version: str | None = None  # the status patch we made last: its watch echo needs no work
    due: float | None = None  # loop time of the scheduled reconciliation
    handle: asyncio.TimerHandle | None = None
    running: bool = False
    again: bool = False  # a trigger arrived while running
    quiet: bool = False  # finished/suspended with nothing left to do: only events wake it (not the resync)
    refresh: bool = False  # read the job from the API instead of the cached body (resync: a missed DELETED)
    errors: int = 0  # failed reconciliations in a row (their retries back off)
    # The pod cache's listing (PodCache.listings) from which this job's cached pods are complete; None: LIST first.
    pods_trusted_since: int | None = None
    # The Service/ConfigMap this process created (or found) for gang attempt `shared[0]`: (attempt, service exists,
    # ConfigMap as found). Saves reading them back while a gang is being built.
    shared: tuple[int, bool, dict[str, Any] | None] | None = None
    progress_clock: tuple[str, float] | None = None  # (rank-0 pod uid, monotonic time its log was last due/read)
    status_written_at: float | None = None  # monotonic time of this process's last status write for the job
    # Created while this process watched (its ADDED event) and no gang created yet: its first gang's Service,
    # ConfigMap and pods are created all at once (see _apply).
    fresh: bool = False
    postponed_since: float | None = None  # loop time since which this job's look waits for new jobs' first looks

    @classmethod
    def holding(cls, body: Mapping[str, Any] | None) -> "_JobState":
        state = cls()
        state.body = body
        return state

    @property
    def body(self) -> dict[str, Any] | None:
        return None if self.packed is None else json.loads(self.packed)

    @body.setter
    def body(self, job: Mapping[str, Any] | None) -> None:
        job = _kept(job)
        self.packed = None if job is None else json.dumps(job, separators=(",", ":")).encode()
        self.version = None if job is None else job["metadata"].get("resourceVersion")
        self.uid = None if job is None else job["metadata"].get("uid")
        self.phase = None if job is None else (job.get("status") or {}).get("phase")


@dataclass
class JobReconciler:
    kube: Kube
    config: Any
    policy: rc.ReconcilePolicy = field(default_factory=rc.ReconcilePolicy)
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    metrics: Any = None
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    # Leader election (leader.py): a standby keeps its cache of jobs warm but reconciles nothing. None: always act.
    is_leader: Callable[[], bool] | None = None
    namespaces: tuple[str, ...] = ()  # the watched ones (empty: cluster-wide); swept for pods of deleted jobs

    def __post_init__(self) -> None:
        self.jobs: dict[JobKey, _JobState] = {}
        self.pod_cache = PodCache()
        self.executor = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="reconcile")
        # The pods of a gang are created concurrently, in threads of their own (a reconcile thread waits for them).
        self.creators = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="create")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False
        self._background: list[asyncio.Future] = []
        self.sweeper: OrphanSweeper | None = None  # started with the event loop (register.configure)
        self._jobs_streaming = False  # the SFTJob watch delivered live events since its last listing
        self._relist_resync: asyncio.TimerHandle | None = None
        self._first_looks: set[JobKey] = set()  # jobs created while watched, their first look not done yet
        self._postponed: set[JobKey] = set()  # looks waiting for those (_waits_for_starts)
        self._last_arrival = float("-inf")  # loop time of the last job created while watched
        self._burst_until = float("-inf")  # new jobs keep arriving (a burst) until then: _note_arrival
        self._release: asyncio.TimerHandle | None = None

    # --- triggers (event loop) ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop scheduling; let the reconciliations in flight finish (their actions are idempotent anyway)."""
        self.closing = True
        for state in self.jobs.values():
            if state.handle is not None:
                state.handle.cancel()
        for task in self._background:
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.creators.shutdown(wait=False, cancel_futures=True)

    def active(self) -> bool:
        return self.is_leader is None or self.is_leader()

    def lead(self) -> None:
        """Just became the leader: reconcile every known job now (the old leader may have left work half done)."""
        log.info("leading: reconciling all %d known SFTJobs", len(self.jobs))
        for key, state in list(self.jobs.items()):
            state.quiet = False
            state.pods_trusted_since = None  # LIST once: the old leader's writes may not all have reached our watch
            state.shared = None
            self.trigger(key)

    def stand_by(self) -> None:
        """Lost (or gave up) the lease: drop every scheduled reconciliation; the write gate stops those in flight."""
        for state in self.jobs.values():
            if state.handle is not None:
                state.handle.cancel()
            state.handle, state.due, state.again = None, None, False

    def known_job_uids(self) -> set[str]:
        """Thread-safe (the orphan sweep's thread): the uids of the jobs the job watch delivered."""
        return {state.uid for state in list(self.jobs.values()) if state.uid}

    def phases(self):
        for state in list(self.jobs.values()):
            if state.packed is not None:
                yield state.phase or st.PENDING

    def job_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """An SFTJob was listed, added, modified (spec, status, metadata) or deleted."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type is None and self._jobs_streaming:
            self._watch_relisted()  # a job deleted in the gap sends no DELETED: look at every job
        self._jobs_streaming = event_type is not None
        if event_type == "DELETED":
            state = self.jobs.pop(key, None)
            if state and state.handle:
                state.handle.cancel()
            self._first_look_done(key)
            self._delete_gang_of_deleted(key, meta.get("uid"))
            return
        state = self.jobs.get(key)
        if state is None:
            state = self.jobs[key] = _JobState()
            if event_type == "ADDED":
                # Created while this process watches: every pod it will have, the pod watch delivers (or a create
                # answers). A job found by a listing (type None) may have pods from before: its first look LISTs.
                state.pods_trusted_since = self.pod_cache.listings
                state.fresh = True
                if self.active():
                    self._first_looks.add(key)
                    self._note_arrival()
        version = meta.get("resourceVersion")
        if state.packed is not None and not _newer(version, state.version):
            return  # an old event (our own status patch already gave us a newer body) or the echo of our patch
        state.body = body
        if version and version == state.written_resource_version:
            return
        state.quiet = False
        self.trigger(key)

    def _delete_gang_of_deleted(self, key: JobKey, uid: str | None) -> None:
        """The job is gone: delete its pods now rather than wait for the garbage collector, whose view of the CRD
        lags for up to minutes after an API-server restart (the pods would hold their GPUs meanwhile). Only pods
        owned by this uid: a new job of the same name keeps its own."""
        if not uid or self.closing or not self.active():  # a standby leaves it to the leader
            return
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop

        def delete() -> None:
            try:
                deleted = self.kube.delete_owned_pods(key[0], key[1], uid)
            except NotLeader:
                return  # lost the lease meanwhile: the new leader (or the garbage collector) does it
            except Exception as error:  # noqa: BLE001 - the garbage collector remains the fallback
                if not is_connection_error(error):
                    log.warning("%s/%s: deleting the pods of the deleted job failed: %s", *key, _api_error_text(error))
                return
            if deleted:
                log.info("%s/%s: job deleted; deleted its %d pod(s)", *key, deleted)

        loop.run_in_executor(self.executor, delete)

    def _watch_relisted(self) -> None:
        """kopf lists again after a broken watch or a 410 Gone: what was deleted in the gap sent no event. Resync
        every job once the listing is through (a second: resync_all spreads its reads over one)."""
        if self.closing or self._relist_resync is not None:
            return
        loop = self._loop or asyncio.get_running_loop()

        def resync() -> None:
            self._relist_resync = None
            self.resync_all()

        self._relist_resync = loop.call_later(1.0, resync)

    def resync_soon(self) -> None:
        """Thread-safe: reconcile every job now, and sweep the pods of jobs deleted meanwhile (the API server is
        back after an outage: a job deleted before kopf's watch re-lists yields no DELETED event)."""
        if self._loop is not None and not self.closing:
            self._loop.call_soon_threadsafe(self.resync_all)
            if self.sweeper is not None:
                self.sweeper.wake()

    def pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A pod was listed (type None), added, modified or deleted: into the cache, then a (debounced) look."""
        listings = self.pod_cache.listings
        key = self.pod_cache.observe(event_type, body)
        if self.pod_cache.listings != listings:
            self._watch_relisted()  # every job LISTs its pods on its next look; a job whose pods all went, too
        if key is None:
            return
        state = self.jobs.get(key)
        if state is not None:
            state.quiet = False
        elif not rc.may_hold_its_group(body):
            # A pod of a job this process does not know: deleted (its DELETED came first: a mass delete brings one
            # event per pod, and a look at each would be a GET and a LIST of a job that is gone), or not yet
            # listed (its listing triggers the look). Orphans of a deletion no watch saw: the orphan sweep.
            return
        self.trigger(key, delay=self.settings.debounce_seconds)

    def pods_listed(self) -> None:
        """The pod watch finished a listing; one that brought no pod at all is noticed here (see pod_event)."""
        if self.pod_cache.listed():
            self._watch_relisted()

    def resync_all(self, *, reread: bool = True, spread: float = 1.0) -> None:
        """Look at every unfinished job again; `reread`: reading the job and its pods from the API server first.
        Spread over `spread` seconds, so a resync of thousands of jobs is not one burst of reads."""
        keys = [key for key, state in self.jobs.items() if not state.quiet]
        if reread:
            for key in keys:
                self.jobs[key].refresh = True
        for index, key in enumerate(keys):
            self.trigger(key, delay=spread * index / max(1, len(keys)))

    def trigger(self, key: JobKey, delay: float = 0.0) -> None:
        if self.closing or not self.active():
            return
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        state = self.jobs.setdefault(key, _JobState())
        # While a reconciliation runs, the timer's run marks it `again` (run right after): a delayed trigger (pod
        # events) stays delayed, so the echoes of a gang's own creates are one look, not one look each.
        self._schedule(state, key, delay)

    def _schedule(self, state: _JobState, key: JobKey, delay: float) -> None:
        loop = self._loop
        due = loop.time() + max(0.0, delay)
        if state.handle is not None and state.due is not None and state.due <= due:
            return  # an earlier (or same) run is already scheduled: it will see this change too
        if state.handle is not None:
            state.handle.cancel()
        state.due = due
        state.handle = loop.call_at(due, lambda: asyncio.ensure_future(self._run(key)))

    async def _run(self, key: JobKey) -> None:
        state = self.jobs.get(key)
        if state is None or self.closing or not self.active():
            return
        state.handle, state.due = None, None
        if state.running:
            state.again = True
            return
        if self._waits_for_starts(key, state):
            return
        state.running = True
        requeue: float | None = None
        try:
            requeue = await asyncio.get_running_loop().run_in_executor(self.executor, self.reconcile_now, key)
        except NotLeader as refused:
            log.info("%s/%s: write refused, not the leader (%s)", *key, refused)
            requeue = None
        except Exception as error:  # noqa: BLE001 - one job's error must never stop the others
            requeue = self._retry_delay(state)
            if is_connection_error(error):
                pass  # already logged, one line, by the failing call (kube.Kube.request)
            elif isinstance(error, ApiException):
                log.warning("%s/%s: %s; retrying in %.0f s", *key, _api_error_text(error), requeue)
            else:
                log.exception("reconciling %s/%s failed (a bug); retrying in %.0f s", *key, requeue)
        finally:
            state.running = False
            self._first_look_done(key)
        if key not in self.jobs or self.closing:
            return
        if not self.active():
            return
        if state.again:
            state.again = False
            self._schedule(state, key, 0)
        if requeue is not None:
            self._schedule(state, key, requeue)

    def _waits_for_starts(self, key: JobKey, state: _JobState) -> bool:
        """Whether this look waits (rescheduled) while jobs created meanwhile wait for their first look: a burst of
        new jobs gets its gangs created first. At most `starts_first_seconds`; released as soon as they are done."""
        bound = self.settings.starts_first_seconds
        now = self._loop.time()
        if bound <= 0 or key in self._first_looks or not (self._first_looks or now < self._burst_until):
            state.postponed_since = None
            return False
        if state.postponed_since is None:
            state.postponed_since = now
        left = state.postponed_since + bound - now
        if left <= 0:
            state.postponed_since = None
            return False
        self._postponed.add(key)
        self._schedule(state, key, left)
        self._release_postponed()  # at the burst's end, if no first look is pending by then
        return True

    def _note_arrival(self) -> None:
        """A job created while watched. Two within BURST_GAP_SECONDS make a burst, which lasts until that long after
        the last one: between arrivals the first looks may all be done, and the others still wait (a single new job
        makes no one wait once its first look is done)."""
        now = self._loop.time() if self._loop is not None else asyncio.get_running_loop().time()
        if now - self._last_arrival < BURST_GAP_SECONDS:
            self._burst_until = now + BURST_GAP_SECONDS
        self._last_arrival = now

    def _first_look_done(self, key: JobKey) -> None:
        if key not in self._first_looks:
            return
        self._first_looks.discard(key)
        self._release_postponed()

    def _release_postponed(self) -> None:
        """The waiting looks go once no first look is pending and the burst is over."""
        if self._first_looks or not self._postponed or self._release is not None or self.closing:
            return
        loop = self._loop
        if loop.time() < self._burst_until:
            def again() -> None:
                self._release = None
                self._release_postponed()

            self._release = loop.call_at(self._burst_until, again)
            return
        postponed, self._postponed = self._postponed, set()
        for waiting in postponed:
            if waiting in self.jobs:
                self.trigger(waiting)

    def _retry_delay(self, state: _JobState) -> float:
        """Exponential backoff after failed reconciliations: error_retry_seconds, doubling, at most 16x."""
        state.errors += 1
        return self.settings.error_retry_seconds * 2 ** min(4, state.errors - 1)

    # --- one reconciliation (worker thread) --------------------------------------------------------------------

    def reconcile_now(self, key: JobKey) -> float | None:
        """Reconcile one job; returns seconds until the next time-based look (None: wait for events)."""
        started = time.perf_counter()
        namespace, name = key
        state = self.jobs.setdefault(key, _JobState())
        job = None if state.refresh else state.body
        known_uid = None
        if job is None:
            state.refresh = False
            known_uid = state.uid
            state.pods_trusted_since = None  # a resync reads the pods from the API server too
            job = _kept(self.kube.get_job(namespace, name))
            state.body = job
        if job is None:
            self.jobs.pop(key, None)
            if known_uid:  # a DELETED event we missed (only the uid we knew: a newer job of the name keeps its pods)
                self.kube.delete_owned_pods(namespace, name, known_uid)
            self._release_orphans(namespace, name)
            return None
        try:
            for _ in range(3):
                try:
                    return self._reconcile_once(state, job)
                except Conflict:
                    # The job changed since we read it (spec edit, or a stale cached body): read again, decide again.
                    job = _kept(self.kube.get_job(namespace, name))
                    if job is None:
                        self.jobs.pop(key, None)
                        return None
                    state.body = job
            return self.settings.error_retry_seconds
        finally:
            if self.metrics is not None:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def _release_orphans(self, namespace: str, name: str) -> None:
        """Pods of a deleted job (the garbage collector deletes them): a Kueue group none of whose pods got a node is
        released by deleting its Workload, since no kubelet will ever end those pods. Bound pods end on their nodes
        and, not retriable, finish their group by themselves."""
        for group in rc.unadmitted_groups(self.kube.list_job_pods(namespace, name)):
            self.kube.delete_workload(namespace, group)

    def _pods(self, state: _JobState, key: JobKey) -> tuple[list[dict[str, Any]], bool]:
        """The job's pods (slim) and whether they were just LISTed; from the cache when it can be trusted."""
        listing = self.pod_cache.listings
        if state.pods_trusted_since == listing:
            return self.pod_cache.pods(key), False
        items, version = self.kube.list_job_pods_at(*key)
        pods = self.pod_cache.replace(key, items, version)
        state.pods_trusted_since = listing
        return pods, True

    def _shared_objects(self, state: _JobState, attempt: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(Service, ConfigMap) as this process created or found them for this gang attempt; None: create it (a
        409 then says it exists, and the ConfigMap is read to compare)."""
        if state.shared is None or state.shared[0] != attempt:
            return None, None
        return ({} if state.shared[1] else None), state.shared[2]

    def _progress_log(self, state: _JobState, job: Mapping[str, Any], pods: list[dict[str, Any]]) -> str | None:
        """Rank 0's log tail when a progress record can be due: not before it has run one progress interval, then
        once per interval (a log read before training printed anything is a wasted request)."""
        name = rc.progress_pod_name(job, pods)
        pod = next((p for p in pods if p["metadata"]["name"] == name), None) if name else None
        if pod is None:
            state.progress_clock = None
            return None
        uid, now = pod["metadata"].get("uid", ""), time.monotonic()
        if state.progress_clock is None or state.progress_clock[0] != uid:
            state.progress_clock = (uid, now)  # first seen running: its first record is an interval away
            return None
        if now - state.progress_clock[1] < 0.9 * self.policy.progress_interval_seconds:  # timers fire a bit early
            return None
        state.progress_clock = (uid, now)
        return self.kube.read_log_tail(job["metadata"]["namespace"], name)

    def _reconcile_once(
        self, state: _JobState, job: dict[str, Any], rejection: "rc.Rejection | None" = None, *, redone: bool = False
    ) -> float | None:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        key = (namespace, name)
        old_status = job.get("status") or {}
        pods, listed = self._pods(state, key)
        service = configmap = {}
        attempt = int(old_status.get("attempt") or 0)
        gang_started = any(rc.pod_attempt(pod) == attempt and not labels.is_prepare_pod(pod) for pod in pods)
        building = (
            old_status.get("phase") not in st.FINISHED_PHASES
            and not st.condition_is_true(old_status.get("conditions"), st.CREATED)
            and not gang_started
        )
        # Needed only before a gang's first pod is created: the Service and ConfigMap are created with or before the
        # pods (and the ConfigMap must match the spec then: _apply); once a pod exists they are known to exist.
        if building:
            service, configmap = self._shared_objects(state, attempt)
        now = self.clock()
        log_tail = self._progress_log(state, job, pods)
        workload = None
        held = [pod for pod in pods if rc.pod_attempt(pod) == attempt and rc.kueue_gated(pod)]
        if held and old_status.get("phase") not in st.FINISHED_PHASES and rc.pod_group(held[0]):
            workload = self.kube.get_workload(namespace, rc.pod_group(held[0]))  # why Kueue holds the gang
        observed = rc.Observed(pods=pods, service=service, configmap=configmap, rank0_log_tail=log_tail, rejection=rejection,
                               workload=workload)
        result = rc.reconcile(job, observed, now, self.config, self.policy)
        if not listed and rc.decides_for_good(old_status, result):
            # Restarting or ending a gang is not undone: decide it from a LIST, never from a cache a lost event
            # left behind.
            state.pods_trusted_since = None
            return self._reconcile_once(state, job, rejection, redone=redone)

        patch = rc.status_patch(old_status, result.status)
        deferred = patch is not None and rc.status_can_wait(old_status, result)
        held = self._report_wait(state) if patch is not None and rc.status_only_reports(old_status, result) else None
        if patch is not None and not deferred and held is None:
            updated = self.kube.patch_job_status(namespace, name, patch, resource_version=job["metadata"].get("resourceVersion"))
            if updated is None:  # deleted meanwhile
                return None
            state.body = job = _kept(updated)
            state.written_resource_version = updated["metadata"].get("resourceVersion")
            state.status_written_at = time.monotonic()
        for event in result.events:
            self.kube.post_event(job, event.type, event.reason, event.message, component=COMPONENT)
        if result.restarted_for is not None and self.metrics is not None:
            failure = result.restarted_for
            self.metrics.restarts.labels(reason=failure.reason, counted=str(failure.counted).lower()).inc()
        failed, configmap_differs = self._apply(state, job, attempt, result.actions)
        if key not in self.jobs and any(isinstance(action, rc.CreateObject) for action in result.actions):
            # The job was deleted while its objects were being created (no status write stood in between).
            self.kube.delete_owned_pods(namespace, name, job["metadata"].get("uid"))
            return None
        if failed is not None:
            action, error = failed
            rejection = rc.Rejection.of(action, error.status, _api_message(error)) if isinstance(error, ApiException) else None
            if rejection is not None:
                # Permanent (HTTP 400/422): the spec can never produce this object. Fail the job, no retry loop.
                return self._reconcile_once(state, job, rejection=rejection)
            self._record_action_error(state, job, action, error)
            return self._retry_delay(state)
        if configmap_differs and not redone:
            # The ConfigMap existed with other data (parameters changed between gangs): decide again with it.
            return self._reconcile_once(state, job, rejection, redone=True)
        state.errors = 0
        for action in result.actions:
            if isinstance(action, rc.DeleteJob):
                return None
        state.quiet = (
            not result.actions
            and result.requeue_after is None
            and result.status.get("phase") in (*st.FINISHED_PHASES, st.SUSPENDED)
        )
        if deferred:
            # The look that writes the status: when the creates' watch events arrive (they usually come first and
            # coalesce with it), and at the latest after the debounce.
            return min(result.requeue_after or self.settings.debounce_seconds, self.settings.debounce_seconds)
        if held is not None:
            state.quiet = False
            return held if result.requeue_after is None else min(result.requeue_after, held)  # that look writes it
        return result.requeue_after

    def _report_wait(self, state: _JobState) -> float | None:
        """Seconds until a status that only reports may be written (None: now)."""
        if state.status_written_at is None:
            return None
        left = state.status_written_at + self.settings.status_report_seconds - time.monotonic()
        return left if left > 0.01 else None

    def _apply(
        self, state: _JobState, job: Mapping[str, Any], attempt: int, actions: list[rc.Action]
    ) -> tuple[tuple[rc.Action, Exception] | None, bool]:
        """Apply the actions in order; consecutive creates of pods run concurrently (as do the Service's and the
        ConfigMap's, before them). Returns (the first failure, whether an existing ConfigMap differs from the
        rendered one); a failure stops the actions after its batch.

        The first gang of a job created while this process watched (`fresh`) is one concurrent batch, Service,
        ConfigMap and pods: one round trip instead of two. Its ConfigMap can only exist already if a deleted job of
        the same name left it behind (the garbage collector had not removed it yet); if its data differ, they are
        replaced at once, while the pods created in the same instant are at best being scheduled (no container can
        have read them)."""
        namespace = job["metadata"]["namespace"]
        together = state.fresh and attempt == 0
        state.fresh = False
        index = 0
        while index < len(actions):
            action = actions[index]
            if isinstance(action, rc.CreateObject):
                tier = action.kind == "Pod"
                batch = [action]
                while index + len(batch) < len(actions):
                    following = actions[index + len(batch)]
                    if not isinstance(following, rc.CreateObject) or (not together and (following.kind == "Pod") != tier):
                        break
                    batch.append(following)
                index += len(batch)
                if len(batch) == 1:
                    outcomes = [self._create(namespace, batch[0])]
                else:
                    outcomes = list(self.creators.map(lambda create: self._create(namespace, create), batch))
                failures = [(create, outcome) for create, outcome in zip(batch, outcomes) if isinstance(outcome, Exception)]
                for create, outcome in zip(batch, outcomes):
                    if not isinstance(outcome, Exception):
                        self._created(state, attempt, namespace, create, outcome)
                for _, outcome in failures:
                    if not isinstance(outcome, ApiException):
                        raise outcome  # not the leader, no connection: as a sequential create would (see _run)
                if failures:
                    if self.metrics is not None:
                        for create, _ in failures:
                            self.metrics.reconcile_errors.labels(kind="CreateObject").inc()
                    # A permanent rejection decides the job's fate: report it before a transient error.
                    permanent = [f for f in failures if isinstance(f[1], ApiException) and rc.Rejection.of(f[0], f[1].status, "")]
                    return (permanent or failures)[0], False
                if any(create.kind == "ConfigMap" and outcome is None for create, outcome in zip(batch, outcomes)):
                    found = (state.shared or (attempt, False, None))[2] or {}
                    create = next(create for create in batch if create.kind == "ConfigMap")
                    desired = create.body.get("data") or {}
                    if dict(found.get("data") or {}) != dict(desired):
                        if not any(create.kind == "Pod" for create in batch):
                            return None, True  # decided again: the data are replaced before any pod is created
                        try:
                            self.kube.replace_configmap_data(namespace, create.name, desired, current=found)
                        except ApiException as error:
                            return (rc.ReplaceConfigMapData(create.name, desired), error), False
                        state.shared = (attempt, (state.shared or (attempt, False, None))[1], {"data": dict(desired)})
                continue
            index += 1
            try:
                if isinstance(action, rc.ReplaceConfigMapData):
                    shared = state.shared if state.shared is not None and state.shared[0] == attempt else None
                    self.kube.replace_configmap_data(namespace, action.name, action.data, current=shared[2] if shared else None)
                    state.shared = (attempt, bool(shared and shared[1]), {"data": dict(action.data)})
                elif isinstance(action, rc.DeletePod):
                    if not self.kube.delete_pod(namespace, action.name, action.uid, force=action.force):
                        self.pod_cache.gone(namespace, job["metadata"]["name"], action.name, action.uid)
                elif isinstance(action, rc.DeleteJob):
                    self.kube.delete_job(namespace, action.name, action.uid)
                elif isinstance(action, rc.DeleteWorkload):
                    self.kube.delete_workload(namespace, action.name)
            except ApiException as error:
                if self.metrics is not None:
                    self.metrics.reconcile_errors.labels(kind=type(action).__name__).inc()
                return (action, error), False
        return None, False

    def _create(self, namespace: str, action: rc.CreateObject) -> dict[str, Any] | None | Exception:
        """One create: the created object, None when it existed (409), or the error (raised in a creator thread, it
        is handled or re-raised by the reconcile thread, as a sequential create's)."""
        try:
            return self.kube.create(namespace, action.body)
        except Exception as error:  # noqa: BLE001 - handed back to _apply, which reports or re-raises it
            return error

    def _created(self, state: _JobState, attempt: int, namespace: str, action: rc.CreateObject, created: dict[str, Any] | None) -> None:
        """Remember what a create found: the pod (into the cache, before its watch event), the Service and ConfigMap
        (for this gang attempt); a pod that already existed means the cache missed it: LIST next time."""
        known = state.shared if state.shared is not None and state.shared[0] == attempt else (attempt, False, None)
        if action.kind == "Pod":
            if created is not None:
                self.pod_cache.put(created)
            else:
                state.pods_trusted_since = None
        elif action.kind == "Service":
            state.shared = (attempt, True, known[2])
        elif action.kind == "ConfigMap":
            if created is None:
                created = self.kube.get_configmap(namespace, action.name)  # exists: compared by _apply
            state.shared = (attempt, known[1], {"data": dict((created or {}).get("data") or {})} if created is not None else None)

    def _record_action_error(self, state: _JobState, job: Mapping[str, Any], action: rc.Action, error: Exception) -> None:
        """A failed create/delete becomes a visible condition (never a silent stall), then a retry."""
        if isinstance(action, rc.CreateObject):
            what = f"creating {action.kind} {action.name}"
        else:
            what = f"{type(action).__name__} {getattr(action, 'name', '')}"
        message = f"{what} failed: {_api_error_text(error)}"
        log.warning("%s/%s: %s", job["metadata"]["namespace"], job["metadata"]["name"], message)
        old = job.get("status") or {}
        if st.condition_is_true(old.get("conditions"), st.CREATED) and not isinstance(action, rc.CreateObject):
            self.kube.post_event(job, "Warning", "ActionFailed", message, component=COMPONENT)
            return
        conditions = st.set_condition(
            old.get("conditions"),
            st.CREATED,
            False,
            "CreateFailed",
            message,
            now=self.clock(),
            generation=job["metadata"].get("generation"),
        )
        try:
            updated = self.kube.patch_job_status(
                job["metadata"]["namespace"],
                job["metadata"]["name"],
                {"conditions": conditions},
                resource_version=job["metadata"].get("resourceVersion"),
            )
        except Conflict:
            state.body = None
            return
        if updated is not None:
            state.body = _kept(updated)
            state.written_resource_version = updated["metadata"].get("resourceVersion")
        self.kube.post_event(job, "Warning", "CreateFailed", message, component=COMPONENT)


# ---------------------------------------------------------------------------------------------------------------
# kopf registration


def _no_diffbase_storage():
    """kopf computes every object's "essence" (a deep copy) on every event to detect changes for on.create/update
    handlers. This operator has none (level-based: it reads the whole state each time), so the essence is never
    used; skipping it halves kopf's CPU per event (measured: 2.1 of 4.2 s for 761 events of a 50-gang start)."""
    import kopf

    class NoDiffBaseStorage(kopf.DiffBaseStorage):
        def build(self, *, body: Any, extra_fields: Any = None) -> Any:
            return {}

        def fetch(self, *, body: Any) -> Any:
            return None

        def store(self, *, body: Any, patch: Any, essence: Any) -> None:
            return None

    return NoDiffBaseStorage()


def register(
    registry,
    reconciler: JobReconciler,
    health: WatchHealth | None = None,
    insights: Any = None,
    elector: LeaderElector | None = None,
    stop_flag: Any = None,
) -> None:
    """Register the handlers on a kopf registry (kept out of module import so tests can build their own).

    With `health` and `insights` (the kopf Insights given to kopf.run), start-up waits until the API server
    serves SFTJobs, a watchdog keeps the watches established, and the `watches` probe fails while they are not
    (see watch_health). With `elector` (leader election, leader.py), the replica campaigns from start-up on and
    SIGTERM releases the Lease before kopf stops (`stop_flag` is kopf's: set once the Lease is released)."""
    import kopf

    from sftjob_operator import pod_watch, watch_health

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf keeps no per-object state for on.event handlers; make sure it writes nothing else either.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
        settings.persistence.diffbase_storage = _no_diffbase_storage()
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        # kopf keeps a worker task per object for this long after its last event, holding that event's whole body:
        # during a start of thousands of pods, most of the operator's memory (see docs/operator.md, Memory).
        settings.queueing.idle_timeout = float(os.environ.get("SFTJOB_OPERATOR_KOPF_IDLE_TIMEOUT", "0.5"))
        reconciler._loop = asyncio.get_running_loop()
        if health is not None:
            settings.networking.error_backoffs = watch_health.RetryForever()  # a watch is never given up
            # kopf logs failed requests through the logger of whoever made them: filter at the handlers.
            for handler in logging.getLogger().handlers:
                handler.addFilter(watch_health.KopfRequestLog(health))
            logging.getLogger("aiohttp.server").addFilter(watch_health.FailedProbeLog())
            # Before kopf's one scan of the API's resources (it starts when the start-up handlers are done).
            await watch_health.wait_until_served(reconciler.kube.serves_sftjobs, health)
            if insights is not None:
                rescan = watch_health.kopf_rescan(insights, registry, settings)
                reconciler._background.append(asyncio.ensure_future(
                    watch_health.watchdog(reconciler.kube.serves_sftjobs, health, insights, rescan)
                ))
        # The pods: the operator's own lean watch (pod_watch.py), not a kopf handler.
        pod_watch.select_managed_pods(settings)
        for namespace in reconciler.namespaces or (None,):
            reconciler._background.append(asyncio.ensure_future(
                pod_watch.watch_pods(settings, namespace, reconciler.pod_event, reconciler.pods_listed)
            ))
        if health is not None:
            health.served["pods"] = True
        reconciler._background.append(asyncio.ensure_future(_resync_forever(reconciler)))
        reconciler.sweeper = OrphanSweeper(
            reconciler.kube, reconciler.namespaces, quiet_interval=reconciler.settings.reread_seconds,
            may_act=lambda: not reconciler.closing and reconciler.active() and (health is None or health.reachable),
            run_blocking=lambda call: asyncio.get_running_loop().run_in_executor(reconciler.executor, call),
            pods_in=reconciler.pod_cache.pods_in,  # pods read first (safety: orphans.py), from the pod watch
            known_uids=reconciler.known_job_uids,
        )
        reconciler._background.append(asyncio.ensure_future(reconciler.sweeper.run()))
        if elector is not None:
            settings.posting.enabled = False  # a standby writes nothing, not even kopf's events
            _campaign(reconciler, elector, stop_flag)

    if health is not None:
        @kopf.on.probe(id="watches", registry=registry)
        def watches(**_: Any) -> dict[str, bool]:
            problems = health.problems()
            if problems:
                raise kopf.PermanentError("; ".join(problems))  # /healthz answers 500
            return {name: health.established(name) for name in health.served}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # In-cluster service account, else $KUBECONFIG (the same sources as kube.load_api_client).
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def sftjob_event(event: Mapping[str, Any], **_: Any) -> None:
        body = event.get("object")
        if body:
            reconciler.job_event(event.get("type"), body)

    @kopf.on.probe(id="jobs", registry=registry)
    def jobs_known(**_: Any) -> int:
        return len(reconciler.jobs)

    @kopf.on.probe(id="leader", registry=registry)
    def leading(**_: Any) -> bool:
        return reconciler.active()

    @kopf.on.cleanup(registry=registry)
    async def shutdown(**_: Any) -> None:
        reconciler.close()
        if elector is not None:
            elector.stop(release=True)  # no-op when the signal handler already released


def _campaign(reconciler: JobReconciler, elector: LeaderElector, stop_flag: Any) -> None:
    """Start the leader election thread; its callbacks hop onto the event loop. SIGTERM/SIGINT: stop writing and
    release the Lease first (a standby takes over at once), then let kopf stop."""
    import signal

    loop = reconciler._loop
    metrics = reconciler.metrics
    elector.on_started_leading = lambda: loop.call_soon_threadsafe(reconciler.lead)
    elector.on_stopped_leading = lambda: loop.call_soon_threadsafe(reconciler.stand_by)
    if metrics is not None:
        started, stopped = elector.on_started_leading, elector.on_stopped_leading
        elector.on_started_leading = lambda: (metrics.leader.set(1), started())
        elector.on_stopped_leading = lambda: (metrics.leader.set(0), stopped())

    def terminate(signum: int) -> None:
        log.info("%s: releasing the leader lease, then stopping", signal.Signals(signum).name)
        reconciler.close()
        elector.stop(release=True)
        stop_flag.set()

    def take_over_signals() -> None:
        # kopf installs its SIGTERM/SIGINT handlers while its tasks start, after this startup handler may have
        # run: replace them a moment later. Ours release the Lease before kopf's slower shutdown (watch streams
        # closing), then stop kopf through stop_flag. A signal before that: the cleanup handler releases.
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, terminate, signum)
            except (NotImplementedError, RuntimeError):  # not the main thread: kopf's own stop applies
                pass

    loop.call_later(0.5, take_over_signals)
    elector.start()


async def _resync_forever(reconciler: JobReconciler) -> None:
    """The safety net: every unfinished job is looked at every resync period (from the cache, as an informer's
    resync: the watches deliver every change), and read from the API server every reread period, even if a watch
    event was lost (spread over one resync period)."""
    settings, loop = reconciler.settings, asyncio.get_running_loop()
    last_reread = loop.time()
    while True:
        await asyncio.sleep(settings.resync_seconds)
        reread = loop.time() - last_reread >= settings.reread_seconds - settings.resync_seconds / 2
        if reread:
            last_reread = loop.time()
        reconciler.resync_all(reread=reread, spread=settings.resync_seconds / 2 if reread else 1.0)


def run_operator(
    *,
    namespaces: list[str],
    kubeconfig: str | None,
    metrics_port: int | None,
    health_port: int | None,
    log_json: bool,
    verbose: bool,
    leader_election: LeaderElectionSettings | None = None,
) -> None:
    """`sftjob-operator run`: blocks until SIGTERM/SIGINT."""
    import kopf

    from sftjob_operator.config import OperatorConfig
    from sftjob_operator.kube import load_api_client
    from sftjob_operator.metrics import OperatorMetrics

    config = OperatorConfig.from_env(os.environ)
    namespaces = namespaces or list(config.namespaces)
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_json else kopf.LogFormat.PLAIN,
    )
    if not verbose:  # kopf logs every handled event at INFO ("Handler ... succeeded"): thousands per gang start
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if kubeconfig:
        # kopf's login goes through the kubernetes client, which read $KUBECONFIG into its default path when
        # imported, before this point: point both at the file (else `run --kubeconfig F` alone cannot log in).
        from kubernetes.config import kube_config

        os.environ["KUBECONFIG"] = kubeconfig
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
    from kopf._cogs.structs.references import Insights  # kopf.run(insights=...): what kopf watches

    settings = RuntimeSettings.from_env()
    api_client = load_api_client(kubeconfig)
    transport = ClientTransport(api_client) if settings.api_transport == "client" else transport_for(api_client)
    kube = Kube(api_client, transport=transport)
    reconciler = JobReconciler(
        kube=kube,
        config=config,
        policy=reconcile_policy_from_env(),
        settings=settings,
        namespaces=tuple(namespaces),
    )
    health = WatchHealth(on_recovered=reconciler.resync_soon)
    kube.health = health
    insights = Insights()
    metrics = OperatorMetrics(reconciler.phases)
    metrics.registry.register(WatchCollector(health))
    reconciler.metrics = metrics
    _count_api_requests(kube, metrics)
    if metrics_port:
        metrics.serve(metrics_port)
    elector = stop_flag = None
    if leader_election is not None and leader_election.enabled:
        lease_kube = Kube(api_client, transport=transport)  # its own: the Lease calls are not gated, not job requests
        leases = KubeLeaseClient(lease_kube, leader_election.namespace, leader_election.lease_name,
                                 timeout=max(1.0, leader_election.renew_deadline / 2))
        elector = LeaderElector(leases, leader_election)
        kube.write_guard = elector.check_may_write
        reconciler.is_leader = elector.is_leader
        metrics.leader.set(0)  # until the Lease is won
        stop_flag = asyncio.Event()  # not a threading.Event: kopf would wait on it in a thread that never ends
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, health, insights, elector, stop_flag)
    operator_settings = kopf.OperatorSettings()
    # Namespaced: no cluster-wide scans of CRDs and namespaces (the chart's namespaced RBAC grants none;
    # kopf would retry each 403 for a minute before falling back to the given namespaces).
    operator_settings.scanning.disabled = bool(namespaces)
    kopf.run(
        registry=registry,
        settings=operator_settings,
        namespaces=namespaces,
        clusterwide=not namespaces,
        standalone=True,  # one active replica is leader election's job (leader.py), not kopf peering's
        stop_flag=stop_flag,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
        insights=insights,
    )


def _count_api_requests(kube: Kube, metrics: Any) -> None:
    original_add = kube.counter.add

    def add(verb: str, resource: str) -> None:
        original_add(verb, resource)
        metrics.api_requests.labels(verb=verb, resource=resource).inc()

    kube.counter.add = add  # type: ignore[method-assign]
