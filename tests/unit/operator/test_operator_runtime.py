"""The operator's runtime settings (environment) and metrics, without a cluster."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import generate_latest

from sftjob_operator.handlers import RuntimeSettings, _newer, reconcile_policy_from_env
from sftjob_operator.metrics import OperatorMetrics
from sftjob_operator import reconcile as rc


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


def test_the_api_transport_is_direct_unless_the_client_is_asked_for():
    assert RuntimeSettings.from_env({}).api_transport == "direct"
    assert RuntimeSettings.from_env({"SFTJOB_OPERATOR_API_TRANSPORT": "client"}).api_transport == "client"
    with pytest.raises(ValueError, match="SFTJOB_OPERATOR_API_TRANSPORT: must be one of direct, client \\(got 'urllib3'\\)"):
        RuntimeSettings.from_env({"SFTJOB_OPERATOR_API_TRANSPORT": "urllib3"})


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


# --- one reconciliation's API requests (handlers.JobReconciler with an API that records what it is asked) --------


class RecordingKube:
    """Answers as the API server would for one namespace, and records every request as (verb, resource)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.objects: dict[tuple[str, str], dict] = {}  # (kind, name) -> object
        self.version = 100

    def _stamp(self, body: dict) -> dict:
        self.version += 1
        body = json.loads(json.dumps(body))
        body["metadata"].update(namespace="ns", resourceVersion=str(self.version), uid=f"uid-{self.version}")
        return body

    def create(self, namespace, body):
        self.requests.append(("create", body["kind"]))
        key = (body["kind"], body["metadata"]["name"])
        if key in self.objects:
            return None
        self.objects[key] = self._stamp(body)
        return self.objects[key]

    def list_job_pods_at(self, namespace, job_name):
        self.requests.append(("list", "Pod"))
        return [o for (kind, _), o in self.objects.items() if kind == "Pod"], str(self.version)

    def get_configmap(self, namespace, name):
        self.requests.append(("get", "ConfigMap"))
        return self.objects.get(("ConfigMap", name))

    def replace_configmap_data(self, namespace, name, data, current=None):
        if current is None:
            self.requests.append(("get", "ConfigMap"))
        self.requests.append(("patch", "ConfigMap"))
        self.objects[("ConfigMap", name)]["data"] = dict(data)

    def patch_job_status(self, namespace, name, patch, resource_version):
        self.requests.append(("patch", "SFTJob/status"))
        job = self.objects[("SFTJob", name)]
        job["status"] = {**job.get("status", {}), **{k: v for k, v in patch.items() if v is not None}}
        job["metadata"]["resourceVersion"] = str(self.version + 1)
        self.version += 1
        return json.loads(json.dumps(job))

    def post_event(self, job, type_, reason, message, *, component):
        self.requests.append(("create", f"Event {reason}"))

    def read_log_tail(self, namespace, pod_name):
        self.requests.append(("get", "Pod/log"))
        return None


def _reconciler(kube: RecordingKube):
    from sftjob_operator.config import OperatorConfig
    from sftjob_operator.handlers import JobReconciler
    job = {"apiVersion": "training-hub.io/v1alpha1", "kind": "SFTJob",
           "metadata": {"name": "train", "namespace": "ns", "uid": "job-uid", "generation": 1},
           "spec": {"nnodes": 4, "nprocPerNode": 8, "prepare": {"enabled": False},
                    "training": {"modelPath": "/m", "dataPath": "/d.jsonl", "ckptOutputDir": "/c", "numEpochs": 1,
                                 "effectiveBatchSize": 8, "learningRate": 1e-5, "maxSeqLen": 512}}}
    kube.objects[("SFTJob", "train")] = kube._stamp(job)
    reconciler = JobReconciler(kube=kube, config=OperatorConfig(), settings=RuntimeSettings(workers=4))
    return reconciler


def _run(reconciler, pod_events=()):
    """Feed the watch events, then reconcile the job once (its body as the watch last delivered it)."""
    for event_type, pod in pod_events:
        reconciler.pod_cache.observe(event_type, pod)
    return reconciler.reconcile_now(("ns", "train"))


def _watched(reconciler, kube):
    """The job as created while the operator watched (an ADDED event): its pods all come from the watch."""
    from sftjob_operator.handlers import _JobState

    reconciler.jobs[("ns", "train")] = state = _JobState.holding(kube.objects[("SFTJob", "train")])
    state.pods_trusted_since = reconciler.pod_cache.listings
    return state


def test_a_gang_start_is_six_concurrent_creates_then_one_status_write_and_one_event():
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    state = _watched(reconciler, kube)
    requeue = reconciler.reconcile_now(("ns", "train"))
    assert sorted(kube.requests) == sorted([("create", "Service"), ("create", "ConfigMap")] + [("create", "Pod")] * 4)
    assert requeue == reconciler.settings.debounce_seconds  # the look that writes the status comes next
    kube.requests.clear()
    running = []
    for (kind, _), pod in list(kube.objects.items()):
        if kind == "Pod":
            pod = json.loads(json.dumps(pod))
            pod["spec"]["nodeName"] = "gpu-1"
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 50)
            running.append(("MODIFIED", pod))
    _run(reconciler, running)
    assert kube.requests == [("patch", "SFTJob/status"), ("create", "Event GangCreated")]
    assert state.body["status"]["phase"] == "Running"
    kube.requests.clear()
    _run(reconciler)  # nothing changed: nothing to say, no log read before rank 0 ran a progress interval
    assert kube.requests == []
    reconciler.policy = rc.ReconcilePolicy(progress_interval_seconds=0.05)
    time.sleep(0.06)
    _run(reconciler)  # an interval later: rank 0's log, once per interval
    _run(reconciler)
    assert kube.requests == [("get", "Pod/log")]
    reconciler.close()


def test_a_restart_decided_from_the_cache_is_checked_with_a_list_first():
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    state = _watched(reconciler, kube)
    reconciler.reconcile_now(("ns", "train"))
    _run(reconciler)  # Created=True from the pods the creates answered
    assert state.body["status"]["conditions"]
    # The cache lost rank 3 (say, its DELETED came for an older pod of that name): the gang looks broken ...
    pods = reconciler.pod_cache._pods[("ns", "train")]
    del pods["train-node-3"]
    kube.requests.clear()
    _run(reconciler)
    # ... but a LIST shows all four: no restart, no delete, nothing written.
    assert kube.requests == [("list", "Pod")]
    assert state.body["status"].get("attempt", 0) == 0 and len(reconciler.pod_cache.pods(("ns", "train"))) == 4
    reconciler.close()


def test_an_existing_configmap_with_other_data_is_replaced_before_the_pods_are_created():
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    kube.objects[("ConfigMap", "train-params")] = kube._stamp(
        {"kind": "ConfigMap", "metadata": {"name": "train-params"}, "data": {"params.json": "{}"}})
    state = _watched(reconciler, kube)
    reconciler.reconcile_now(("ns", "train"))
    assert kube.requests[:2] in ([("create", "Service"), ("create", "ConfigMap")], [("create", "ConfigMap"), ("create", "Service")])
    # Read once (its create said it exists), decided again: status first (not only "creating" now), data, pods.
    assert kube.requests[2:] == [("get", "ConfigMap"), ("patch", "SFTJob/status"), ("patch", "ConfigMap")] + [("create", "Pod")] * 4
    assert kube.objects[("ConfigMap", "train-params")]["data"] != {"params.json": "{}"}
    reconciler.close()


def test_a_status_that_only_reports_progress_waits_for_the_report_interval_a_new_phase_does_not():
    kube = RecordingKube()
    reconciler = _reconciler(kube)
    state = _watched(reconciler, kube)
    reconciler.reconcile_now(("ns", "train"))  # the creates
    _run(reconciler)  # the pods exist, none has a node: Created, Pending (and its event), written at once

    def pods_with(node_names: int, running: bool = False):
        events = []
        for (kind, _), pod in list(kube.objects.items()):
            if kind != "Pod":
                continue
            pod = json.loads(json.dumps(pod))
            rank = int(pod["metadata"]["name"].rsplit("-", 1)[1])
            if rank < node_names:
                pod["spec"]["nodeName"] = "gpu-1"
            if running:
                pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            kube.version += 1
            pod["metadata"]["resourceVersion"] = str(kube.version)
            events.append(("MODIFIED", pod))
        return events

    reconciler.settings.status_report_seconds = 0.3
    kube.requests.clear()
    requeue = _run(reconciler, pods_with(2))  # "2 of 4 pod(s) have a node": only a report, within the interval
    assert kube.requests == [] and 0 < requeue <= 0.3
    assert state.body["status"]["phase"] == "Pending"
    time.sleep(requeue)
    _run(reconciler)  # the requeued look: the interval has passed, the report is written
    assert kube.requests == [("patch", "SFTJob/status")]
    assert rc.status_patch({}, state.body["status"])["conditions"]
    scheduled = [c for c in state.body["status"]["conditions"] if c["type"] == "Scheduled"]
    assert scheduled[0]["message"] == "2 of 4 pod(s) have a node"
    kube.requests.clear()
    _run(reconciler, pods_with(4, running=True))  # a new phase: written at once, though within the interval
    assert kube.requests == [("patch", "SFTJob/status")] and state.body["status"]["phase"] == "Running"
    reconciler.close()

    kube = RecordingKube()
    reconciler = _reconciler(kube)
    reconciler.settings.status_report_seconds = 0  # no spacing: every report is written
    state = _watched(reconciler, kube)
    reconciler.reconcile_now(("ns", "train"))
    _run(reconciler)
    kube.requests.clear()
    _run(reconciler, pods_with(2))
    assert kube.requests == [("patch", "SFTJob/status")]
    reconciler.close()


def test_a_resync_looks_from_the_cache_and_reads_the_api_only_every_reread_period():
    import asyncio

    from sftjob_operator.handlers import _resync_forever

    class Recorder:
        settings = RuntimeSettings(resync_seconds=0.05, reread_seconds=0.2)

        def __init__(self) -> None:
            self.calls: list[tuple[float, bool, float]] = []

        def resync_all(self, *, reread: bool, spread: float) -> None:
            self.calls.append((asyncio.get_running_loop().time(), reread, spread))

    async def run_for(seconds: float) -> list[tuple[float, bool, float]]:
        recorder = Recorder()
        task = asyncio.ensure_future(_resync_forever(recorder))
        await asyncio.sleep(seconds)
        task.cancel()
        return recorder.calls

    calls = asyncio.run(run_for(1.0))
    rereads = [at for at, reread, _ in calls if reread]
    assert len(rereads) >= 2 and len(calls) >= 2 * len(rereads), calls  # most looks read nothing
    assert all(later - earlier >= 0.17 for earlier, later in zip(rereads, rereads[1:])), rereads
    assert all(spread == (0.025 if reread else 1.0) for _, reread, spread in calls)


def test_only_a_rereading_resync_makes_the_next_look_read_the_job_and_its_pods():
    import asyncio

    from sftjob_operator.handlers import _JobState

    async def resync(reread: bool) -> bool:
        kube = RecordingKube()
        reconciler = _reconciler(kube)
        reconciler.jobs[("ns", "train")] = state = _JobState.holding(kube.objects[("SFTJob", "train")])
        reconciler.resync_all(reread=reread)
        scheduled = state.handle is not None
        reconciler.close()
        assert scheduled
        return state.refresh

    assert asyncio.run(resync(reread=True)) is True
    assert asyncio.run(resync(reread=False)) is False


def test_a_new_jobs_first_gang_is_created_in_one_round_trip_service_configmap_and_pods_at_once():
    import threading

    class SlowConfigMapKube(RecordingKube):
        """The ConfigMap's create answers only once a pod create has arrived: sequential creates would deadlock."""

        def __init__(self) -> None:
            super().__init__()
            self.pod_arrived = threading.Event()

        def create(self, namespace, body):
            if body["kind"] == "Pod":
                self.pod_arrived.set()
            elif body["kind"] == "ConfigMap":
                assert self.pod_arrived.wait(5), "the pods waited for the ConfigMap"
            return super().create(namespace, body)

    import asyncio

    kube = SlowConfigMapKube()
    reconciler = _reconciler(kube)

    async def added_then_reconciled():
        reconciler.job_event("ADDED", kube.objects[("SFTJob", "train")])  # created while watched: fresh
        state = reconciler.jobs[("ns", "train")]
        state.handle.cancel()  # reconciled here instead, in this thread
        assert state.fresh
        reconciler.reconcile_now(("ns", "train"))
        return state

    state = asyncio.run(added_then_reconciled())
    assert sorted(kube.requests) == sorted([("create", "Service"), ("create", "ConfigMap")] + [("create", "Pod")] * 4)
    assert not state.fresh  # later gangs (restarts) create the Service and ConfigMap first again
    reconciler.close()


def test_a_new_jobs_configmap_left_by_a_deleted_namesake_gets_its_data_replaced_in_the_same_look():
    kube = RecordingKube()
    kube.objects[("ConfigMap", "train-params")] = kube._stamp(
        {"kind": "ConfigMap", "metadata": {"name": "train-params"}, "data": {"params.json": "{}"}})
    reconciler = _reconciler(kube)
    state = _watched(reconciler, kube)
    state.fresh = True
    reconciler.reconcile_now(("ns", "train"))
    creates = [r for r in kube.requests if r[0] == "create"]
    assert sorted(creates) == sorted([("create", "Service"), ("create", "ConfigMap")] + [("create", "Pod")] * 4)
    assert kube.requests[len(creates):] == [("get", "ConfigMap"), ("patch", "ConfigMap")]
    assert kube.objects[("ConfigMap", "train-params")]["data"] != {"params.json": "{}"}
    reconciler.close()


# --- new jobs first (handlers.JobReconciler._waits_for_starts) ------------------------------------------------------


def _looks_in_order(starts_first_seconds: float, look_seconds: float, new=("new-1", "new-2")) -> list[tuple[str, str, float]]:
    """An old job's look is due, then jobs are created (ADDED): which looks start and end when."""
    import asyncio
    import threading

    from sftjob_operator.handlers import _JobState

    reconciler = _reconciler(RecordingKube())
    reconciler.settings = RuntimeSettings(workers=4, starts_first_seconds=starts_first_seconds)
    seen: list[tuple[str, str, float]] = []
    lock = threading.Lock()
    started = time.monotonic()

    def look(key):
        with lock:
            seen.append(("start", key[1], time.monotonic() - started))
        time.sleep(look_seconds)
        with lock:
            seen.append(("end", key[1], time.monotonic() - started))

    reconciler.reconcile_now = look

    async def scenario():
        reconciler._loop = asyncio.get_running_loop()
        reconciler.jobs[("ns", "old")] = _JobState.holding({"metadata": {"namespace": "ns", "name": "old", "resourceVersion": "1"}})
        reconciler.trigger(("ns", "old"))
        for name in new:
            reconciler.job_event("ADDED", {"metadata": {"namespace": "ns", "name": name, "resourceVersion": "2"}})
        while len(seen) < 2 * (1 + len(new)):
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    reconciler.close()
    return seen


def test_a_burst_of_new_jobs_is_looked_at_before_the_others():
    from sftjob_operator.handlers import BURST_GAP_SECONDS

    seen = _looks_in_order(starts_first_seconds=5, look_seconds=0.05)
    old_start = next(t for what, name, t in seen if what == "start" and name == "old")
    new_ends = [t for what, name, t in seen if what == "end" and name != "old"]
    # Released once they are done and no new job came for BURST_GAP_SECONDS (more may be arriving), not at 5 s.
    assert len(new_ends) == 2 and old_start >= max(new_ends) and old_start >= BURST_GAP_SECONDS
    assert old_start < 1.5


def test_a_single_new_job_holds_the_others_only_for_its_first_look():
    seen = _looks_in_order(starts_first_seconds=5, look_seconds=0.05, new=("new-1",))
    old_start = next(t for what, name, t in seen if what == "start" and name == "old")
    new_end = next(t for what, name, t in seen if what == "end" and name == "new-1")
    assert new_end <= old_start < new_end + 0.2


def test_the_others_wait_no_longer_than_the_bound():
    seen = _looks_in_order(starts_first_seconds=0.1, look_seconds=0.5)
    old_start = next(t for what, name, t in seen if what == "start" and name == "old")
    new_ends = [t for what, name, t in seen if what == "end" and name != "old"]
    assert 0.1 <= old_start < min(new_ends)
    seen = _looks_in_order(starts_first_seconds=0, look_seconds=0.2)  # off: in the order they came
    assert [name for what, name, _ in seen if what == "start"][0] == "old"


def test_pods_of_a_job_the_operator_does_not_know_cause_no_look_unless_kueue_holds_them():
    """A mass delete brings each pod's events after its job's DELETED: no GET and LIST of a job that is gone. A
    Kueue-managed pod without a node still gets its look (its Workload is released: _release_orphans)."""
    import asyncio

    reconciler = _reconciler(RecordingKube())

    def pod(name, **meta):
        return {"metadata": {"namespace": "ns", "name": f"{name}-node-0", "uid": f"u-{name}", "resourceVersion": "5",
                             "labels": {"training-hub.io/job-name": name}, **meta}, "spec": {}, "status": {}}

    async def scenario():
        reconciler._loop = asyncio.get_running_loop()
        reconciler.pod_event("MODIFIED", pod("gone", deletionTimestamp="2026-11-29T10:00:00Z"))
        reconciler.pod_event("MODIFIED", pod("held", finalizers=["kueue.x-k8s.io/managed"]))
        return set(reconciler.jobs)

    assert asyncio.run(scenario()) == {("ns", "held")}
    assert len(reconciler.pod_cache.pods(("ns", "gone"))) == 1  # still cached (the orphan sweep looks there)
    reconciler.close()
