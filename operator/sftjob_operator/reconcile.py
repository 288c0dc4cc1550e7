"""Pure reconciliation: (SFTJob, observed objects, now, config) -> actions + new status.

Level-based: every call recomputes what should exist from the SFTJob (its spec, and its status as the
operator's memory: attempt, restarts, rdzvId, conditions) and what is observed (the pods labelled
`training-hub.io/job-name=<job>`, the Service, the ConfigMap, rank 0's log tail). Calling it twice with
the same inputs gives the same answer, so a lost event, a retried handler or an operator restart
converge instead of duplicating work.

The gang rules, in the order they are checked:
0. A job being deleted (deletionTimestamp) only deletes its pods (the operator also deletes them itself when
   the job is gone: handlers.JobReconciler.job_event; the garbage collector can lag after an API-server restart).
1. A finished job (Succeeded/Failed) only cleans up (no pod keeps running) and waits for its TTL.
2. activeDeadlineSeconds past startTime fails the job (startTime: when the first gang was created and let through its
   scheduling gates, i.e. admitted by Kueue: time in the queue does not count).
3. `suspend: true` deletes the gang (graceful, so a checkpoint can be saved) and bumps the attempt, so
   resuming starts a new gang with a new rdzv_id.
4. Any pod of the current attempt that failed ends the attempt for the whole gang:
   exit 78 (INVALID_CONFIG) fails the job at once; eviction/preemption/node loss/an externally deleted
   pod restarts without counting; anything else (OOMKilled included) counts against backoffLimit.
   The new status (attempt+1) is written BEFORE the old pods are deleted, so a crash in between can
   never turn a counted failure into an uncounted "pod vanished".
5. Pods of any other attempt are deleted, and the new gang is created only after they are gone (same
   pod names; and two gangs must never rendezvous together). Pods stuck Terminating (lost node) are
   force-deleted after a bounded time.
6. After a counted failure the next gang waits an exponential backoff.
7. Train mode: before a gang attempt's pods, its prepare pod (`<job>-prepare-<attempt>`, CPU only) runs
   `training-hub prepare`; phase Preparing until it succeeds. Exit 78 (bad data: file and line) fails the job
   at once; any other failure starts a new attempt like a gang failure. A new attempt prepares again, which
   reuses the data when its manifest still matches (seconds) and re-prepares when an input changed.
8. Missing Service/ConfigMap/pods of the current attempt are created (deterministic names: a second
   create is a 409 the executor ignores). When the API server refuses one as invalid (400/422, observed as a
   `Rejection`) the job fails with reason Invalid<Kind>Spec and the API server's message: the spec cannot
   produce a valid object, so retrying would loop forever.
8. A created gang that does not run yet says why (condition Scheduled, repeated in Ready/Reconciling): Queued or
   Inadmissible (Kueue holds its pods at their scheduling gates; the reason from its Workload), Unschedulable (the
   scheduler's message), SchedulingGated (other gates). Inadmissible/Unschedulable for longer than
   unschedulableTimeoutSeconds fails the job.
All pods Succeeded -> Succeeded, with rank 0's termination summary copied into status.

Under Kueue each attempt is a pod group of its own whose pods are not retriable (labels.KUEUE_RETRIABLE_IN_GROUP):
the group's quota is released once its pods have terminated, whatever ended the gang. A group none of whose pods
ever got a node is also released at once by deleting its Workload (DeleteWorkload) when its pods are deleted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

from training_hub.launch.exit_codes import ExitCode, Outcome

from sftjob_operator import labels
from sftjob_operator.api import InvalidSFTJob, SFTJobSpec
from sftjob_operator.render import RenderedGang, render_gang
from sftjob_operator import status as st

# ----------------------------------------------------------------------------------------------------------------
# Inputs and outputs


@dataclass(frozen=True)
class Rejection:
    """The API server refused to create an object of the gang as invalid (HTTP 400/422): the spec can never
    produce it, so retrying cannot help. `message` is the API server's, naming the field."""

    kind: str
    name: str
    message: str

    PERMANENT_STATUSES = frozenset({400, 422})

    @classmethod
    def of(cls, action: "Action", status: int | None, message: str) -> "Rejection | None":
        """The rejection a failed action amounts to, or None when the error is transient (5xx, timeouts, 409,
        403 quota, 429): those are retried with backoff and shown in the Created condition."""
        if not isinstance(action, CreateObject) or status not in cls.PERMANENT_STATUSES:
            return None
        return cls(action.kind, action.name, message)

    @property
    def reason(self) -> str:
        return f"Invalid{self.kind}Spec"

    def describe(self) -> str:
        return f"the API server rejected {self.kind} {self.name}: {self.message}"


@dataclass(frozen=True)
class Observed:
    """What exists in the cluster for one SFTJob (plain API dicts, camelCase)."""

    pods: Sequence[Mapping[str, Any]] = ()
    service: Mapping[str, Any] | None = None
    configmap: Mapping[str, Any] | None = None
    rank0_log_tail: str | None = None  # read by the caller only when `progress_pod_name` says so
    rejection: Rejection | None = None  # the last create was refused as invalid (see Rejection)
    workload: Mapping[str, Any] | None = None  # Kueue's Workload of the current gang, read only while Kueue gates it


@dataclass(frozen=True)
class ReconcilePolicy:
    """Operator-wide timing knobs (env-overridable in `sftjob-operator run`; short in tests)."""

    restart_backoff_seconds: float = 10.0  # first retry delay after a counted failure; doubles per restart
    restart_backoff_max_seconds: float = 300.0
    progress_interval_seconds: float = 30.0  # how often a running job is looked at again (rank-0 log read)
    recheck_seconds: float = 5.0  # how soon to look again while waiting for pods to go away
    queued_recheck_seconds: float = 15.0  # how often Kueue's reason is read again while the gang waits in a queue


@dataclass(frozen=True)
class CreateObject:
    body: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return self.body.get("kind", "")

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]


@dataclass(frozen=True)
class ReplaceConfigMapData:
    name: str
    data: Mapping[str, str]


@dataclass(frozen=True)
class DeletePod:
    name: str
    uid: str  # precondition: never delete a newer pod that reuses the name
    force: bool = False  # grace period 0, for pods stuck Terminating
    reason: str = ""


@dataclass(frozen=True)
class DeleteJob:
    name: str
    uid: str


@dataclass(frozen=True)
class DeleteWorkload:
    """Delete Kueue's Workload of a pod group none of whose pods got a node: Kueue then removes its finalizers at
    once (its deleted pods would otherwise stay Pending until the pod GC marks them Failed) and never admits it."""

    name: str


Action = CreateObject | ReplaceConfigMapData | DeletePod | DeleteJob | DeleteWorkload


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until a time-based rule may fire; None = only on events
    restarted_for: "PodFailure | None" = None  # set when this call restarts the gang (for the metrics)

    def requeue(self, seconds: float) -> None:
        seconds = max(0.5, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# ----------------------------------------------------------------------------------------------------------------
# Reading the spec


@dataclass(frozen=True)
class RunPolicy:
    nnodes: int
    nproc_per_node: int
    backoff_limit: int
    suspend: bool
    active_deadline_seconds: int | None
    unschedulable_timeout_seconds: int | None
    ttl_seconds_after_finished: int | None
    cleanup: str  # cleanPodPolicy, pods deleted when the job ends: All | Running (default) | None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "RunPolicy":
        # Read leniently, with the API model's defaults: an invalid spec is failed with its reason later
        # (in `_ensure_gang`), and until then the job still has to be cleaned up and reported on.
        def pick(field_name: str) -> Any:
            info = SFTJobSpec.model_fields[field_name]
            value = spec.get(info.alias or field_name)
            return getattr(info.default, "value", info.default) if value is None else value

        return cls(
            nnodes=int(pick("nnodes")),
            nproc_per_node=int(pick("nproc_per_node")),
            backoff_limit=int(pick("backoff_limit")),
            suspend=bool(pick("suspend")),
            active_deadline_seconds=pick("active_deadline_seconds"),
            unschedulable_timeout_seconds=pick("unschedulable_timeout_seconds"),
            ttl_seconds_after_finished=pick("ttl_seconds_after_finished"),
            cleanup=str(pick("clean_pod_policy")),
        )


# ----------------------------------------------------------------------------------------------------------------
# Reading pods


def pod_rank(pod: Mapping[str, Any]) -> int | None:
    try:
        return int(pod["metadata"]["labels"][labels.NODE_RANK])
    except (KeyError, TypeError, ValueError):
        return None


def pod_attempt(pod: Mapping[str, Any]) -> int | None:
    try:
        return int(pod["metadata"]["labels"][labels.ATTEMPT])
    except (KeyError, TypeError, ValueError):
        return None


def pod_group(pod: Mapping[str, Any]) -> str | None:
    """Kueue's pod-group name of the pod (= its Workload's name)."""
    return (pod["metadata"].get("labels") or {}).get(labels.KUEUE_POD_GROUP_NAME)


def scheduling_gates(pod: Mapping[str, Any]) -> list[str]:
    return [gate.get("name", "") for gate in (pod.get("spec") or {}).get("schedulingGates") or ()]


def kueue_gated(pod: Mapping[str, Any]) -> bool:
    """Whether Kueue still holds the pod at its scheduling gates (its group is not admitted)."""
    return any(gate.startswith(labels.KUEUE_PREFIX) for gate in scheduling_gates(pod))


def may_hold_its_group(pod: Mapping[str, Any]) -> bool:
    """A Kueue-managed pod (its finalizer) without a node: when its job is gone, its group may be one of the
    unadmitted_groups, which only deleting their Workload ends."""
    return labels.KUEUE_FINALIZER in (pod["metadata"].get("finalizers") or ()) and not (pod.get("spec") or {}).get("nodeName")


def unadmitted_groups(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Kueue pod groups among `pods` that Kueue manages (its finalizer) and none of whose pods got a node: deleting
    their Workload releases them at once (no kubelet will ever end their pods)."""
    bound: dict[str, bool] = {}
    managed: set[str] = set()
    for pod in pods:
        group = pod_group(pod)
        if not group:
            continue
        bound[group] = bound.get(group, False) or bool((pod.get("spec") or {}).get("nodeName"))
        if labels.KUEUE_FINALIZER in (pod["metadata"].get("finalizers") or ()):
            managed.add(group)
    return sorted(group for group in managed if not bound[group])


def _phase(pod: Mapping[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _is_ready(pod: Mapping[str, Any]) -> bool:
    if _phase(pod) != "Running" or _terminating(pod):
        return False
    return st.condition_is_true((pod.get("status") or {}).get("conditions"), "Ready")


def _main_terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The terminated state of the pod's (first) container, or None."""
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        state = container.get("state") or {}
        if "terminated" in state and state["terminated"] is not None:
            return state["terminated"]
        last = container.get("lastState") or {}
        if last.get("terminated"):
            return last["terminated"]
    return None


# Pod-level reasons that mean "the infrastructure took the pod away", not "training failed".
_DISRUPTION_POD_REASONS = frozenset(
    {"Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown", "Terminated", "DeletionByTaintManager"}
)


@dataclass(frozen=True)
class PodFailure:
    rank: int | None  # None: the prepare pod (no node of the gang)
    pod_name: str
    exit_code: int | None
    reason: str
    message: str
    permanent: bool  # exit 78: retrying cannot help
    counted: bool  # against backoffLimit (False: eviction, preemption, node loss, deleted)
    # the entrypoint's summary says it failed because another rank did (peerLost): not the cause, if another is seen
    peer_lost: bool = False
    finished_at: datetime | None = None

    def as_status(self, now: datetime) -> dict[str, Any]:
        failure: dict[str, Any] = {"reason": self.reason, "message": st.clip(self.message)}
        if self.rank is not None:
            failure = {"rank": self.rank, **failure}
        if self.exit_code is not None:
            failure["exitCode"] = self.exit_code
        return failure

    def describe(self) -> str:
        code = f" exit code {self.exit_code}" if self.exit_code is not None else ""
        role = "data preparation" if self.rank is None else f"rank {self.rank}"
        text = f"pod {self.pod_name} ({role}){code}: {self.reason}"
        return f"{text}: {self.message}" if self.message else text


def classify_failure(pod: Mapping[str, Any]) -> PodFailure | None:
    """Why a pod of the current gang no longer runs, or None if it is fine (pending, running, succeeded)."""
    rank = None if labels.is_prepare_pod(pod) else (pod_rank(pod) or 0)
    name = pod["metadata"]["name"]
    pod_status = pod.get("status") or {}
    phase = _phase(pod)
    terminated = _main_terminated_state(pod)
    # Kubernetes' eviction/preemption mark, or Kueue's when it evicts (preempts) the group.
    disruption = st.find_condition(pod_status.get("conditions"), "DisruptionTarget") or st.find_condition(
        pod_status.get("conditions"), labels.KUEUE_TERMINATION_TARGET
    )
    disrupted = bool(disruption) and disruption.get("status") == "True"

    if _terminating(pod) and phase not in ("Succeeded", "Failed"):
        # Nobody but the operator should delete gang pods; the operator deletes only pods it no longer wants.
        reason = (disruption or {}).get("reason") or "PodDeleted"
        message = (disruption or {}).get("message") or "the pod was deleted while the gang ran"
        return PodFailure(rank, name, None, reason, message, False, False)
    if phase == "Unknown":
        return PodFailure(rank, name, None, "NodeLost", "the pod's node stopped reporting", False, False)
    if phase != "Failed":
        return None

    exit_code = terminated.get("exitCode") if terminated else None
    container_reason = (terminated or {}).get("reason") or ""
    summary = st.parse_summary((terminated or {}).get("message"))
    message = ""
    if summary and summary.get("message"):
        message = str(summary["message"])
    elif terminated and terminated.get("message"):
        message = str(terminated["message"])
    elif pod_status.get("message"):
        message = str(pod_status["message"])

    if exit_code == ExitCode.INVALID_CONFIG or (summary or {}).get("outcome") == Outcome.INVALID_CONFIG.value:
        return PodFailure(rank, name, exit_code, "InvalidConfig", message, True, False)
    if container_reason == "OOMKilled":
        return PodFailure(rank, name, exit_code, "OOMKilled", message or "a process ran out of memory", False, True)
    pod_reason = pod_status.get("reason") or ""
    if pod_reason in _DISRUPTION_POD_REASONS or disrupted:
        reason = pod_reason or (disruption or {}).get("reason") or "Disrupted"
        return PodFailure(rank, name, exit_code, reason, message or pod_status.get("message", ""), False, False)
    if exit_code == ExitCode.PREEMPTED or (summary or {}).get("outcome") == Outcome.PREEMPTED.value:
        # SIGTERM from outside the operator (node drain, preemption): not the training's fault.
        return PodFailure(rank, name, exit_code, "Preempted", message or "the pod was terminated", False, False)
    if exit_code == ExitCode.RENDEZVOUS_TIMEOUT:
        return PodFailure(rank, name, exit_code, "RendezvousTimeout", message, False, True)
    if any(marker in message for marker in _ADDRESS_IN_USE_MARKERS):
        # A process outside the scheduler's view (host network) held the port: retryable, the port may free up.
        text = "the rendezvous port was already in use on the pod's node (with hostNetwork, another process there " \
               f"holds spec.rdzvPort; set another port): {message}"
        return PodFailure(rank, name, exit_code, REASON_PORT_IN_USE, text, False, True)
    reason = container_reason if container_reason and container_reason != "Error" else "TrainingFailed"
    peer_lost = (summary or {}).get("peerLost") is True
    finished_at = st.parse_time((terminated or {}).get("finishedAt"))
    return PodFailure(rank, name, exit_code, reason, message, False, True, peer_lost, finished_at)


REASON_PORT_IN_USE = "RendezvousPortInUse"
# What torch's TCPStore (and any socket bind) reports when the rendezvous port is already taken.
_ADDRESS_IN_USE_MARKERS = ("EADDRINUSE", "address already in use")


def port_conflict(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when a pod waits because its hostPort (hostNetwork: the rdzv port) is taken on the
    nodes that would otherwise fit it; None otherwise."""
    scheduled = st.find_condition((pod.get("status") or {}).get("conditions"), "PodScheduled")
    if not scheduled or scheduled.get("status") != "False" or scheduled.get("reason") != "Unschedulable":
        return None
    message = str(scheduled.get("message") or "")
    return message if "free ports" in message else None


def _host_ports(pod: Mapping[str, Any]) -> list[int]:
    return [
        port["hostPort"]
        for container in (pod.get("spec") or {}).get("containers") or ()
        for port in container.get("ports") or ()
        if port.get("hostPort")
    ]


# Why a created gang does not run yet (the Scheduled condition's reasons). Inadmissible and Unschedulable count
# towards spec.unschedulableTimeoutSeconds; Queued (waiting for quota) never does.
QUEUED = "Queued"
INADMISSIBLE = "Inadmissible"
UNSCHEDULABLE = "Unschedulable"
SCHEDULING_GATED = "SchedulingGated"
WAITING_REASONS = (QUEUED, INADMISSIBLE, UNSCHEDULABLE, SCHEDULING_GATED)
UNFIT_REASONS = (INADMISSIBLE, UNSCHEDULABLE)
# Kueue's flavor assigner says "... > maximum capacity (...)" when a request can never fit the ClusterQueue (even
# empty, borrowing included), and "..., N more needed" when it only has to wait for quota.
_KUEUE_NEVER_FITS = "> maximum capacity"
_KUEUE_WAITS = "more needed"


def kueue_wait(workload: Mapping[str, Any] | None, queue: str | None) -> tuple[str, str]:
    """(reason, message) for a gang Kueue has not admitted, from its Workload's QuotaReserved/Admitted conditions."""
    where = f"queue {queue}" if queue else "Kueue"
    if workload is None:
        return QUEUED, f"waiting for Kueue to admit the gang ({where}): no Workload yet"
    conditions = (workload.get("status") or {}).get("conditions")
    quota = st.find_condition(conditions, "QuotaReserved") or {}
    message = str(quota.get("message") or "")
    if quota.get("status") == "True":
        admitted = st.find_condition(conditions, "Admitted") or {}
        detail = admitted.get("message") or "waiting for admission checks"
        return QUEUED, f"quota reserved in {where}, not admitted yet: {detail}"
    if quota.get("reason") == INADMISSIBLE or (_KUEUE_NEVER_FITS in message and _KUEUE_WAITS not in message):
        return INADMISSIBLE, f"{where} can never admit the gang as it is: {message or quota.get('reason')}"
    return QUEUED, f"waiting in {where}: {message or 'not admitted yet'}"


def scheduler_wait(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(Unschedulable, the scheduler's message) when a pod of the gang cannot be placed, else None."""
    stuck = []
    for pod in sorted(pods, key=lambda p: pod_rank(p) or 0):
        scheduled = st.find_condition((pod.get("status") or {}).get("conditions"), "PodScheduled") or {}
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            stuck.append((pod["metadata"]["name"], scheduled.get("message") or "no node fits"))
    if not stuck:
        return None
    name, message = stuck[0]
    return UNSCHEDULABLE, f"{len(stuck)} of {len(pods)} pod(s) cannot be scheduled; {name}: {message}"


def _pick_failure(failures: list[PodFailure]) -> PodFailure:
    """The failure that decides what happens: permanent > a rank's own > lost a peer; counted > disruption;
    lowest rank first. A rank that only lost its peer (e.g. rank 0 after rank 1 was killed) is not blamed, nor
    counted against backoffLimit, when the peer's own failure (or its eviction) is seen too."""
    return sorted(failures, key=lambda f: (not f.permanent, f.peer_lost, not f.counted, f.rank or 0))[0]


# How long a gang whose only failures say "lost a peer" waits for the peer's own failure to show up: the peer's
# torchrun and kubelet report it within a few seconds (same second, here), and blaming the right rank is worth it.
PEER_FAILURE_GRACE_SECONDS = 10.0


def _peer_failure_pending(failures: list[PodFailure], current: Mapping[int, Mapping[str, Any]], now: datetime) -> float:
    """Seconds to wait for the cause of `failures`: > 0 only when all of them lost a peer, another pod of the gang
    still runs (its failure may not be reported yet), and the grace since the first of them finished is not over."""
    if not failures or not all(f.peer_lost and f.finished_at is not None for f in failures):
        return 0.0
    failed = {f.pod_name for f in failures}
    if not any(_phase(p) in ("Running", "Pending") for p in current.values() if p["metadata"]["name"] not in failed):
        return 0.0
    first = min(f.finished_at for f in failures)  # type: ignore[type-var]  # all set: checked above
    left = (first + timedelta(seconds=PEER_FAILURE_GRACE_SECONDS) - now).total_seconds()
    return min(max(0.0, left), PEER_FAILURE_GRACE_SECONDS)  # bounded whatever the kubelet's clock says


def progress_pod_name(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The pod whose log tail the caller should read for progress (rank 0 of the current gang, running)."""
    status = job.get("status") or {}
    if status.get("phase") in st.FINISHED_PHASES:
        return None
    attempt = int(status.get("attempt") or 0)
    for pod in pods:
        if pod_rank(pod) == 0 and pod_attempt(pod) == attempt and _phase(pod) == "Running" and not _terminating(pod):
            return pod["metadata"]["name"]
    return None


# ----------------------------------------------------------------------------------------------------------------
# The reconciler


def reconcile(
    job: Mapping[str, Any],
    observed: Observed,
    now: datetime,
    config: Any,
    policy: ReconcilePolicy = ReconcilePolicy(),
) -> Result:
    return _Reconciler(job, observed, now, config, policy).run()


class _Reconciler:
    def __init__(self, job, observed: Observed, now: datetime, config: Any, policy: ReconcilePolicy) -> None:
        self.job = job
        self.meta = job["metadata"]
        self.name = self.meta["name"]
        self.uid = self.meta.get("uid", "")
        self.generation = self.meta.get("generation")
        self.spec = job.get("spec") or {}
        self.old = job.get("status") or {}
        self.observed = observed
        self.now = now
        self.config = config
        self.policy = policy
        # Past a pod's deletionTimestamp (which already includes its grace period).
        self.force_delete_after = float(getattr(config, "force_delete_after_s", 300.0))
        self.run_policy = RunPolicy.from_spec(self.spec)
        self.status: dict[str, Any] = copy.deepcopy(dict(self.old))
        self.result = Result(status=self.status)
        self.pods = [p for p in observed.pods if (p["metadata"].get("labels") or {}).get(labels.JOB_NAME) == self.name]
        self.prepare_pods = [p for p in self.pods if labels.is_prepare_pod(p)]
        self._pods_left_after_suspend = 0  # set by _suspend: a suspend is still in progress until they are gone
        self._rendering: tuple[tuple[int, str], RenderedGang | InvalidSFTJob] | None = None  # _rendered's

    # --- helpers ------------------------------------------------------------------------------------------------

    @property
    def attempt(self) -> int:
        return int(self.status.get("attempt") or 0)

    def _condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.status["conditions"] = st.set_condition(
            self.status.get("conditions"), type_, status, reason, message, now=self.now, generation=self.generation
        )

    def _has_condition(self, type_: str) -> bool:
        return st.condition_is_true(self.status.get("conditions"), type_)

    def _condition_reason(self, type_: str) -> str | None:
        condition = st.find_condition(self.status.get("conditions"), type_)
        return condition.get("reason") if condition else None

    def _event(self, type_: str, reason: str, message: str) -> None:
        self.result.events.append(Event(type_, reason, st.clip(message)))

    def _set_phase(self, phase: str) -> None:
        self.status["phase"] = phase

    def _current_and_stale(self) -> tuple[dict[int, Mapping[str, Any]], list[Mapping[str, Any]]]:
        current: dict[int, Mapping[str, Any]] = {}
        stale: list[Mapping[str, Any]] = []
        for pod in self.pods:
            if labels.is_prepare_pod(pod):
                if pod_attempt(pod) != self.attempt:
                    stale.append(pod)  # a finished attempt's prepare pod: deleted before the next one starts
                continue
            rank = pod_rank(pod)
            if pod_attempt(pod) == self.attempt and rank is not None and 0 <= rank < self.run_policy.nnodes and rank not in current:
                current[rank] = pod
            else:
                stale.append(pod)
        return current, stale

    def _delete_pods(self, pods: Sequence[Mapping[str, Any]], reason: str, *, only_running: bool = False) -> int:
        """Delete actions for the pods; force for those stuck Terminating. Returns how many still exist."""
        remaining = 0
        for pod in pods:
            if only_running and _phase(pod) in ("Succeeded", "Failed"):
                continue
            remaining += 1
            name, uid = pod["metadata"]["name"], pod["metadata"].get("uid", "")
            deletion = st.parse_time(pod["metadata"].get("deletionTimestamp"))
            if deletion is None:
                self.result.actions.append(DeletePod(name, uid, force=False, reason=reason))
            elif self.now >= deletion + timedelta(seconds=self.force_delete_after):
                self.result.actions.append(DeletePod(name, uid, force=True, reason=reason))
                self._event("Warning", "ForceDeletedPod", f"pod {name} stuck Terminating since {st.format_time(deletion)}; force-deleted")
            else:
                wait = (deletion + timedelta(seconds=self.force_delete_after) - self.now).total_seconds()
                self.result.requeue(min(wait, self.policy.recheck_seconds * 6))
        if remaining:
            self.result.requeue(self.policy.recheck_seconds)
        self._release_unadmitted(pods)
        return remaining

    def _release_unadmitted(self, deleting: Sequence[Mapping[str, Any]]) -> None:
        groups = {pod_group(pod) for pod in deleting} - {None}
        members = [pod for pod in self.pods if pod_group(pod) in groups]
        for group in unadmitted_groups(members):
            self.result.actions.append(DeleteWorkload(group))

    def _update_counts(self, current: Mapping[int, Mapping[str, Any]]) -> None:
        ready = sum(1 for pod in current.values() if _is_ready(pod))
        total = self.run_policy.nnodes
        self.status["nodesReady"] = ready
        self.status["nodesTotal"] = total
        self.status["nodes"] = f"{ready}/{total}"
        self.status["gpusPerNode"] = self.run_policy.nproc_per_node

    def _rdzv_id(self, attempt: int) -> str:
        from sftjob_operator.render import new_rdzv_id

        return new_rdzv_id(self.uid, attempt)

    # --- the rules ----------------------------------------------------------------------------------------------

    def run(self) -> Result:
        self.status.setdefault("attempt", 0)
        self.status.setdefault("restarts", 0)
        self.status["rdzvId"] = self._rdzv_id(self.attempt)
        self.status["observedGeneration"] = self.generation
        current, stale = self._current_and_stale()
        self._update_counts(current)

        if self.meta.get("deletionTimestamp"):
            # Being deleted (foreground, or held by someone's finalizer): free the GPUs now, create nothing.
            self._delete_pods(self.pods, "JobDeleted")
        elif self.status.get("phase") in st.FINISHED_PHASES:
            self._finished()
        elif self.observed.rejection is not None:
            rejection = self.observed.rejection
            self._condition(st.CREATED, False, rejection.reason, rejection.describe())
            self._finish(False, rejection.reason, rejection.describe())
        elif self._deadline_exceeded():
            self._finish(False, "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={self.run_policy.active_deadline_seconds}")
        elif self.run_policy.suspend:
            self._suspend(current)
        else:
            self._active(current, stale)
        self._update_counts(self._current_and_stale()[0])
        if self.status.get("phase") in st.FINISHED_PHASES:
            self.status["nodesReady"] = 0
            self.status["nodes"] = f"0/{self.run_policy.nnodes}"
        self._gitops_conditions()
        return self.result

    def _gitops_conditions(self) -> None:
        """Ready / Reconciling / Stalled from the phase, so kstatus (Flux) tells the truth.

        Like kstatus's own rule for batch/v1 Job, a job is Current (Ready) once its gang runs, not only when it
        has finished: a GitOps apply that waits for health must not wait hours for training. In progress while
        the gang is being created, is pending, restarts or is still stopping for a suspend; Stalled when Failed.
        """
        phase = self.status.get("phase")
        conditions = self.status.get("conditions")
        if phase == st.FAILED:
            failed = st.find_condition(conditions, st.FAILED) or {}
            state, reason, message = "stalled", failed.get("reason") or "Failed", failed.get("message") or "the job failed"
        elif phase == st.SUCCEEDED:
            succeeded = st.find_condition(conditions, st.SUCCEEDED) or {}
            state, reason, message = "ready", "Succeeded", succeeded.get("message") or "all pods succeeded"
        elif phase == st.RUNNING:
            running = st.find_condition(conditions, st.RUNNING) or {}
            state, reason, message = "ready", "GangRunning", running.get("message") or "the gang runs"
        elif phase == st.PREPARING:
            prepared = st.find_condition(conditions, st.PREPARED) or {}
            state, reason, message = "reconciling", "Preparing", prepared.get("message") or "preparing the data"
        elif phase == st.SUSPENDED:
            suspended = st.find_condition(conditions, st.SUSPENDED) or {}
            message = suspended.get("message") or "spec.suspend is true"
            state, reason = ("reconciling", "Suspending") if self._pods_left_after_suspend else ("ready", "Suspended")
        else:
            created = st.find_condition(conditions, st.CREATED) or {}
            scheduled = st.find_condition(conditions, st.SCHEDULED) or {}
            if created.get("status") != "True" and created.get("message"):
                message = created["message"]
            else:
                message = f"gang attempt {self.attempt}: {self.status.get('nodes', '0/?')} pod(s) ready"
            state, reason = "reconciling", "GangRestarting" if phase == st.RESTARTING else "GangPending"
            if created.get("status") == "True" and scheduled.get("reason") in WAITING_REASONS:
                reason, message = scheduled["reason"], scheduled.get("message") or message  # why the gang waits
        self._condition(st.READY, state == "ready", reason, message)
        self._condition(st.RECONCILING, state == "reconciling", reason, message)
        self._condition(st.STALLED, state == "stalled", reason, message)

    def _deadline_exceeded(self) -> bool:
        deadline = self.run_policy.active_deadline_seconds
        started = st.parse_time(self.status.get("startTime"))
        if deadline is None or started is None or self.run_policy.suspend:
            return False
        left = (started + timedelta(seconds=int(deadline)) - self.now).total_seconds()
        if left > 0:
            self.result.requeue(left)
            return False
        return True

    def _finish(self, succeeded: bool, reason: str, message: str) -> None:
        phase = st.SUCCEEDED if succeeded else st.FAILED
        self._set_phase(phase)
        self.status["completionTime"] = st.format_time(self.now)
        self._condition(st.RUNNING, False, reason, message)
        self._condition(phase, True, reason, message)
        self._event("Normal" if succeeded else "Warning", reason, message)
        self._finished()

    def _finished(self) -> None:
        """A finished job: no pod keeps running; delete the job after its TTL."""
        # Running (default) keeps finished pods for their logs; None is the user's explicit opt-out.
        if self.run_policy.cleanup != "None":
            self._delete_pods(self.pods, "JobFinished", only_running=self.run_policy.cleanup != "All")
        ttl = self.run_policy.ttl_seconds_after_finished
        finished_at = st.parse_time(self.status.get("completionTime"))
        if ttl is None or finished_at is None:
            return
        left = (finished_at + timedelta(seconds=int(ttl)) - self.now).total_seconds()
        if left <= 0:
            self.result.actions.append(DeleteJob(self.name, self.uid))
            self._event("Normal", "TTLExpired", f"deleting the job: ttlSecondsAfterFinished={ttl} passed")
        else:
            self.result.requeue(left)

    def _suspend(self, current: Mapping[int, Mapping[str, Any]]) -> None:
        gang_exists = bool(current) or self._has_condition(st.CREATED)
        if gang_exists:
            # The next gang (on resume) must not rendezvous with this one: new attempt, new rdzv_id, not a restart.
            self.status["attempt"] = self.attempt + 1
            self.status["rdzvId"] = self._rdzv_id(self.attempt)
            self._condition(st.CREATED, False, "Suspended", "the gang was deleted because the job is suspended")
        if self.status.get("phase") != st.SUSPENDED:
            self._event("Normal", "Suspended", "job suspended: deleting the gang's pods" if gang_exists else "job created suspended")
        self._set_phase(st.SUSPENDED)
        self.status.pop("startTime", None)  # the deadline clock restarts on resume (as for a batch/v1 Job)
        self.status.pop("unschedulableSince", None)
        self._gang_gone(st.SCHEDULED, "JobSuspended", "spec.suspend is true")
        self._condition(st.SUSPENDED, True, "JobSuspended", "spec.suspend is true")
        if self._condition_reason(st.RUNNING) is not None or gang_exists:
            self._condition(st.RUNNING, False, "JobSuspended", "spec.suspend is true")
        remaining = self._delete_pods(self.pods, "JobSuspended")
        self._pods_left_after_suspend = remaining
        if remaining:
            self._condition(st.SUSPENDED, True, "JobSuspended", f"spec.suspend is true; waiting for {remaining} pod(s) to stop")

    def _active(self, current: dict[int, Mapping[str, Any]], stale: list[Mapping[str, Any]]) -> None:
        if self.status.get("phase") == st.SUSPENDED or self._has_condition(st.SUSPENDED):
            self._condition(st.SUSPENDED, False, "JobResumed", "spec.suspend is false")
            self._event("Normal", "Resumed", f"job resumed: starting gang attempt {self.attempt}")
            self._set_phase(st.PENDING)
            self._condition(st.CREATED, False, "Resumed", "creating a new gang after resume")

        nnodes = self.run_policy.nnodes
        failures = [f for f in (classify_failure(pod) for pod in current.values()) if f is not None]
        if self._has_condition(st.CREATED) and len(current) < nnodes:
            missing = sorted(set(range(nnodes)) - set(current))[0]
            failures.append(PodFailure(missing, f"{self.name}-node-{missing}", None, "PodDeleted",
                                       "a pod of the running gang disappeared", False, False))
        if failures:
            wait = _peer_failure_pending(failures, current, self.now)
            if wait > 0:
                self.result.requeue(wait)
                return
            self._gang_failed(_pick_failure(failures), current)
            return
        if len(current) == nnodes and all(_phase(pod) == "Succeeded" for pod in current.values()):
            self._gang_succeeded(current)
            return

        if stale:
            self._set_phase(st.RESTARTING if self._condition_reason(st.CREATED) == "Restarting" else st.PENDING)
            remaining = self._delete_pods(stale, "StaleAttempt")
            self._condition_keep_error(f"waiting for {remaining} pod(s) of an earlier attempt to stop")
            return

        if self._backing_off():
            return
        if not current and not self._data_prepared():
            return
        self._ensure_gang(current)

    def _rendered(self) -> RenderedGang:
        """This attempt's objects, rendered once per look (the prepare step and the gang both need them)."""
        key = (self.attempt, self.status["rdzvId"])
        if self._rendering is None or self._rendering[0] != key:
            try:
                self._rendering = (key, render_gang(self.job, attempt=key[0], rdzv_id=key[1], config=self.config))
            except InvalidSFTJob as error:
                self._rendering = (key, error)
        if isinstance(self._rendering[1], InvalidSFTJob):
            raise self._rendering[1]
        return self._rendering[1]

    def _data_prepared(self) -> bool:
        """Before a gang attempt: its prepare pod must have succeeded. Creates it when missing; sets the Preparing
        phase and the Prepared condition; fails the job on a data error (exit 78) or starts a new attempt."""
        try:
            rendered = self._rendered()
        except InvalidSFTJob:
            return True  # _ensure_gang reports it
        desired = rendered.prepare_pod
        if desired is None:
            return True
        name = desired["metadata"]["name"]
        pod = next((p for p in self.prepare_pods if pod_attempt(p) == self.attempt), None)
        if pod is None:
            self._ensure_shared_objects(rendered, {})
            self.result.actions.append(CreateObject(desired))
            if "startTime" not in self.status and not self._queued_by_kueue():
                # Preparing is running (on CPU). Under Kueue the clock starts when the gang is admitted instead,
                # as for a batch/v1 Job: nothing of the job counts as started while it waits in the queue.
                self.status["startTime"] = st.format_time(self.now)
                self._deadline_requeue()
            message = f"pod {name} prepares the data for gang attempt {self.attempt} (on CPU; the gang waits for it)"
            self._set_phase(st.PREPARING)
            self._condition(st.PREPARED, False, "Preparing", message)
            self._event("Normal", "Preparing", message)
            return False
        failure = classify_failure(pod)
        if failure is not None:
            if failure.permanent:
                self.status["lastFailure"] = failure.as_status(self.now)
                message = f"preparing the data failed: {failure.message or failure.describe()}"
                self._condition(st.PREPARED, False, "InvalidConfig", message)
                self._finish(False, "InvalidConfig", message)
            else:
                self._condition(st.PREPARED, False, "PrepareFailed", failure.describe())
                self._gang_failed(failure, {})
            return False
        if _phase(pod) == "Succeeded":
            summary = st.parse_summary((_main_terminated_state(pod) or {}).get("message")) or {}
            message = str(summary.get("message") or f"pod {name} prepared the data")
            if not self._has_condition(st.PREPARED):
                self._event("Normal", "DataPrepared", message)
            self._condition(st.PREPARED, True, "DataReused" if summary.get("reused") else "DataPrepared", message)
            return True
        self._set_phase(st.PREPARING)
        self._condition(st.PREPARED, False, "Preparing",
                        f"pod {name} is {_phase(pod)}: preparing the data for gang attempt {self.attempt}")
        self._deadline_requeue()
        return False

    def _queued_by_kueue(self) -> bool:
        return bool((self.meta.get("labels") or {}).get(labels.KUEUE_QUEUE_NAME))

    def _gang_gone(self, type_: str, reason: str, message: str) -> None:
        """A condition about the current gang, once that gang is being deleted (kept out until it first exists)."""
        if st.find_condition(self.status.get("conditions"), type_) is not None:
            self._condition(type_, False, reason, message)

    def _condition_keep_error(self, message: str) -> None:
        # A recorded API error (reason CreateFailed) stays visible until creation succeeds.
        reason = self._condition_reason(st.CREATED)
        if reason == "CreateFailed" or self._has_condition(st.CREATED):
            return
        self._condition(st.CREATED, False, reason or "Creating", message)

    def _backing_off(self) -> bool:
        created = st.find_condition(self.status.get("conditions"), st.CREATED) or {}
        if created.get("reason") != "Restarting":
            return False
        # The restart turned Created from True to False: that transition time is when the gang failed.
        failed_at = st.parse_time(created.get("lastTransitionTime"))
        restarts = int(self.status.get("restarts") or 0)
        if failed_at is None or restarts == 0:
            return False
        delay = min(self.policy.restart_backoff_max_seconds, self.policy.restart_backoff_seconds * 2 ** (restarts - 1))
        left = (failed_at + timedelta(seconds=delay) - self.now).total_seconds()
        if left <= 0:
            return False
        self._set_phase(st.RESTARTING)
        self._condition(st.CREATED, False, "Restarting", f"backing off {delay:g}s before gang attempt {self.attempt}")
        self.result.requeue(left)
        return True

    def _gang_failed(self, failure: PodFailure, current: Mapping[int, Mapping[str, Any]]) -> None:
        self.status["lastFailure"] = failure.as_status(self.now)
        self._event("Warning", "PodFailed", failure.describe())
        if failure.permanent:
            self._finish(False, "InvalidConfig", failure.message or failure.describe())
            return
        restarts = int(self.status.get("restarts") or 0)
        if failure.counted and restarts >= self.run_policy.backoff_limit:
            self._finish(
                False,
                "BackoffLimitExceeded",
                f"backoffLimit={self.run_policy.backoff_limit} reached after {restarts} restart(s); last failure: {failure.describe()}",
            )
            return
        if failure.counted:
            self.status["restarts"] = restarts + 1
        self.result.restarted_for = failure
        self.status["attempt"] = self.attempt + 1
        self.status["rdzvId"] = self._rdzv_id(self.attempt)
        self.status.pop("progress", None)
        self.status.pop("progressText", None)
        counted = "counts against backoffLimit" if failure.counted else "not counted (disruption)"
        message = f"restarting the whole gang as attempt {self.attempt} ({counted}): {failure.describe()}"
        self._set_phase(st.RESTARTING)
        self._condition(st.CREATED, False, "Restarting", message)
        self._condition(st.RUNNING, False, "Restarting", message)
        self.status.pop("unschedulableSince", None)
        self._gang_gone(st.SCHEDULED, "Restarting", message)
        self._event("Warning", "Restarting", message)
        self._delete_pods(list(current.values()), "GangRestart")

    def _gang_succeeded(self, current: Mapping[int, Mapping[str, Any]]) -> None:
        summary = st.parse_summary((_main_terminated_state(current[0]) or {}).get("message")) or {}
        message = "all pods succeeded"
        if summary:
            self.status["summary"] = st.summary_status(summary)
            details = []
            if summary.get("final_checkpoint"):
                details.append(f"final checkpoint {summary['final_checkpoint']}")
            if summary.get("loss") is not None:
                details.append(f"loss {summary['loss']}")
            if summary.get("resumed_from_epoch") is not None:
                details.append(f"resumed from epoch {summary['resumed_from_epoch']}")
            if self.spec.get("mode") == "Preflight" and summary.get("message"):
                # What the preflight measured (rank 0's all-reduce bandwidth) is the point of running it.
                details.append(str(summary["message"]))
            if details:
                message += ": " + ", ".join(details)
        self._finish(True, "Succeeded", message)

    def _ensure_gang(self, current: Mapping[int, Mapping[str, Any]]) -> None:
        try:
            rendered = self._rendered()
        except InvalidSFTJob as error:
            # The API server's schema let it through but the operator's own checks did not: say which field.
            self._condition(st.CREATED, False, "InvalidSpec", str(error))
            self._finish(False, "InvalidSpec", str(error))
            return
        self._ensure_shared_objects(rendered, current)

        missing = [pod for rank, pod in enumerate(rendered.pods) if rank not in current]
        if missing:
            for pod in missing:
                self.result.actions.append(CreateObject(pod))
            if self._condition_reason(st.CREATED) != "Restarting":
                self._set_phase(st.PENDING)
            else:
                self._set_phase(st.RESTARTING)
            self._condition_keep_error(f"creating {len(missing)} of {len(rendered.pods)} pod(s) for gang attempt {self.attempt}")
            return

        if not self._has_condition(st.CREATED):
            text = f"gang attempt {self.attempt}: {len(rendered.pods)} pod(s), rdzv_id {self.status['rdzvId']}"
            self._condition(st.CREATED, True, "GangCreated", text)
            self._event("Normal", "GangCreated", text)
        if not any(scheduling_gates(pod) for pod in current.values()) and "startTime" not in self.status:
            # Started = admitted (as a batch/v1 Job under Kueue): time held at the gates, queued, does not count.
            self.status["startTime"] = st.format_time(self.now)
        if self._scheduling(current):
            return
        # Ranks that already finished successfully wait for the others: the gang still runs.
        if all(_phase(pod) in ("Running", "Succeeded") for pod in current.values()):
            # No event: a gang start posts one (GangCreated); Running is the phase and its condition's transition.
            self._set_phase("Running")
            self._condition(st.RUNNING, True, "AllPodsRunning", f"all {len(current)} pod(s) of gang attempt {self.attempt} are running")
            self._update_progress()
        else:
            waiting = sum(1 for pod in current.values() if _phase(pod) not in ("Running", "Succeeded"))
            self._set_phase(st.PENDING)
            blocked = [(rank, pod, message) for rank, pod in sorted(current.items()) if (message := port_conflict(pod))]
            if blocked:
                rank, pod, scheduler_message = blocked[0]
                ports = ", ".join(str(p) for p in _host_ports(pod))
                text = (
                    f"rank {rank} cannot be placed: port {ports} (spec.rdzvPort) is taken on the host "
                    "network of the nodes that would fit it (another pod with hostNetwork or a hostPort holds it); "
                    f"it waits until the port is free, or set another spec.rdzvPort. Scheduler: {scheduler_message}"
                )
                if self._condition_reason(st.RUNNING) != REASON_PORT_IN_USE:
                    self._event("Warning", REASON_PORT_IN_USE, text)
                self._condition(st.RUNNING, False, REASON_PORT_IN_USE, text)
            elif self._condition_reason(st.RUNNING) is not None:
                self._condition(st.RUNNING, False, "PodsPending", f"{waiting} pod(s) not running yet")
        self._deadline_requeue()

    def _ensure_shared_objects(self, rendered: Any, current: Mapping[int, Mapping[str, Any]]) -> None:
        """The rank-0 Service and the params ConfigMap, before any pod that uses them."""
        if self.observed.service is None:
            self.result.actions.append(CreateObject(rendered.service))
        desired_data = (rendered.configmap or {}).get("data") or {}
        if self.observed.configmap is None:
            self.result.actions.append(CreateObject(rendered.configmap))
        elif not current and dict(self.observed.configmap.get("data") or {}) != dict(desired_data):
            # Parameters may change while suspended/between gangs; a gang must start from the current spec.
            self.result.actions.append(ReplaceConfigMapData(rendered.configmap["metadata"]["name"], desired_data))

    def _scheduling(self, current: Mapping[int, Mapping[str, Any]]) -> bool:
        """The Scheduled condition: every pod bound to a node, or why not. True when the job failed for it
        (unschedulableTimeoutSeconds)."""
        pods = list(current.values())
        waiting: tuple[str, str] | None = None
        if any(kueue_gated(pod) for pod in pods):
            queue = next((q for q in ((p["metadata"].get("labels") or {}).get(labels.KUEUE_QUEUE_NAME) for p in pods) if q), None)
            waiting = kueue_wait(self.observed.workload, queue)
            self.result.requeue(self.policy.queued_recheck_seconds)  # Kueue's reason changes without a pod event
        elif any(scheduling_gates(pod) for pod in pods):
            gated = next(pod for pod in pods if scheduling_gates(pod))
            waiting = SCHEDULING_GATED, f"pod {gated['metadata']['name']} waits for its scheduling gates: {', '.join(scheduling_gates(gated))}"
        else:
            waiting = scheduler_wait(pods)
        previous = st.find_condition(self.old.get("conditions"), st.SCHEDULED) or {}
        if waiting is None:
            bound = sum(1 for pod in pods if (pod.get("spec") or {}).get("nodeName"))
            if bound == len(pods):
                self._condition(st.SCHEDULED, True, "AllPodsScheduled", f"all {bound} pod(s) of gang attempt {self.attempt} have a node")
            else:
                self._condition(st.SCHEDULED, False, "Scheduling", f"{bound} of {len(pods)} pod(s) have a node")
            self.status.pop("unschedulableSince", None)
            return False
        reason, message = waiting
        self._condition(st.SCHEDULED, False, reason, message)
        if previous.get("reason") != reason:
            self._event("Normal" if reason == QUEUED else "Warning", reason, message)
        if reason not in UNFIT_REASONS:
            self.status.pop("unschedulableSince", None)
            return False
        since = st.parse_time(self.status.get("unschedulableSince"))
        if since is None:
            since = self.now
            self.status["unschedulableSince"] = st.format_time(since)
        timeout = self.run_policy.unschedulable_timeout_seconds
        if timeout is None:
            return False
        left = (since + timedelta(seconds=int(timeout)) - self.now).total_seconds()
        if left > 0:
            self.result.requeue(left)
            return False
        self._condition(st.CREATED, False, reason, message)
        self._finish(False, reason, f"{message} (for {int(timeout)}s: unschedulableTimeoutSeconds)")
        return True

    def _deadline_requeue(self) -> None:
        deadline = self.run_policy.active_deadline_seconds
        started = st.parse_time(self.status.get("startTime"))
        if deadline is not None and started is not None:
            self.result.requeue((started + timedelta(seconds=int(deadline)) - self.now).total_seconds())

    def _update_progress(self) -> None:
        self.result.requeue(self.policy.progress_interval_seconds)
        record = st.parse_progress_line(self.observed.rank0_log_tail)
        if record is None:
            return
        progress = st.progress_status(record, self.now)
        previous = self.status.get("progress") or {}
        if {k: v for k, v in progress.items() if k != "updatedAt"} == {k: v for k, v in previous.items() if k != "updatedAt"}:
            return  # unchanged: keep updatedAt (when it last moved) and write nothing
        self.status["progress"] = progress
        self.status["progressText"] = st.progress_text(progress)


# What the status remembers (the operator's memory: a crash must never lose it) as opposed to what it reports.
_MEMORY = ("attempt", "restarts", "lastFailure", "startTime", "completionTime", "unschedulableSince", "summary", "progress")


def _remembered(status: Mapping[str, Any], key: str) -> Any:
    value = status.get(key)
    return int(value or 0) if key in ("attempt", "restarts") else value


def _remembers_the_same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return all(_remembered(old, key) == _remembered(new, key) for key in _MEMORY)


def status_can_wait(old: Mapping[str, Any] | None, result: Result) -> bool:
    """Whether the new status may be written after the actions instead of before: only when the actions are creates
    and the status merely reports them ("creating"), remembering nothing new and announcing nothing. The look that
    sees the created objects writes the status then (one patch per gang start instead of two); a crash in between
    loses nothing, since that look redoes the decision from what exists."""
    old = old or {}
    if not result.actions or result.events or not all(isinstance(action, CreateObject) for action in result.actions):
        return False
    if result.status.get("phase") in st.FINISHED_PHASES or (old.get("phase") and old["phase"] != result.status.get("phase")):
        return False
    return _remembers_the_same(old, result.status)


def status_only_reports(old: Mapping[str, Any] | None, result: Result) -> bool:
    """Whether the new status only reports how far a phase has got ("2 of 4 pod(s) have a node", nodes 1/4, a
    condition's message or status within the phase): no action, no event, the same phase, nothing remembered
    changed. Such writes may be spaced out (the handler writes them at most once per status report interval, as the
    Job controller batches a Job's pod updates): a gang start under load goes through several of them in a second,
    each one a status patch and an SFTJob watch event for every client."""
    old = old or {}
    if result.actions or result.events or old.get("phase") != result.status.get("phase"):
        return False
    return _remembers_the_same(old, result.status)


def decides_for_good(old: Mapping[str, Any] | None, result: Result) -> bool:
    """Whether the result restarts or ends the gang (a new attempt, a counted restart, a finished job): decisions
    the handler takes only from pods it has just LISTed, never from a cache that a lost watch event left stale."""
    old = old or {}
    return (
        result.restarted_for is not None
        or any(_remembered(old, key) != _remembered(result.status, key) for key in ("attempt", "restarts"))
        or (result.status.get("phase") in st.FINISHED_PHASES and old.get("phase") not in st.FINISHED_PHASES)
    )


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch (RFC 7386) turning `old` status into `new`, or None when they are equal.

    Nested objects are patched key by key, with removed keys set to null (a merge patch would otherwise keep them:
    e.g. an old lastFailure.exitCode under a new failure that has none). Lists are replaced whole.
    """
    patch = _merge_patch(old or {}, new)
    return patch or None


def _merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, Mapping) and isinstance(previous, Mapping):
            nested = _merge_patch(previous, value)
            if nested:
                patch[key] = nested
        elif previous != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
