"""The operator under real Kueue (v0.17, plain-pod integration; tests/support/kueue.py): admission of a gang, a gang
queued with its reason, one that can never fit, and every way a gang ends (restart, suspend, delete, deadline,
TTL, success, backoffLimit) giving its quota back. Each test has a ClusterQueue of 16 GPUs of its own (the
`kueue_namespace` fixture); the operator's pool has 4 nodes x 8 GPUs.

kwok only removes deleted pods that have no finalizer; Kueue keeps one on its pods until their group finishes. A
kubelet would stop such a pod and report it terminated: `KubeletEndsDeletedPods` does that part here. The times from
a gang's end to its quota being free are printed (`-s`) and recorded in the closing note of issue 10."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cluster.operator_harness import (
    KubeletEndsDeletedPods,
    OperatorProcess,
    apply,
    condition,
    describe_job,
    get_job,
    job_pods,
    sftjob,
    wait_gang_running,
    wait_phase,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.kueue]
QUEUE = "gpu-queue"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@pytest.fixture
def operator(operator_pool, cluster, kueue_namespace, kueue, tmp_path: Path):
    process = OperatorProcess(cluster, [kueue_namespace], tmp_path / "operator.log",
                              env={"SFTJOB_OPERATOR_QUEUED_RECHECK_SECONDS": "1"}).start()
    yield process
    process.stop()
    print(f"--- operator log ({kueue_namespace}) ---\n{process.log_tail(60)}")
    print(f"--- kueue log ---\n{kueue.log_tail(30)}")


def queued_job(name: str, namespace: str, *, nnodes: int = 2, **spec) -> dict:
    job = sftjob(name, namespace, nnodes=nnodes, nproc_per_node=8, **spec)
    job["metadata"]["labels"] = {QUEUE_LABEL: QUEUE}
    return job


def reason(cluster, namespace: str, name: str) -> tuple[str | None, str]:
    """What `kubectl get sftjobs` shows in its Reason column, and the Scheduled condition's message."""
    job = get_job(cluster, namespace, name)
    ready = condition(job, "Ready") or {}
    return ready.get("reason"), (condition(job, "Scheduled") or {}).get("message", "")


def wait_reason(cluster, namespace: str, name: str, wanted: str, timeout: float = 60) -> str:
    wait_until(lambda: reason(cluster, namespace, name)[0] == wanted, timeout, f"{name} reason {wanted}",
               describe=describe_job(cluster, namespace, name))
    return reason(cluster, namespace, name)[1]


def wait_quota(kueue, cluster_queue: str, gpus: int, timeout: float = 60) -> float:
    """Waits until the ClusterQueue's reserved GPUs equal `gpus`; returns when (monotonic)."""
    wait_until(lambda: kueue.gpus_reserved(cluster_queue) == gpus, timeout, f"{gpus} GPUs reserved in {cluster_queue}",
               interval=0.1, describe=lambda: json.dumps(kueue.cluster.kubectl_json("get", "clusterqueue", cluster_queue).get("status"), indent=1))
    return time.monotonic()


def group_released(kueue, namespace: str, group: str) -> bool:
    """Whether the pod group's Workload holds no quota any more: Finished, or already gone with its pods."""
    workload = next((w for w in kueue.workloads(namespace) if w["metadata"]["name"] == group), None)
    return workload is None or (condition(workload, "Finished") or {}).get("status") == "True"


def show(cluster, namespace: str, when: str) -> None:
    """What a user sees (printed with -s; quoted in the closing note of issue 10)."""
    print(f"\n--- kubectl get sftjobs -o wide ({when}) ---\n" + cluster.kubectl("get", "sftjobs", "-n", namespace, "-o", "wide").stdout)


def get_columns(cluster, namespace: str) -> dict[str, dict[str, str]]:
    """`kubectl get sftjobs` as {name: {column: value}}."""
    lines = cluster.kubectl("get", "sftjobs", "-n", namespace).stdout.splitlines()
    header = lines[0].split()
    return {row.split()[0]: dict(zip(header, row.split())) for row in lines[1:]}


def finish_pods(cluster, namespace: str, name: str, exit_code: int = 0) -> None:
    for pod in job_pods(cluster, namespace, name):
        if not pod["metadata"].get("deletionTimestamp"):
            cluster.set_pod_terminated(namespace, pod["metadata"]["name"], exit_code)


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_gang_admitted_whole_then_second_queued_with_reason_deadline_not_counting_queue_and_ttl(
    cluster, kueue, kueue_namespace, operator
):
    ns, cq = kueue_namespace, kueue_namespace
    with KubeletEndsDeletedPods(cluster, ns):
        apply(cluster, queued_job("first", ns, ttlSecondsAfterFinished=2))
        pods = wait_gang_running(cluster, ns, "first", 2)
        # Admitted as one group of its own, not retriable (the operator replaces gangs, not Kueue).
        assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods} == {"first-a0"}
        assert {p["metadata"]["annotations"]["kueue.x-k8s.io/retriable-in-group"] for p in pods} == {"false"}
        assert all(not p["spec"].get("schedulingGates") for p in pods)
        wait_quota(kueue, cq, 16)
        first = wait_until(lambda: (j := get_job(cluster, ns, "first")) and condition(j, "Scheduled")
                           and condition(j, "Scheduled")["status"] == "True" and j, 30, "first Scheduled")
        assert first["status"]["startTime"]

        # A second gang waits at the gates: the job says so, with the queue and Kueue's reason.
        apply(cluster, queued_job("second", ns, activeDeadlineSeconds=8))
        wait_reason(cluster, ns, "second", "Queued")  # at first maybe without Kueue's reason: no Workload yet
        message = wait_until(lambda: (m := reason(cluster, ns, "second")[1]) and "more needed" in m and m, 30,
                             "Kueue's reason", describe=describe_job(cluster, ns, "second"))
        assert f"queue {QUEUE}" in message and "insufficient unused quota for nvidia.com/gpu" in message, message
        show(cluster, ns, "a gang running, one queued")
        row = get_columns(cluster, ns)["second"]
        assert row["PHASE"] == "Pending" and row["REASON"] == "Queued" and row["NODES"] == "0/2"
        describe = cluster.kubectl("describe", "sftjob", "second", "-n", ns).stdout
        assert "Queued" in describe and "more needed" in describe
        events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=second")["items"]
        assert any(e["reason"] == "Queued" and QUEUE in e["message"] for e in events)
        pods = job_pods(cluster, ns, "second")
        assert len(pods) == 2 and all(p["spec"].get("schedulingGates") for p in pods)

        # Longer in the queue than activeDeadlineSeconds: not failed, no startTime (time queued is not run time).
        time.sleep(10)
        second = get_job(cluster, ns, "second")
        assert second["status"]["phase"] == "Pending" and "startTime" not in second["status"], second["status"]

        # The first gang succeeds: its quota is free at once and the second is admitted.
        ended = time.monotonic()
        finish_pods(cluster, ns, "first")
        wait_phase(cluster, ns, "first", "Succeeded")
        wait_gang_running(cluster, ns, "second", 2, timeout=60)
        admitted = time.monotonic()
        print(f"\nsuccess -> next gang running: {admitted - ended:.1f} s")
        assert get_job(cluster, ns, "second")["status"]["startTime"]
        # TTL: the finished job and everything it owned go, its Workload included.
        wait_until(lambda: get_job(cluster, ns, "first") is None, 30, "first deleted by its TTL")
        wait_until(lambda: not job_pods(cluster, ns, "first"), 30, "first's pods gone")
        wait_until(lambda: not [w for w in kueue.workloads(ns) if w["metadata"]["name"] == "first-a0"], 30,
                   "first's Workload gone")

        # Now the deadline runs: the second fails DeadlineExceeded and its quota is given back.
        failed = wait_phase(cluster, ns, "second", "Failed", timeout=30)
        deadline_at = time.monotonic()
        assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"
        free = wait_quota(kueue, cq, 0, timeout=30)
        print(f"deadline -> quota free: {free - deadline_at:.1f} s")
        show(cluster, ns, "deadline")
        assert get_columns(cluster, ns)["second"]["REASON"] == "DeadlineExceeded"


@pytest.mark.timeout(180)
def test_a_gang_that_can_never_fit_says_inadmissible_and_fails_after_its_timeout(cluster, kueue, kueue_namespace, operator):
    ns = kueue_namespace
    apply(cluster, queued_job("huge", ns, nnodes=3, unschedulableTimeoutSeconds=6))  # 24 GPUs > 16
    message = wait_reason(cluster, ns, "huge", "Inadmissible")
    assert "maximum capacity" in message and f"queue {QUEUE}" in message, message
    show(cluster, ns, "never fits")
    assert get_columns(cluster, ns)["huge"]["REASON"] == "Inadmissible"
    failed = wait_phase(cluster, ns, "huge", "Failed", timeout=30)
    assert condition(failed, "Failed")["reason"] == "Inadmissible"
    assert "unschedulableTimeoutSeconds" in condition(failed, "Failed")["message"]
    assert condition(failed, "Stalled")["status"] == "True"
    # Its pods never got a node: the operator deletes their Workload and Kueue lets them go at once.
    wait_until(lambda: not job_pods(cluster, ns, "huge"), 20, "huge's pods gone", describe=describe_job(cluster, ns, "huge"))
    wait_until(lambda: not kueue.workloads(ns), 20, "huge's Workload gone")


@pytest.mark.timeout(240)
def test_restart_releases_the_quota_and_requeues_then_backoff_limit_fails(cluster, kueue, kueue_namespace, operator):
    ns, cq = kueue_namespace, kueue_namespace
    with KubeletEndsDeletedPods(cluster, ns) as kubelet:
        apply(cluster, queued_job("retry", ns, backoffLimit=1))
        wait_gang_running(cluster, ns, "retry", 2)
        wait_quota(kueue, cq, 16)

        failed_at = time.monotonic()
        cluster.set_pod_terminated(ns, "retry-node-1", 1)
        # The old group finishes once its pods have terminated (rank 0 is ended as its kubelet would):
        # no deadlock, and the new gang, a new group, goes back through the queue.
        wait_until(lambda: group_released(kueue, ns, "retry-a0"), 30, "retry-a0 finished", interval=0.1,
                   describe=lambda: json.dumps([(w["metadata"]["name"], w.get("status")) for w in kueue.workloads(ns)])
                   + describe_job(cluster, ns, "retry")())
        released = time.monotonic()
        pods = wait_gang_running(cluster, ns, "retry", 2, attempt=1, timeout=60)
        running = time.monotonic()
        print(f"\nrestart: failure -> old group's quota released {released - failed_at:.1f} s, -> new gang running "
              f"{running - failed_at:.1f} s")
        assert "retry-node-0" in kubelet.ended
        assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods} == {"retry-a1"}
        wait_quota(kueue, cq, 16)  # only the new gang holds quota
        job = get_job(cluster, ns, "retry")
        assert job["status"]["restarts"] == 1 and job["status"]["lastFailure"]["rank"] == 1

        # backoffLimit reached: Failed, and the quota goes back.
        cluster.set_pod_terminated(ns, "retry-node-0", 1)
        failed = wait_phase(cluster, ns, "retry", "Failed", timeout=30)
        ended = time.monotonic()
        assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"
        free = wait_quota(kueue, cq, 0, timeout=30)
        print(f"backoffLimit -> quota free: {free - ended:.1f} s")


@pytest.mark.timeout(240)
def test_suspend_gives_quota_back_a_suspended_job_is_never_admitted_and_resume_queues_again(
    cluster, kueue, kueue_namespace, operator
):
    ns, cq = kueue_namespace, kueue_namespace
    with KubeletEndsDeletedPods(cluster, ns):
        apply(cluster, queued_job("running", ns), queued_job("waiting", ns))
        wait_until(lambda: {reason(cluster, ns, n)[0] for n in ("running", "waiting")} == {"GangRunning", "Queued"},
                   60, "one gang running, one queued")
        active, queued = sorted(("running", "waiting"), key=lambda n: reason(cluster, ns, n)[0] != "GangRunning")

        # Suspending the queued job deletes its Workload: it can never be admitted later.
        cluster.kubectl("patch", "sftjob", queued, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        wait_phase(cluster, ns, queued, "Suspended", timeout=30)
        wait_until(lambda: not job_pods(cluster, ns, queued), 20, f"{queued}'s pods gone")
        assert not [w for w in kueue.workloads(ns) if w["metadata"]["name"].startswith(queued)]

        # Suspending the running job gives its quota back as soon as its pods have stopped.
        suspended_at = time.monotonic()
        cluster.kubectl("patch", "sftjob", active, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        free = wait_quota(kueue, cq, 0, timeout=30)
        print(f"\nsuspend -> quota free: {free - suspended_at:.1f} s")
        job = wait_phase(cluster, ns, active, "Suspended", timeout=30)
        wait_until(lambda: condition(get_job(cluster, ns, active), "Ready")["reason"] == "Suspended", 30, "suspend done")
        assert not job_pods(cluster, ns, active)
        # Nothing of either suspended job is admitted while the quota is free.
        time.sleep(3)
        assert kueue.gpus_reserved(cq) == 0 and not job_pods(cluster, ns, queued) and not job_pods(cluster, ns, active)
        assert not [w for w in kueue.workloads(ns) if not condition(w, "Finished")]
        assert condition(job, "Suspended")["status"] == "True"

        # Resume: a new gang (new group) queues again and is admitted.
        cluster.kubectl("patch", "sftjob", active, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        pods = wait_gang_running(cluster, ns, active, 2, attempt=1, timeout=60)
        assert {p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for p in pods} == {f"{active}-a1"}
        wait_quota(kueue, cq, 16)


@pytest.mark.timeout(240)
def test_delete_while_queued_and_while_running_frees_pods_workloads_and_quota(cluster, kueue, kueue_namespace, operator):
    ns, cq = kueue_namespace, kueue_namespace
    with KubeletEndsDeletedPods(cluster, ns):
        apply(cluster, queued_job("alpha", ns))
        wait_gang_running(cluster, ns, "alpha", 2)
        apply(cluster, queued_job("beta", ns))
        wait_reason(cluster, ns, "beta", "Queued")

        deleted_at = time.monotonic()
        cluster.kubectl("delete", "sftjob", "beta", "-n", ns, "--wait=false")
        wait_until(lambda: not job_pods(cluster, ns, "beta"), 30, "beta's pods gone", interval=0.1)
        wait_until(lambda: not [w for w in kueue.workloads(ns) if w["metadata"]["name"] == "beta-a0"], 30,
                   "beta's Workload gone", interval=0.1)
        print(f"\ndelete while queued -> pods and Workload gone: {time.monotonic() - deleted_at:.1f} s")

        deleted_at = time.monotonic()
        cluster.kubectl("delete", "sftjob", "alpha", "-n", ns, "--wait=false")
        free = wait_quota(kueue, cq, 0, timeout=30)
        wait_until(lambda: not job_pods(cluster, ns, "alpha"), 30, "alpha's pods gone", interval=0.1)
        wait_until(lambda: not kueue.workloads(ns), 30, "alpha's Workload gone", interval=0.1)
        print(f"delete while running -> quota free {free - deleted_at:.1f} s, pods and Workload gone "
              f"{time.monotonic() - deleted_at:.1f} s")


@pytest.mark.timeout(240)
def test_kueue_preempts_a_lower_priority_gang_which_restarts_uncounted_and_queues(cluster, kueue, kueue_namespace, operator):
    ns = kueue_namespace
    kueue.create_queues(ns, preemption={"withinClusterQueue": "LowerPriority"})
    classes = [{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": f"th-test-{n}"},
                "value": v, "preemptionPolicy": "Never"} for n, v in (("low", 10), ("high", 1000))]
    apply(cluster, *classes)
    with KubeletEndsDeletedPods(cluster, ns):
        apply(cluster, queued_job("low", ns, priorityClassName="th-test-low"))
        wait_gang_running(cluster, ns, "low", 2)
        apply(cluster, queued_job("high", ns, priorityClassName="th-test-high"))
        wait_gang_running(cluster, ns, "high", 2, timeout=90)
        low = wait_until(lambda: (j := get_job(cluster, ns, "low")) and j["status"].get("attempt") == 1
                         and condition(j, "Ready")["reason"] == "Queued" and j, 60, "low requeued",
                         describe=describe_job(cluster, ns, "low"))
        assert low["status"]["restarts"] == 0, "a preemption is not the training's fault"
        # Kueue's own reason and message (it stops the pods with its TerminationTarget condition).
        assert low["status"]["lastFailure"]["reason"] == "WorkloadEvictedDueToPreempted", low["status"]["lastFailure"]
        assert "Preempted to accommodate a workload" in low["status"]["lastFailure"]["message"]


@pytest.mark.timeout(240)
def test_the_kueue_example_runs_as_written(cluster, kueue, kueue_namespace, operator):
    """examples/sftjob-suspend-kueue.yaml, unchanged: suspended, then resumed, queued, admitted, running; then
    suspended again with its quota given back."""
    from tests.cluster.operator_harness import delete_pv, shared_volume

    ns, cq = kueue_namespace, kueue_namespace
    example = Path(__file__).resolve().parents[2] / "examples" / "sftjob-suspend-kueue.yaml"
    name = "mistral-sft-queued"
    shared_volume(cluster, ns, claim="shared-training")
    try:
        with KubeletEndsDeletedPods(cluster, ns):
            cluster.kubectl("apply", "-n", ns, "-f", str(example))
            wait_phase(cluster, ns, name, "Suspended")
            assert get_columns(cluster, ns)[name]["PHASE"] == "Suspended"
            assert not kueue.workloads(ns) and not job_pods(cluster, ns, name)

            cluster.kubectl("patch", "sftjob", name, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
            # The data is prepared first, on CPU, outside Kueue's pod group (kwok runs no container: end it as
            # its kubelet would once it ran).
            prepare = f"{name}-prepare-0"
            cluster.wait_for_pod(ns, prepare, lambda p: (p.get("status") or {}).get("phase") == "Running", timeout=60)
            assert QUEUE_LABEL not in cluster.kubectl_json("get", "pod", prepare, "-n", ns)["metadata"]["labels"]
            cluster.set_pod_terminated(ns, prepare, 0)
            def gang():
                return [p for p in job_pods(cluster, ns, name) if "training-hub.io/role" not in p["metadata"]["labels"]]

            pods = wait_until(lambda: len(gang()) == 2 and all((p.get("status") or {}).get("phase") == "Running"
                                                                 for p in gang()) and gang(),
                              60, "example gang running", describe=describe_job(cluster, ns, name))
            assert {p["metadata"]["labels"][QUEUE_LABEL] for p in pods} == {QUEUE}
            assert len(pods) == 2
            wait_quota(kueue, cq, 16)
            wait_phase(cluster, ns, name, "Running")
            assert get_columns(cluster, ns)[name]["REASON"] == "GangRunning"

            cluster.kubectl("patch", "sftjob", name, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
            wait_quota(kueue, cq, 0, timeout=30)
            wait_phase(cluster, ns, name, "Suspended")
    finally:
        delete_pv(cluster, ns, claim="shared-training")
