"""Unit tests of the pure reconciler: every gang rule, driven step by step as the operator would drive it."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from sftjob_operator import labels
from sftjob_operator import reconcile as rc
from sftjob_operator import status as st
from sftjob_operator.config import OperatorConfig
from sftjob_operator.render import new_rdzv_id

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
CONFIG = OperatorConfig(force_delete_after_s=120)
POLICY = rc.ReconcilePolicy(restart_backoff_seconds=10, restart_backoff_max_seconds=60, progress_interval_seconds=30)
UID = "7d0c5d1e-0000-4000-8000-000000000001"
PRESENT = {"metadata": {"name": "x"}}
MISSING = object()


def make_job(nnodes: int = 4, status: dict | None = None, generation: int = 1, **spec) -> dict:
    body = {
        "apiVersion": "training-hub.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "train", "namespace": "ns", "uid": UID, "generation": generation, "resourceVersion": "1"},
        "spec": {
            "nnodes": nnodes,
            "nprocPerNode": 8,
            "training": {
                "modelPath": "/models/m",
                "dataPath": "/data/d.jsonl",
                "ckptOutputDir": "/ckpt",
                "numEpochs": 2,
                "effectiveBatchSize": 16,
                "learningRate": 1e-5,
                "maxSeqLen": 512,
            },
            # The gang rules below start from an attempt's gang; the prepare pod before it has tests of its own.
            "prepare": {"enabled": False},
            **spec,
        },
    }
    if status is not None:
        body["status"] = status
    return body


def make_pod(
    rank: int,
    attempt: int = 0,
    phase: str = "Running",
    *,
    ready: bool = True,
    exit_code: int | None = None,
    container_reason: str | None = None,
    message: str | None = None,
    pod_reason: str | None = None,
    deletion: datetime | None = None,
    disruption: str | None = None,
    job_name: str = "train",
) -> dict:
    pod = {
        "metadata": {
            "name": f"{job_name}-node-{rank}",
            "namespace": "ns",
            "uid": f"uid-{attempt}-{rank}",
            "labels": {
                labels.JOB_NAME: job_name,
                labels.NODE_RANK: str(rank),
                labels.ATTEMPT: str(attempt),
                labels.RDZV_ID: new_rdzv_id(UID, attempt),
            },
        },
        "status": {"phase": phase, "conditions": []},
    }
    if phase == "Running":
        pod["status"]["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
        pod["status"]["containerStatuses"] = [{"name": "trainer", "state": {"running": {}}}]
    if exit_code is not None:
        terminated = {"exitCode": exit_code, "reason": container_reason or ("Completed" if exit_code == 0 else "Error")}
        if message is not None:
            terminated["message"] = message
        pod["status"]["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    if pod_reason:
        pod["status"]["reason"] = pod_reason
    if disruption:
        pod["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    if deletion is not None:
        pod["metadata"]["deletionTimestamp"] = st.format_time(deletion)
    return pod


def gang(attempt: int = 0, n: int = 4, **kwargs) -> list[dict]:
    return [make_pod(rank, attempt, **kwargs) for rank in range(n)]


def run(job, pods=(), *, now=NOW, log=None, service=PRESENT, configmap=None, policy=POLICY) -> rc.Result:
    if configmap is MISSING:
        configmap = None
    elif configmap is None:
        configmap = {"metadata": {"name": "train-params"}, "data": _desired_configmap_data(job)}
    observed = rc.Observed(pods=list(pods), service=service, configmap=configmap, rank0_log_tail=log)
    before = copy.deepcopy(job)
    result = rc.reconcile(job, observed, now, CONFIG, policy)
    assert job == before, "reconcile must not mutate its input"
    return result


def _desired_configmap_data(job):
    from sftjob_operator.render import render_gang

    return render_gang(job, attempt=0, rdzv_id="x", config=CONFIG).configmap["data"]


def applied(job: dict, result: rc.Result) -> dict:
    """The job as the API returns it after the status patch."""
    new = copy.deepcopy(job)
    new["status"] = copy.deepcopy(result.status)
    return new


def creates(result, kind="Pod"):
    return [a.body for a in result.actions if isinstance(a, rc.CreateObject) and a.kind == kind]


def deletes(result):
    return [a for a in result.actions if isinstance(a, rc.DeletePod)]


def condition(status, type_):
    return st.find_condition(status.get("conditions"), type_)


def event_reasons(result):
    return [e.reason for e in result.events]


def running_job(nnodes=4, **spec):
    """A job whose gang (attempt 0) was created and runs."""
    job = make_job(nnodes, **spec)
    job = applied(job, run(job, service=None))
    job = applied(job, run(job, gang(n=nnodes)))
    assert job["status"]["phase"] == "Running"
    return job


# ---------------------------------------------------------------------------------------------------------------
# creation


def test_new_job_creates_service_configmap_and_every_rank_with_one_rdzv_id():
    job = make_job(4)
    result = run(job, service=None, configmap=MISSING)

    assert [b["kind"] for b in (a.body for a in result.actions)] == ["Service", "ConfigMap", "Pod", "Pod", "Pod", "Pod"]
    pods = creates(result)
    assert [p["metadata"]["labels"][labels.NODE_RANK] for p in pods] == ["0", "1", "2", "3"]
    rdzv_ids = {p["metadata"]["labels"][labels.RDZV_ID] for p in pods}
    assert rdzv_ids == {new_rdzv_id(UID, 0)}
    status = result.status
    assert status["phase"] == "Pending"
    assert status["attempt"] == 0 and status["restarts"] == 0
    assert status["rdzvId"] == new_rdzv_id(UID, 0)
    assert "startTime" not in status, "the gang starts once its pods exist and are let through their gates"
    assert status["observedGeneration"] == 1
    assert status["nodes"] == "0/4" and status["nodesTotal"] == 4 and status["gpusPerNode"] == 8
    created = condition(status, "Created")
    assert created["status"] == "False" and created["observedGeneration"] == 1 and "creating 4 of 4" in created["message"]


def test_reconcile_is_idempotent_same_inputs_same_answer():
    job = make_job(4)
    first = run(job, service=None)
    second = run(job, service=None)
    assert first.actions == second.actions
    assert first.status == second.status


def test_operator_restart_mid_creation_creates_only_the_missing_pods():
    job = applied(make_job(4), run(make_job(4), service=None))
    half = [make_pod(0, phase="Pending"), make_pod(2, phase="Pending")]
    result = run(job, half)
    assert sorted(p["metadata"]["name"] for p in creates(result)) == ["train-node-1", "train-node-3"]
    assert not creates(result, "Service") and not creates(result, "ConfigMap")
    assert not deletes(result)
    assert condition(result.status, "Created")["status"] == "False"


def test_all_pods_observed_sets_created_then_running_when_all_run():
    job = applied(make_job(4), run(make_job(4), service=None))
    pending = run(job, gang(phase="Pending"))
    assert not pending.actions
    assert condition(pending.status, "Created")["status"] == "True"
    assert pending.status["phase"] == "Pending"
    assert "GangCreated" in event_reasons(pending)

    job = applied(job, pending)
    running = run(job, gang())
    assert running.status["phase"] == "Running"
    assert condition(running.status, "Running")["status"] == "True"
    assert running.status["nodes"] == "4/4" and running.status["nodesReady"] == 4
    assert event_reasons(running) == []  # one event per gang start (GangCreated): Running is the phase
    assert running.requeue_after == POLICY.progress_interval_seconds


def test_not_ready_pods_are_not_counted_ready():
    job = running_job()
    pods = gang()
    pods[3] = make_pod(3, ready=False)
    result = run(job, pods)
    assert result.status["nodesReady"] == 3 and result.status["nodes"] == "3/4"


def test_pods_of_other_jobs_are_ignored():
    job = running_job()
    other = make_pod(0, phase="Failed", exit_code=1, job_name="other")
    result = run(job, gang() + [other])
    assert not result.actions and result.status["phase"] == "Running"


def test_conditions_keep_transition_time_while_status_holds():
    job = running_job()
    later = run(job, gang(), now=NOW + timedelta(minutes=5))
    assert condition(later.status, "Running")["lastTransitionTime"] == condition(job["status"], "Running")["lastTransitionTime"]
    assert rc.status_patch(job["status"], later.status) is None


# ---------------------------------------------------------------------------------------------------------------
# progress


def test_progress_is_read_from_the_last_progress_line_of_rank0():
    job = running_job()
    log = "\n".join(
        [
            "loading model",
            json.dumps({"event": "progress", "epoch": 0, "step": 5, "loss": 2.5, "samples_seen": 80}),
            '{"not": "progress"}',
            json.dumps({"event": "progress", "epoch": 1, "step": 40, "loss": 1.23, "samples_seen": 640, "lr": 1e-5}),
            "{broken json",
        ]
    )
    result = run(job, gang(), log=log)
    assert result.status["progress"] == {
        "epoch": 1,
        "step": 40,
        "loss": 1.23,
        "samplesSeen": 640,
        "updatedAt": st.format_time(NOW),
    }
    assert result.status["progressText"] == "epoch 1 step 40 loss 1.23"

    # the same line later: nothing to write (updatedAt says when progress last moved)
    job = applied(job, result)
    again = run(job, gang(), log=log, now=NOW + timedelta(seconds=30))
    assert rc.status_patch(job["status"], again.status) is None


def test_progress_pod_is_the_running_rank0_of_the_current_attempt():
    job = running_job()
    assert rc.progress_pod_name(job, gang()) == "train-node-0"
    assert rc.progress_pod_name(job, gang(attempt=1)) is None
    assert rc.progress_pod_name(job, [make_pod(0, phase="Pending")]) is None


# ---------------------------------------------------------------------------------------------------------------
# failures and restarts


def test_a_failed_pod_restarts_the_whole_gang_with_a_new_rdzv_id():
    job = running_job(backoffLimit=3)
    pods = gang()
    pods[2] = make_pod(2, phase="Failed", exit_code=1, message=json.dumps({"outcome": "failed", "message": "CUDA error"}))
    result = run(job, pods)

    status = result.status
    assert status["phase"] == "Restarting"
    assert status["attempt"] == 1 and status["restarts"] == 1
    assert status["rdzvId"] == new_rdzv_id(UID, 1) != new_rdzv_id(UID, 0)
    assert status["lastFailure"] == {"rank": 2, "exitCode": 1, "reason": "TrainingFailed", "message": "CUDA error"}
    assert sorted((d.name, d.uid) for d in deletes(result)) == [(f"train-node-{r}", f"uid-0-{r}") for r in range(4)]
    assert not creates(result), "old pods must be gone before the new gang starts"
    assert condition(status, "Running")["status"] == "False"
    assert {"PodFailed", "Restarting"} <= set(event_reasons(result))
    assert result.restarted_for.counted


def _lost_peer(rank: int, finished: datetime) -> dict:
    """A rank whose worker failed because another rank died (the entrypoint's summary says peerLost)."""
    summary = {"outcome": "failed", "message": "a worker lost its connection to another rank", "peerLost": True}
    pod = make_pod(rank, phase="Failed", exit_code=1, message=json.dumps(summary))
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = st.format_time(finished)
    return pod


def test_the_rank_that_failed_is_blamed_not_the_lower_rank_that_lost_it():
    pods = gang()
    pods[0] = _lost_peer(0, NOW)
    pods[2] = make_pod(2, phase="Failed", exit_code=137,
                       message=json.dumps({"outcome": "failed", "message": "worker rank 16 was killed by SIGKILL"}))
    result = run(running_job(backoffLimit=3), pods)
    assert result.status["lastFailure"]["rank"] == 2 and result.status["lastFailure"]["exitCode"] == 137
    assert result.status["restarts"] == 1


def test_a_rank_that_lost_a_peer_waits_a_little_for_the_peers_own_failure_then_is_blamed():
    job = running_job(backoffLimit=3)
    pods = gang()
    pods[0] = _lost_peer(0, NOW - timedelta(seconds=2))
    waiting = run(job, pods)
    assert not deletes(waiting) and "lastFailure" not in waiting.status
    assert waiting.requeue_after == pytest.approx(rc.PEER_FAILURE_GRACE_SECONDS - 2)
    # The kubelet's clock may be far behind: the wait is still bounded.
    pods[0] = _lost_peer(0, NOW + timedelta(hours=1))
    assert run(job, pods).requeue_after == pytest.approx(rc.PEER_FAILURE_GRACE_SECONDS)
    # No other failure came: the rank is blamed after the grace.
    pods[0] = _lost_peer(0, NOW - timedelta(seconds=rc.PEER_FAILURE_GRACE_SECONDS + 1))
    late = run(job, pods)
    assert late.status["lastFailure"]["rank"] == 0 and late.status["restarts"] == 1 and len(deletes(late)) == 4
    # Nobody else runs any more (the rest finished or failed the same way): no reason to wait.
    everyone = [_lost_peer(r, NOW) for r in range(4)]
    assert run(job, everyone).status["lastFailure"]["rank"] == 0


def test_an_eviction_that_made_the_others_lose_it_does_not_count_against_backoff_limit():
    pods = gang(n=2)
    pods[0] = _lost_peer(0, NOW)
    pods[1] = make_pod(1, phase="Failed", pod_reason="Evicted", exit_code=137)
    result = run(running_job(nnodes=2, backoffLimit=0), pods)
    assert result.status["lastFailure"]["rank"] == 1 and result.status["lastFailure"]["reason"] == "Evicted"
    assert result.status["phase"] == "Restarting" and not result.restarted_for.counted
    # Nor does a pod that disappeared (deleted at once, or garbage-collected): no wait either, the cause is seen.
    gone = run(running_job(nnodes=2, backoffLimit=0), [_lost_peer(0, NOW)])
    assert gone.status["lastFailure"]["rank"] == 1 and gone.status["lastFailure"]["reason"] == "PodDeleted"
    assert not gone.restarted_for.counted


def test_new_gang_waits_for_old_pods_then_backoff_then_is_created():
    job = running_job(backoffLimit=3)
    pods = gang()
    pods[0] = make_pod(0, phase="Failed", exit_code=1)
    job = applied(job, run(job, pods))

    # old pods still terminating: no new pods, no repeated graceful deletes
    terminating = [make_pod(r, 0, deletion=NOW + timedelta(seconds=30)) for r in range(4)]
    waiting = run(job, terminating, now=NOW + timedelta(seconds=1))
    assert not creates(waiting) and not deletes(waiting)
    assert waiting.status["phase"] == "Restarting"
    assert waiting.requeue_after is not None

    # old pods gone, backoff (10s) not over
    backing_off = run(job, [], now=NOW + timedelta(seconds=5))
    assert not creates(backing_off)
    assert backing_off.status["phase"] == "Restarting"
    assert backing_off.requeue_after == pytest.approx(5)

    # backoff over: attempt 1, new rdzv id, same names
    created = run(job, [], now=NOW + timedelta(seconds=11))
    pods = creates(created)
    assert [p["metadata"]["name"] for p in pods] == [f"train-node-{r}" for r in range(4)]
    assert {p["metadata"]["labels"][labels.ATTEMPT] for p in pods} == {"1"}
    assert {p["metadata"]["labels"][labels.RDZV_ID] for p in pods} == {new_rdzv_id(UID, 1)}
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["TRAINING_HUB_RDZV_ID"] == new_rdzv_id(UID, 1)

    job = applied(job, created)
    up = run(applied(job, run(job, gang(attempt=1), now=NOW + timedelta(seconds=12))), gang(attempt=1), now=NOW + timedelta(seconds=13))
    assert up.status["phase"] == "Running" and up.status["restarts"] == 1


def test_backoff_doubles_per_restart_and_is_capped():
    job = running_job(backoffLimit=10)
    job["status"]["restarts"] = 2
    pods = gang()
    pods[1] = make_pod(1, phase="Failed", exit_code=1)
    job = applied(job, run(job, pods))  # restarts -> 3: backoff 10 * 2**2 = 40s
    assert run(job, [], now=NOW + timedelta(seconds=39)).requeue_after == pytest.approx(1)
    assert creates(run(job, [], now=NOW + timedelta(seconds=41)))
    job["status"]["restarts"] = 9  # capped at 60s
    assert creates(run(job, [], now=NOW + timedelta(seconds=61)))
    assert not creates(run(job, [], now=NOW + timedelta(seconds=59)))


def test_stale_pods_of_an_old_attempt_are_deleted_even_without_a_failure():
    job = running_job()
    job["status"]["attempt"] = 2  # e.g. the status patch of two restarts landed, the deletes did not
    job["status"]["conditions"] = st.set_condition(
        job["status"]["conditions"], "Created", False, "Restarting", "", now=NOW, generation=1
    )
    result = run(job, gang(attempt=1))
    assert len(deletes(result)) == 4 and not creates(result)


def test_backoff_limit_exhausted_fails_the_job_and_deletes_every_pod():
    job = running_job(backoffLimit=1)
    job["status"]["restarts"] = 1
    pods = gang()
    pods[3] = make_pod(3, phase="Failed", exit_code=1, message="boom")
    result = run(job, pods)

    status = result.status
    assert status["phase"] == "Failed"
    assert status["restarts"] == 1 and status["attempt"] == 0
    failed = condition(status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "rank 3" in failed["message"] and "boom" in failed["message"]
    assert status["completionTime"] == st.format_time(NOW)
    # running pods are deleted (default cleanPodPolicy Running); the failed one is kept for its logs
    assert sorted(d.name for d in deletes(result)) == ["train-node-0", "train-node-1", "train-node-2"]


def test_clean_pod_policy_all_deletes_finished_pods_too():
    job = running_job(backoffLimit=0, cleanPodPolicy="All")
    pods = gang()
    pods[3] = make_pod(3, phase="Failed", exit_code=1)
    assert len(deletes(run(job, pods))) == 4


def test_clean_pod_policy_none_leaves_pods_alone():
    job = running_job(backoffLimit=0, cleanPodPolicy="None")
    pods = gang()
    pods[3] = make_pod(3, phase="Failed", exit_code=1)
    result = run(job, pods)
    assert result.status["phase"] == "Failed" and not deletes(result)


def test_invalid_config_exit_fails_at_once_with_the_message():
    job = running_job(backoffLimit=5)
    pods = gang()
    summary = {"outcome": "invalid_config", "message": "maxTokensPerGpu must be >= maxSeqLen"}
    pods[0] = make_pod(0, phase="Failed", exit_code=78, message=json.dumps(summary))
    result = run(job, pods)
    status = result.status
    assert status["phase"] == "Failed" and status["restarts"] == 0
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidConfig" and failed["message"] == "maxTokensPerGpu must be >= maxSeqLen"
    assert status["lastFailure"]["exitCode"] == 78
    assert len(deletes(result)) == 3


def test_invalid_config_wins_over_other_failures_in_the_same_gang():
    job = running_job(backoffLimit=5)
    pods = gang()
    pods[0] = make_pod(0, phase="Failed", exit_code=1)
    pods[2] = make_pod(2, phase="Failed", exit_code=78, message="bad params")
    assert run(job, pods).status["phase"] == "Failed"


def test_oom_killed_counts_and_is_reported():
    job = running_job(backoffLimit=0)
    pods = gang()
    pods[1] = make_pod(1, phase="Failed", exit_code=137, container_reason="OOMKilled")
    result = run(job, pods)
    assert result.status["phase"] == "Failed"
    assert result.status["lastFailure"]["reason"] == "OOMKilled"
    assert "OOMKilled" in condition(result.status, "Failed")["message"]

    job = running_job(backoffLimit=2)
    result = run(job, pods)
    assert result.status["restarts"] == 1 and result.status["lastFailure"]["reason"] == "OOMKilled"


@pytest.mark.parametrize(
    "failed_pod",
    [
        make_pod(1, phase="Failed", pod_reason="Evicted", exit_code=137),
        make_pod(1, phase="Failed", exit_code=143, disruption="PreemptionByScheduler"),
        make_pod(1, phase="Failed", exit_code=143, message=json.dumps({"outcome": "preempted", "message": "SIGTERM"})),
        make_pod(1, phase="Unknown"),
        make_pod(1, deletion=NOW + timedelta(seconds=30)),
    ],
    ids=["evicted", "preempted-by-scheduler", "sigterm-preempted", "node-lost", "deleted-externally"],
)
def test_disruptions_restart_the_gang_without_counting(failed_pod):
    job = running_job(backoffLimit=0)
    pods = gang()
    pods[1] = failed_pod
    result = run(job, pods)
    assert result.status["phase"] == "Restarting"
    assert result.status["restarts"] == 0 and result.status["attempt"] == 1
    assert not result.restarted_for.counted
    assert "not counted" in condition(result.status, "Created")["message"]


def test_disruption_restart_does_not_back_off():
    job = running_job(backoffLimit=0)
    pods = gang()
    pods[1] = make_pod(1, phase="Failed", pod_reason="Evicted")
    job = applied(job, run(job, pods))
    assert len(creates(run(job, [], now=NOW + timedelta(seconds=1)))) == 4


def test_a_pod_missing_from_a_created_gang_restarts_it_uncounted():
    job = running_job()
    result = run(job, gang()[:3])
    assert result.status["attempt"] == 1 and result.status["restarts"] == 0
    assert result.status["lastFailure"]["reason"] == "PodDeleted" and result.status["lastFailure"]["rank"] == 3
    assert len(deletes(result)) == 3


def test_rendezvous_timeout_is_retryable_and_counted():
    job = running_job(backoffLimit=2)
    pods = gang()
    pods[3] = make_pod(3, phase="Failed", exit_code=69)
    result = run(job, pods)
    assert result.status["restarts"] == 1 and result.status["lastFailure"]["reason"] == "RendezvousTimeout"


def test_pod_stuck_terminating_is_force_deleted_after_the_bound():
    job = running_job()
    job["status"]["attempt"] = 1  # the gang of attempt 0 is being replaced
    job["status"]["conditions"] = st.set_condition(
        job["status"]["conditions"], "Created", False, "Restarting", "", now=NOW, generation=1
    )
    stuck = [make_pod(0, 0, deletion=NOW - timedelta(seconds=60))]
    assert not deletes(run(job, stuck))
    result = run(job, stuck, now=NOW + timedelta(seconds=61))
    [delete] = deletes(result)
    assert delete.force and delete.uid == "uid-0-0"
    assert "ForceDeletedPod" in event_reasons(result)


# ---------------------------------------------------------------------------------------------------------------
# success


def test_all_pods_succeeded_copies_the_rank0_summary():
    job = running_job()
    summary = {
        "outcome": "succeeded",
        "message": "done",
        "final_checkpoint": "/ckpt/hf_format/samples_1280",
        "epoch": 2,
        "step": 80,
        "loss": 0.91,
        "resumed_from_epoch": 1,
    }
    pods = [make_pod(r, phase="Succeeded", exit_code=0, message=json.dumps(summary) if r == 0 else "{}") for r in range(4)]
    result = run(job, pods)
    status = result.status
    assert status["phase"] == "Succeeded"
    assert status["summary"] == {
        "outcome": "succeeded",
        "message": "done",
        "finalCheckpoint": "/ckpt/hf_format/samples_1280",
        "epoch": 2,
        "step": 80,
        "loss": 0.91,
        "resumedFromEpoch": 1,
    }
    succeeded = condition(status, "Succeeded")
    assert succeeded["status"] == "True" and "resumed from epoch 1" in succeeded["message"]
    assert condition(status, "Running")["status"] == "False"
    assert status["completionTime"] == st.format_time(NOW)
    assert not deletes(result)  # cleanPodPolicy Running keeps finished pods
    assert status["nodes"] == "0/4"


def test_partial_success_waits_for_the_rest():
    job = running_job()
    pods = gang()
    pods[0] = make_pod(0, phase="Succeeded", exit_code=0)
    result = run(job, pods)
    assert result.status["phase"] == "Running" and not result.actions


def test_finished_job_stops_pods_that_still_run():
    job = running_job()
    job["status"]["phase"] = "Succeeded"
    job["status"]["completionTime"] = st.format_time(NOW)
    result = run(job, [make_pod(0, phase="Succeeded", exit_code=0), make_pod(1)])
    assert [d.name for d in deletes(result)] == ["train-node-1"]
    assert not creates(result)


# ---------------------------------------------------------------------------------------------------------------
# deadline, TTL


def test_active_deadline_fails_the_job():
    job = running_job(activeDeadlineSeconds=600)
    before = run(job, gang(), now=NOW + timedelta(seconds=500))
    assert before.status["phase"] == "Running" and before.requeue_after <= 100
    result = run(job, gang(), now=NOW + timedelta(seconds=600))
    assert result.status["phase"] == "Failed"
    assert condition(result.status, "Failed")["reason"] == "DeadlineExceeded"
    assert len(deletes(result)) == 4


def test_ttl_after_finished_deletes_the_job():
    job = running_job(ttlSecondsAfterFinished=60)
    pods = [make_pod(r, phase="Succeeded", exit_code=0) for r in range(4)]
    job = applied(job, run(job, pods))
    waiting = run(job, pods, now=NOW + timedelta(seconds=30))
    assert not any(isinstance(a, rc.DeleteJob) for a in waiting.actions)
    assert waiting.requeue_after == pytest.approx(30)
    expired = run(job, pods, now=NOW + timedelta(seconds=60))
    assert rc.DeleteJob("train", UID) in expired.actions
    assert "TTLExpired" in event_reasons(expired)


# ---------------------------------------------------------------------------------------------------------------
# suspend / resume


def test_suspend_deletes_the_gang_and_resume_starts_a_new_one():
    job = running_job(activeDeadlineSeconds=3600)
    job["spec"]["suspend"] = True
    job["metadata"]["generation"] = 2
    suspended = run(job, gang())
    status = suspended.status
    assert status["phase"] == "Suspended"
    assert condition(status, "Suspended")["status"] == "True"
    assert condition(status, "Running")["status"] == "False"
    assert status["attempt"] == 1 and status["restarts"] == 0
    assert "startTime" not in status
    assert len(deletes(suspended)) == 4 and not creates(suspended)
    assert condition(status, "Suspended")["observedGeneration"] == 2
    job = applied(job, suspended)

    # still suspended, pods gone: the condition says so once, then nothing changes
    gone = run(job, [])
    assert not gone.actions and condition(gone.status, "Suspended")["message"] == "spec.suspend is true"
    job = applied(job, gone)
    idle = run(job, [])
    assert not idle.actions and rc.status_patch(job["status"], idle.status) is None

    job["spec"]["suspend"] = False
    job["metadata"]["generation"] = 3
    resumed = run(job, [], now=NOW + timedelta(minutes=5))
    assert condition(resumed.status, "Suspended")["status"] == "False"
    assert resumed.status["phase"] == "Pending"
    pods = creates(resumed)
    assert len(pods) == 4 and {p["metadata"]["labels"][labels.RDZV_ID] for p in pods} == {new_rdzv_id(UID, 1)}
    assert "startTime" not in resumed.status
    started = run(applied(job, resumed), gang(1), now=NOW + timedelta(minutes=6))
    assert started.status["startTime"] == st.format_time(NOW + timedelta(minutes=6))
    assert "Resumed" in event_reasons(resumed)


def test_created_suspended_starts_nothing_and_resumes_with_attempt_zero():
    job = make_job(2, suspend=True)
    result = run(job, service=None)
    assert result.status["phase"] == "Suspended" and not result.actions and result.status["attempt"] == 0
    job = applied(job, result)
    job["spec"]["suspend"] = False
    resumed = run(job, service=None)
    assert len(creates(resumed)) == 2 and resumed.status["attempt"] == 0


def test_configmap_follows_the_spec_between_gangs():
    job = make_job(2)
    stale = {"metadata": {"name": "train-params"}, "data": {"params.json": "{}"}}
    result = run(job, configmap=stale)
    replaces = [a for a in result.actions if isinstance(a, rc.ReplaceConfigMapData)]
    assert len(replaces) == 1 and json.loads(replaces[0].data["params.json"])["modelPath"] == "/models/m"


# ---------------------------------------------------------------------------------------------------------------
# helpers


def test_status_patch_sets_removed_keys_to_null():
    assert rc.status_patch({"a": 1, "b": 2}, {"a": 1, "b": 2}) is None
    assert rc.status_patch({"a": 1, "b": 2}, {"a": 3}) == {"a": 3, "b": None}
    old = {"lastFailure": {"rank": 1, "exitCode": 1, "reason": "TrainingFailed"}, "conditions": [{"type": "A"}]}
    new = {"lastFailure": {"rank": 2, "reason": "PodDeleted"}, "conditions": [{"type": "A"}, {"type": "B"}]}
    assert rc.status_patch(old, new) == {
        "lastFailure": {"rank": 2, "exitCode": None, "reason": "PodDeleted"},
        "conditions": [{"type": "A"}, {"type": "B"}],
    }


def test_status_patch_applied_as_a_merge_patch_gives_the_new_status():
    def apply_merge_patch(target, patch):
        result = dict(target)
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            elif isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = apply_merge_patch(result[key], value)
            else:
                result[key] = value
        return result

    job = running_job(backoffLimit=3)
    pods = gang()
    pods[2] = make_pod(2, phase="Failed", exit_code=1, message="x")
    restarted = run(job, pods)
    assert apply_merge_patch(job["status"], rc.status_patch(job["status"], restarted.status)) == restarted.status
    missing = run(applied(job, restarted), [], now=NOW + timedelta(seconds=30))
    job2 = applied(job, restarted)
    assert apply_merge_patch(job2["status"], rc.status_patch(job2["status"], missing.status)) == missing.status


def test_set_condition_moves_transition_time_only_on_status_change():
    first = st.set_condition(None, "Running", True, "A", "m", now=NOW, generation=1)
    same = st.set_condition(first, "Running", True, "B", "m2", now=NOW + timedelta(hours=1), generation=2)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["reason"] == "B" and same[0]["observedGeneration"] == 2
    flipped = st.set_condition(same, "Running", False, "C", "m3", now=NOW + timedelta(hours=2), generation=2)
    assert flipped[0]["lastTransitionTime"] == st.format_time(NOW + timedelta(hours=2))


def test_a_spec_the_operator_cannot_render_fails_the_job_naming_the_field():
    job = make_job(2)
    del job["spec"]["training"]["numEpochs"]
    result = run(job, service=None, configmap=MISSING)
    assert result.status["phase"] == "Failed" and not creates(result)
    failed = condition(result.status, "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.training.numEpochs" in failed["message"]


# ---------------------------------------------------------------------------------------------------------------
# GitOps: the kstatus conditions (Ready, Reconciling, Stalled; docs/operator.md "GitOps")


def kstatus(job: dict) -> str:
    """kstatus's verdict for a custom resource (sigs.k8s.io/cli-utils pkg/kstatus/status, generic rules):
    being deleted -> Terminating; observedGeneration behind generation -> InProgress; Reconciling=True ->
    InProgress; Stalled=True -> Failed; otherwise Current."""
    if job["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = job.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != job["metadata"].get("generation"):
        return "InProgress"
    for c in status.get("conditions") or ():
        if c["type"] == "Reconciling" and c["status"] == "True":
            return "InProgress"
        if c["type"] == "Stalled" and c["status"] == "True":
            return "Failed"
    return "Current"


def assert_gitops_consistent(status: dict) -> None:
    """Exactly one of Ready/Reconciling/Stalled is True, and the three agree on reason and message."""
    trio = [condition(status, t) for t in ("Ready", "Reconciling", "Stalled")]
    assert all(trio), status.get("conditions")
    assert [c["status"] for c in trio].count("True") == 1
    assert len({(c["reason"], c["message"]) for c in trio}) == 1
    assert all(c["observedGeneration"] == status["observedGeneration"] for c in trio)


def gitops(status: dict) -> tuple[str, str]:
    assert_gitops_consistent(status)
    [true] = [c for c in (condition(status, t) for t in ("Ready", "Reconciling", "Stalled")) if c["status"] == "True"]
    return true["type"], true["reason"]


def test_gitops_conditions_while_the_gang_is_created_pending_and_running():
    job = make_job(4)
    creating = run(job, service=None)
    assert gitops(creating.status) == ("Reconciling", "GangPending")
    assert "creating 4 of 4" in condition(creating.status, "Reconciling")["message"]
    assert kstatus(applied(job, creating)) == "InProgress"

    job = applied(job, creating)
    pending = run(job, gang(phase="Pending"))
    assert gitops(pending.status) == ("Reconciling", "GangPending")
    assert condition(pending.status, "Ready")["status"] == "False"
    assert kstatus(applied(job, pending)) == "InProgress"

    job = applied(job, pending)
    running = run(job, gang())
    # Like kstatus's batch/v1 Job rule: a running gang is Current, so a GitOps wait does not block on training.
    assert gitops(running.status) == ("Ready", "GangRunning")
    assert "all 4 pod(s)" in condition(running.status, "Ready")["message"]
    assert kstatus(applied(job, running)) == "Current"
    # the existing conditions are unchanged
    assert condition(running.status, "Created")["status"] == "True" and condition(running.status, "Running")["status"] == "True"


def test_gitops_conditions_through_a_restart_and_its_backoff():
    job = running_job(backoffLimit=3)
    ready_since = condition(job["status"], "Ready")["lastTransitionTime"]
    pods = gang()
    pods[1] = make_pod(1, phase="Failed", exit_code=1, message="boom")
    restarting = run(job, pods, now=NOW + timedelta(seconds=1))
    assert gitops(restarting.status) == ("Reconciling", "GangRestarting")
    assert "restarting the whole gang" in condition(restarting.status, "Reconciling")["message"]
    assert condition(restarting.status, "Ready")["lastTransitionTime"] != ready_since
    job = applied(job, restarting)
    assert kstatus(job) == "InProgress"

    backing_off = run(job, [], now=NOW + timedelta(seconds=5))
    assert gitops(backing_off.status) == ("Reconciling", "GangRestarting")
    assert "backing off" in condition(backing_off.status, "Reconciling")["message"]


@pytest.mark.parametrize(
    "failed_pod, reason",
    [
        (make_pod(0, phase="Failed", exit_code=78, message="bad params"), "InvalidConfig"),
        (make_pod(2, phase="Failed", exit_code=1, message="boom"), "BackoffLimitExceeded"),
    ],
)
def test_gitops_failed_job_is_stalled_with_the_reason(failed_pod, reason):
    job = running_job(backoffLimit=0)
    pods = gang()
    pods[rc.pod_rank(failed_pod)] = failed_pod
    result = run(job, pods)
    assert result.status["phase"] == "Failed"
    assert gitops(result.status) == ("Stalled", reason)
    stalled = condition(result.status, "Stalled")
    assert stalled["message"] == condition(result.status, "Failed")["message"] and stalled["message"]
    assert kstatus(applied(job, result)) == "Failed"
    # a finished job stays Stalled on later reconciles, writing nothing new
    job = applied(job, result)
    assert rc.status_patch(job["status"], run(job, pods, now=NOW + timedelta(minutes=1)).status) is None


def test_gitops_deadline_exceeded_is_stalled():
    job = running_job(activeDeadlineSeconds=60)
    result = run(job, gang(), now=NOW + timedelta(seconds=61))
    assert gitops(result.status) == ("Stalled", "DeadlineExceeded")


def test_gitops_succeeded_job_is_ready_with_the_outcome():
    job = running_job()
    summary = {"outcome": "succeeded", "message": "done", "final_checkpoint": "/ckpt/hf_format/samples_80", "loss": 0.5}
    pods = [make_pod(r, phase="Succeeded", exit_code=0, message=json.dumps(summary) if r == 0 else "{}") for r in range(4)]
    result = run(job, pods)
    assert gitops(result.status) == ("Ready", "Succeeded")
    assert condition(result.status, "Ready")["message"] == condition(result.status, "Succeeded")["message"]
    assert "/ckpt/hf_format/samples_80" in condition(result.status, "Ready")["message"]
    assert kstatus(applied(job, result)) == "Current"


def test_gitops_suspend_is_in_progress_until_the_pods_are_gone():
    job = running_job()
    job["spec"]["suspend"] = True
    job["metadata"]["generation"] = 2
    assert kstatus(job) == "InProgress"  # the operator has not seen generation 2 yet
    stopping = run(job, gang())
    assert gitops(stopping.status) == ("Reconciling", "Suspending")
    assert "waiting for 4 pod(s)" in condition(stopping.status, "Reconciling")["message"]
    job = applied(job, stopping)
    assert kstatus(job) == "InProgress"

    parked = run(job, [])
    assert gitops(parked.status) == ("Ready", "Suspended")
    assert kstatus(applied(job, parked)) == "Current"


def test_gitops_created_suspended_is_ready_at_once():
    result = run(make_job(2, suspend=True), service=None)
    assert gitops(result.status) == ("Ready", "Suspended")


def test_gitops_api_error_keeps_the_job_reconciling_with_the_error():
    job = applied(make_job(2), run(make_job(2), service=None))
    job["status"]["conditions"] = st.set_condition(
        job["status"]["conditions"], "Created", False, "CreateFailed", "pods is forbidden: exceeded quota", now=NOW, generation=1
    )
    result = run(job, [])
    assert gitops(result.status) == ("Reconciling", "GangPending")
    assert "exceeded quota" in condition(result.status, "Reconciling")["message"]


# ---------------------------------------------------------------------------------------------------------------
# Preflight mode


def test_preflight_success_says_what_rank0_measured():
    job = running_job(2, mode="Preflight")
    measured = (
        "all-reduce sum correct on every rank (node rank 0 of 2); 2 ranks (gloo): 67108864 bytes, "
        "algbw 1.234 GB/s, busbw 1.234 GB/s"
    )
    pods = [
        make_pod(0, phase="Succeeded", exit_code=0, message=json.dumps({"outcome": "succeeded", "message": measured})),
        make_pod(1, phase="Succeeded", exit_code=0, message=json.dumps({"outcome": "succeeded", "message": "rank 1"})),
    ]
    result = run(job, pods)
    succeeded = condition(result.status, "Succeeded")
    assert succeeded["status"] == "True"
    assert succeeded["message"] == "all pods succeeded: " + measured
    assert "rank 1" not in succeeded["message"]
    assert result.status["summary"]["message"] == measured


def test_training_success_does_not_repeat_the_summary_message():
    job = running_job(2)
    pods = [make_pod(r, phase="Succeeded", exit_code=0, message=json.dumps({"outcome": "succeeded", "message": "done"})) for r in range(2)]
    assert condition(run(job, pods).status, "Succeeded")["message"] == "all pods succeeded"


# ---------------------------------------------------------------------------------------------------------------
# the API server refusing an object of the gang; a job being deleted


API_MESSAGE = (
    'Pod "train-node-1" is invalid: spec.containers[0].resources.requests: Invalid value: "2": '
    "must be less than or equal to cpu limit of 1"
)


@pytest.mark.parametrize("status, permanent", [(422, True), (400, True), (500, False), (503, False), (409, False),
                                               (403, False), (429, False), (None, False)])
def test_only_invalid_objects_are_permanent_rejections(status, permanent):
    create = rc.CreateObject({"kind": "Pod", "metadata": {"name": "train-node-1"}})
    rejection = rc.Rejection.of(create, status, API_MESSAGE)
    assert (rejection is not None) == permanent
    assert rc.Rejection.of(rc.DeletePod("train-node-1", "uid"), status, API_MESSAGE) is None  # only creates


def test_a_rejected_pod_fails_the_job_with_the_api_servers_message_and_removes_the_half_created_gang():
    job = make_job(4)
    first = run(job, service=None)
    job = applied(job, first)
    half = gang(n=1, phase="Pending")  # rank 0 was created, rank 1 was refused
    rejection = rc.Rejection("Pod", "train-node-1", API_MESSAGE)
    observed = rc.Observed(pods=half, service=PRESENT, configmap={"data": _desired_configmap_data(job)}, rejection=rejection)
    result = rc.reconcile(job, observed, NOW, CONFIG, POLICY)

    assert result.status["phase"] == st.FAILED
    failed = condition(result.status, st.FAILED)
    assert failed["status"] == "True" and failed["reason"] == "InvalidPodSpec"
    assert "spec.containers[0].resources.requests" in failed["message"]
    assert condition(result.status, st.STALLED)["status"] == "True"
    assert creates(result) == []
    assert [d.name for d in deletes(result)] == ["train-node-0"]
    assert "InvalidPodSpec" in event_reasons(result)

    # The next reconciliation (no rejection observed any more) keeps it Failed and creates nothing: no retry loop.
    job = applied(job, result)
    again = run(job, [])
    assert again.status["phase"] == st.FAILED and again.actions == []


def test_a_job_being_deleted_only_deletes_its_pods():
    job = running_job(2)
    job["metadata"]["deletionTimestamp"] = st.format_time(NOW)
    result = run(job, gang(n=2))
    assert creates(result) == [] and creates(result, "Service") == []
    assert sorted(d.name for d in deletes(result)) == ["train-node-0", "train-node-1"]
    assert run(job, []).actions == []

# hostNetwork: the rendezvous port belongs to the node


def _port_blocked(pod: dict, port: int = 31000) -> dict:
    pod["spec"] = {"containers": [{"name": "trainer", "ports": [{"name": "rdzv", "containerPort": port, "hostPort": port}]}]}
    pod["status"]["conditions"] = [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: 2 node(s) didn't have free ports for the requested pod ports, "
                   "2 node(s) didn't match pod anti-affinity rules.",
    }]
    return pod


def test_a_pod_waiting_for_a_taken_host_port_is_named_in_status_and_one_event():
    job = make_job(2, hostNetwork=True, rdzvPort=31000)
    job = applied(job, run(job, service=None))
    pods = [make_pod(0), _port_blocked(make_pod(1, phase="Pending"))]
    result = run(job, pods)
    assert result.status["phase"] == "Pending"
    running = condition(result.status, "Running")
    assert (running["status"], running["reason"]) == ("False", rc.REASON_PORT_IN_USE)
    assert "rank 1" in running["message"] and "port 31000" in running["message"]
    assert "didn't have free ports" in running["message"]  # the scheduler's own words
    assert event_reasons(result).count(rc.REASON_PORT_IN_USE) == 1
    # Still blocked on the next pass: the condition stays, no second event.
    again = run(applied(job, result), pods)
    assert condition(again.status, "Running")["reason"] == rc.REASON_PORT_IN_USE
    assert rc.REASON_PORT_IN_USE not in event_reasons(again)


def test_other_unschedulable_pods_are_not_reported_as_port_collisions():
    job = make_job(2, hostNetwork=True)
    job = applied(job, run(job, service=None))
    pod = make_pod(1, phase="Pending")
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                    "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]
    result = run(job, [make_pod(0), pod])
    assert rc.port_conflict(pod) is None
    assert (condition(result.status, "Running") or {}).get("reason") != rc.REASON_PORT_IN_USE


def test_a_rank_that_could_not_bind_the_rendezvous_port_restarts_the_gang_naming_the_port():
    job = running_job(2, hostNetwork=True)
    message = ("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
               "address. port: 29500, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use")
    result = run(job, [make_pod(0, phase="Failed", exit_code=1, message=message), make_pod(1)])
    assert result.status["lastFailure"]["reason"] == rc.REASON_PORT_IN_USE
    assert "spec.rdzvPort" in result.status["lastFailure"]["message"]
    assert result.status["restarts"] == 1 and result.status["attempt"] == 1



# ---------------------------------------------------------------------------------------------------------------
# the prepare pod before each gang attempt


def prepare_job(nnodes=2, **spec):
    return make_job(nnodes, prepare={"enabled": True}, **spec)


def prepare_pod(attempt=0, phase="Running", *, exit_code=None, summary=None, deletion=None):
    pod = make_pod(0, attempt, phase, exit_code=exit_code, deletion=deletion,
                   message=json.dumps(summary) if summary is not None else None)
    pod["metadata"]["name"] = f"train-prepare-{attempt}"
    pod["metadata"]["uid"] = f"uid-prepare-{attempt}"
    pod["metadata"]["labels"] = labels.prepare_pod_labels("train", attempt=attempt)
    return pod


def test_the_prepare_pod_comes_first_and_the_gang_waits_for_it():
    job = prepare_job()
    created = run(job, service=None, configmap=MISSING)
    assert [a.body["kind"] for a in created.actions] == ["Service", "ConfigMap", "Pod"]
    (pod,) = creates(created)
    assert pod["metadata"]["name"] == "train-prepare-0" and pod["spec"]["containers"][0]["command"][:2] == [
        "training-hub", "prepare"]
    assert created.status["phase"] == "Preparing" and created.status["startTime"] == st.format_time(NOW)
    assert condition(created.status, "Prepared")["reason"] == "Preparing"
    assert condition(created.status, "Reconciling")["status"] == "True"
    assert condition(created.status, "Reconciling")["reason"] == "Preparing"
    assert "Preparing" in event_reasons(created)

    job = applied(job, created)
    for phase in ("Pending", "Running"):
        waiting = run(job, [prepare_pod(phase=phase)])
        assert not waiting.actions and waiting.status["phase"] == "Preparing"
        assert f"is {phase}" in condition(waiting.status, "Prepared")["message"]

    summary = {"outcome": "succeeded", "message": "prepared 40 samples into /ckpt/data in 3.0 s", "reused": False}
    done = run(job, [prepare_pod(phase="Succeeded", exit_code=0, summary=summary)])
    assert [p["metadata"]["name"] for p in creates(done)] == ["train-node-0", "train-node-1"]
    prepared = condition(done.status, "Prepared")
    assert (prepared["status"], prepared["reason"], prepared["message"]) == ("True", "DataPrepared", summary["message"])
    assert "DataPrepared" in event_reasons(done)

    # The gang runs: the prepare pod is kept (its log), not counted as a node, not deleted.
    job = applied(job, done)
    running = run(applied(job, run(job, [prepare_pod(phase="Succeeded", exit_code=0, summary=summary), *gang(n=2)])),
                  [prepare_pod(phase="Succeeded", exit_code=0, summary=summary), *gang(n=2)])
    assert running.status["phase"] == "Running" and running.status["nodes"] == "2/2" and not deletes(running)


def test_a_data_error_fails_the_job_at_once_with_the_file_and_line():
    job = applied(prepare_job(), run(prepare_job(), service=None))
    problem = "invalid SFT parameters:\n  - data_path: /data/d.jsonl line 17: not valid JSON (Expecting ',' delimiter)"
    failed = run(job, [prepare_pod(phase="Failed", exit_code=78, summary={"outcome": "invalid_config", "message": problem})])
    assert failed.status["phase"] == "Failed" and not creates(failed)
    for type_ in ("Failed", "Prepared", "Stalled"):
        assert "line 17: not valid JSON" in condition(failed.status, type_)["message"]
    assert condition(failed.status, "Failed")["reason"] == "InvalidConfig"
    assert failed.status["lastFailure"] == {"reason": "InvalidConfig", "exitCode": 78, "message": problem}
    assert failed.status["restarts"] == 0


def test_a_crashed_prepare_pod_starts_a_new_attempt_and_counts():
    job = applied(prepare_job(), run(prepare_job(), service=None))
    crashed = run(job, [prepare_pod(phase="Failed", exit_code=1, summary={"outcome": "failed", "message": "disk full"})])
    assert crashed.status["phase"] == "Restarting" and crashed.status["attempt"] == 1 and crashed.status["restarts"] == 1
    assert "train-prepare-0 (data preparation) exit code 1" in condition(crashed.status, "Prepared")["message"]
    assert not creates(crashed)
    # After the backoff: the old prepare pod goes, then attempt 1 prepares again (and reuses what is there).
    job = applied(job, crashed)
    later = NOW + timedelta(seconds=11)
    old = prepare_pod(phase="Failed", exit_code=1)
    cleaning = run(job, [old], now=later)
    assert [d.name for d in deletes(cleaning)] == ["train-prepare-0"] and not creates(cleaning)
    again = run(job, [], now=later)
    assert [p["metadata"]["name"] for p in creates(again)] == ["train-prepare-1"]


def test_every_gang_restart_prepares_again_before_the_new_gang():
    summary = {"outcome": "succeeded", "message": "reused the prepared data in /ckpt/data", "reused": True}
    job = applied(prepare_job(), run(prepare_job(), service=None))
    done = [prepare_pod(phase="Succeeded", exit_code=0, summary=summary)]
    job = applied(job, run(job, done))
    job = applied(job, run(job, [*done, *gang(n=2)]))
    failed = run(job, [*done, make_pod(0), make_pod(1, phase="Failed", exit_code=1)])
    assert failed.status["attempt"] == 1 and sorted(d.name for d in deletes(failed)) == ["train-node-0", "train-node-1"]
    job = applied(job, failed)
    later = NOW + timedelta(seconds=11)
    next_attempt = run(job, [], now=later)
    assert [p["metadata"]["name"] for p in creates(next_attempt)] == ["train-prepare-1"]
    assert next_attempt.status["phase"] == "Preparing"
    job = applied(job, next_attempt)
    reused = run(job, [prepare_pod(1, phase="Succeeded", exit_code=0, summary=summary)], now=later)
    assert [p["metadata"]["labels"][labels.ATTEMPT] for p in creates(reused)] == ["1", "1"]
    assert condition(reused.status, "Prepared")["reason"] == "DataReused"


def test_no_prepare_pod_when_disabled_or_in_preflight_mode():
    for job in (make_job(2), make_job(2, prepare={"enabled": True}, mode="Preflight")):
        result = run(job, service=None)
        assert [p["metadata"]["name"] for p in creates(result)] == ["train-node-0", "train-node-1"]
        assert condition(result.status, "Prepared") is None


def test_suspending_while_preparing_deletes_the_prepare_pod():
    job = applied(prepare_job(), run(prepare_job(), service=None))
    suspended = run({**job, "spec": {**job["spec"], "suspend": True}}, [prepare_pod()])
    assert [d.name for d in deletes(suspended)] == ["train-prepare-0"] and suspended.status["phase"] == "Suspended"


# ---------------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------------
# waiting: Kueue's queue, the scheduler (docs/operator.md "Why a job waits")

KUEUE_GATES = [{"name": "kueue.x-k8s.io/admission"}, {"name": "kueue.x-k8s.io/topology"}]
NEEDS_16 = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 16 more needed"
NEVER_FITS = ("couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor gpu, previously "
              "considered podsets requests (0) + current podset request (24) > maximum capacity (16)")


def queued_pod(rank: int, attempt: int = 0, *, gated: bool = True, node: str | None = None, unschedulable: str | None = None):
    pod = make_pod(rank, attempt, phase="Pending")
    pod["metadata"]["labels"][labels.KUEUE_QUEUE_NAME] = "gpu-queue"
    pod["metadata"]["labels"][labels.KUEUE_POD_GROUP_NAME] = f"train-a{attempt}"
    pod["metadata"]["finalizers"] = ["kueue.x-k8s.io/managed"]
    pod["spec"] = {"schedulingGates": list(KUEUE_GATES)} if gated else {}
    if node:
        pod["spec"]["nodeName"] = node
    if unschedulable:
        pod["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable})
    return pod


def workload(reason: str, message: str, status: str = "False") -> dict:
    return {"metadata": {"name": "train-a0"}, "status": {"conditions": [
        {"type": "QuotaReserved", "status": status, "reason": reason, "message": message}]}}


def run_waiting(job, pods, wl=None, **kwargs):
    observed_job = applied(job, run(job, service=None))  # the gang was created
    observed = rc.Observed(pods=pods, service=PRESENT, configmap={"metadata": {"name": "train-params"}, "data": _desired_configmap_data(job)}, workload=wl)
    return observed_job, rc.reconcile(observed_job, observed, kwargs.get("now", NOW), CONFIG, POLICY)


def test_a_gang_held_by_kueue_is_queued_with_the_queue_and_kueues_reason():
    job, result = run_waiting(make_job(2), [queued_pod(0), queued_pod(1)], workload("Pending", NEEDS_16))
    scheduled = condition(result.status, "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "Queued"
    assert scheduled["message"] == f"waiting in queue gpu-queue: {NEEDS_16}"
    # the same reason for kubectl get (the Reason column reads Ready) and for kstatus
    assert condition(result.status, "Ready")["reason"] == "Queued"
    assert condition(result.status, "Reconciling")["status"] == "True"
    assert condition(result.status, "Reconciling")["message"] == scheduled["message"]
    assert [(e.type, e.reason) for e in result.events if e.reason == "Queued"] == [("Normal", "Queued")]
    assert "startTime" not in result.status, "time in the queue is not run time"
    assert result.requeue_after <= POLICY.queued_recheck_seconds
    # the same reason again: no second event
    again = rc.reconcile(applied(job, result), rc.Observed(pods=[queued_pod(0), queued_pod(1)], workload=workload("Pending", NEEDS_16)), NOW, CONFIG, POLICY)
    assert "Queued" not in event_reasons(again)


def test_a_gang_that_can_never_fit_its_queue_is_inadmissible():
    _, result = run_waiting(make_job(3), [queued_pod(r) for r in range(3)], workload("Pending", NEVER_FITS))
    scheduled = condition(result.status, "Scheduled")
    assert scheduled["reason"] == "Inadmissible" and "> maximum capacity (16)" in scheduled["message"]
    assert "queue gpu-queue can never admit" in scheduled["message"]
    assert ("Warning", "Inadmissible") in [(e.type, e.reason) for e in result.events]
    assert result.status["unschedulableSince"] == st.format_time(NOW)
    _, missing_queue = run_waiting(make_job(2), [queued_pod(0), queued_pod(1)], workload("Inadmissible", "LocalQueue gpu-queue doesn't exist"))
    assert condition(missing_queue.status, "Scheduled")["reason"] == "Inadmissible"
    _, no_workload = run_waiting(make_job(2), [queued_pod(0), queued_pod(1)], None)
    assert condition(no_workload.status, "Scheduled")["reason"] == "Queued"


def test_unschedulable_pods_say_the_schedulers_message():
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    pods = [queued_pod(0, gated=False, node="n0"), queued_pod(1, gated=False, unschedulable=message)]
    _, result = run_waiting(make_job(2), pods)
    scheduled = condition(result.status, "Scheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert scheduled["message"] == f"1 of 2 pod(s) cannot be scheduled; train-node-1: {message}"
    assert condition(result.status, "Ready")["reason"] == "Unschedulable"
    assert "startTime" in result.status, "ungated pods have started (as a batch/v1 Job's startTime)"


def test_all_pods_bound_is_scheduled_true():
    job = running_job(2)
    result = run(job, [dict(p, spec={"nodeName": f"n{i}"}) for i, p in enumerate(gang(n=2))])
    assert condition(result.status, "Scheduled")["status"] == "True"


def test_unschedulable_timeout_fails_the_job_and_deletes_the_workload_of_unbound_pods():
    pods = [queued_pod(0, gated=False, unschedulable="0/4 nodes are available: persistentvolumeclaim \"data\" not found.")]
    job, first = run_waiting(make_job(1, unschedulableTimeoutSeconds=300), pods)
    assert first.status["phase"] == "Pending" and first.requeue_after <= 300
    job = applied(job, first)
    later = rc.reconcile(job, rc.Observed(pods=pods), NOW + timedelta(seconds=299), CONFIG, POLICY)
    assert later.status["phase"] == "Pending"
    failed = rc.reconcile(job, rc.Observed(pods=pods), NOW + timedelta(seconds=300), CONFIG, POLICY)
    assert failed.status["phase"] == "Failed"
    assert condition(failed.status, "Failed")["reason"] == "Unschedulable"
    assert "persistentvolumeclaim" in condition(failed.status, "Failed")["message"]
    assert condition(failed.status, "Stalled")["status"] == "True"
    assert [a.name for a in deletes(failed)] == ["train-node-0"]
    assert rc.DeleteWorkload("train-a0") in failed.actions  # never got a node: no kubelet will end it


def test_queued_time_never_counts_towards_the_unschedulable_timeout():
    pods = [queued_pod(0)]
    job, first = run_waiting(make_job(1, unschedulableTimeoutSeconds=60), pods, workload("Pending", NEEDS_16))
    assert "unschedulableSince" not in first.status
    later = rc.reconcile(applied(job, first), rc.Observed(pods=pods, workload=workload("Pending", NEEDS_16)), NOW + timedelta(hours=5), CONFIG, POLICY)
    assert later.status["phase"] == "Pending"


def test_active_deadline_counts_from_admission_not_from_the_queue():
    job, queued = run_waiting(make_job(1, activeDeadlineSeconds=600), [queued_pod(0)], workload("Pending", NEEDS_16))
    job = applied(job, queued)
    hours_later = NOW + timedelta(hours=3)
    still = rc.reconcile(job, rc.Observed(pods=[queued_pod(0)], workload=workload("Pending", NEEDS_16)), hours_later, CONFIG, POLICY)
    assert still.status["phase"] == "Pending" and "startTime" not in still.status
    admitted_pod = queued_pod(0, gated=False, node="n0")
    admitted_pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    admitted = rc.reconcile(job, rc.Observed(pods=[admitted_pod]), hours_later, CONFIG, POLICY)
    assert admitted.status["startTime"] == st.format_time(hours_later) and admitted.status["phase"] == "Running"
    job = applied(job, admitted)
    late = rc.reconcile(job, rc.Observed(pods=[admitted_pod]), hours_later + timedelta(seconds=600), CONFIG, POLICY)
    assert condition(late.status, "Failed")["reason"] == "DeadlineExceeded"


def test_suspending_a_queued_gang_deletes_its_workload_and_says_so():
    job, queued = run_waiting(make_job(2), [queued_pod(0), queued_pod(1)], workload("Pending", NEEDS_16))
    job = applied(job, queued)
    job["spec"]["suspend"] = True
    suspended = rc.reconcile(job, rc.Observed(pods=[queued_pod(0), queued_pod(1)]), NOW, CONFIG, POLICY)
    assert len(deletes(suspended)) == 2
    assert [a for a in suspended.actions if isinstance(a, rc.DeleteWorkload)] == [rc.DeleteWorkload("train-a0")]
    assert condition(suspended.status, "Scheduled")["reason"] == "JobSuspended"


def test_an_admitted_gangs_workload_is_left_to_kueue_when_its_pods_are_deleted():
    # Its pods have nodes: they end (a kubelet stops them) and, not retriable, finish the group: quota follows the GPUs.
    bound = [queued_pod(r, gated=False, node=f"n{r}") for r in range(2)]
    for pod in bound:
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    job = running_job(2)
    job["spec"]["suspend"] = True
    suspended = rc.reconcile(job, rc.Observed(pods=bound), NOW, CONFIG, POLICY)
    assert len(deletes(suspended)) == 2
    assert not [a for a in suspended.actions if isinstance(a, rc.DeleteWorkload)]


def test_kueue_preemption_restarts_the_gang_uncounted_with_kueues_reason():
    job = running_job(2)
    pods = gang(n=2)
    pods[0]["metadata"]["deletionTimestamp"] = st.format_time(NOW)
    pods[0]["status"]["conditions"].append({"type": "TerminationTarget", "status": "True", "reason": "WorkloadEvictedDueToPreempted",
                                            "message": "Preempted to accommodate a workload (UID: x) due to prioritization in the ClusterQueue"})
    result = run(job, pods)
    assert result.status["phase"] == "Restarting" and result.status["restarts"] == 0
    assert result.status["lastFailure"]["reason"] == "WorkloadEvictedDueToPreempted"
    assert "prioritization" in result.status["lastFailure"]["message"]
    assert condition(result.status, "Scheduled")["reason"] == "Restarting"


def test_unadmitted_groups_are_the_kueue_managed_groups_without_a_bound_pod():
    pods = [queued_pod(0), queued_pod(1, attempt=1, gated=False, node="n1"), queued_pod(2, attempt=1), make_pod(3)]
    assert rc.unadmitted_groups(pods) == ["train-a0"]
    unmanaged = queued_pod(0)
    unmanaged["metadata"]["finalizers"] = []
    assert rc.unadmitted_groups([unmanaged]) == []
    # Pod by pod: only a managed pod without a node may hold such a group.
    assert [rc.may_hold_its_group(pod) for pod in pods] == [True, False, True, False]
    assert not rc.may_hold_its_group(unmanaged)


def test_under_kueue_preparing_does_not_start_the_deadline_clock_admission_does():
    job = make_job(1, prepare={"enabled": True}, activeDeadlineSeconds=60)
    job["metadata"]["labels"] = {labels.KUEUE_QUEUE_NAME: "gpu-queue"}
    created = run(job, service=None, configmap=MISSING)
    assert created.status["phase"] == "Preparing" and "startTime" not in created.status
    plain = run(make_job(1, prepare={"enabled": True}, activeDeadlineSeconds=60), service=None, configmap=MISSING)
    assert plain.status["startTime"] == st.format_time(NOW), "without a queue, preparing is the start"


# --- what the handler may defer or must verify (handlers.JobReconciler._reconcile_once) ---------------------------


def test_a_status_that_only_says_creating_can_wait_for_the_look_that_sees_the_pods():
    first = run(make_job(4), service=None, configmap=MISSING)
    assert [a.kind for a in first.actions] == ["Service", "ConfigMap", "Pod", "Pod", "Pod", "Pod"]
    assert rc.status_can_wait({}, first)
    # The look that sees the pods writes the status (Created, Running) and the start's one event.
    seen = run(make_job(4), gang())
    assert not seen.actions and seen.status["phase"] == "Running"
    assert condition(seen.status, "Created")["status"] == "True" and event_reasons(seen) == ["GangCreated"]


def test_a_status_that_remembers_something_is_written_before_the_actions():
    # A restart: the new attempt must be written before the old gang is deleted.
    job = running_job()
    restart = run(job, [make_pod(0, exit_code=1, phase="Failed"), *gang()[1:]])
    assert restart.status["attempt"] == 1 and not rc.status_can_wait(job["status"], restart)
    # Re-creating the gang of a resumed job announces it (event) and changes the phase: written first too.
    suspended = applied(make_job(4), run(make_job(4, suspend=True)))
    resumed = run(suspended, service=None, configmap=MISSING)
    assert any(isinstance(a, rc.CreateObject) for a in resumed.actions)
    assert not rc.status_can_wait(suspended["status"], resumed)


def test_progress_within_a_phase_only_reports_a_new_phase_or_anything_remembered_does_not():
    job = applied(make_job(4), run(make_job(4), gang(phase="Pending")))  # Created, no pod has a node yet
    assert job["status"]["phase"] == "Pending"
    bound = gang(phase="Pending")
    for pod in bound[:2]:
        pod.setdefault("spec", {})["nodeName"] = "gpu-1"
    scheduling = run(job, bound)
    assert condition(scheduling.status, "Scheduled")["message"] == "2 of 4 pod(s) have a node"
    assert rc.status_only_reports(job["status"], scheduling)
    running = run(job, gang())
    assert running.status["phase"] == "Running" and not rc.status_only_reports(job["status"], running)
    restart = run(running_job(), [make_pod(0, exit_code=1, phase="Failed"), *gang()[1:]])
    assert not rc.status_only_reports(running_job()["status"], restart)
    assert not rc.status_only_reports({}, run(make_job(4), service=None, configmap=MISSING))  # creates


def test_restarts_and_endings_are_decisions_for_good_a_pending_gang_is_not():
    job = running_job()
    assert rc.decides_for_good(job["status"], run(job, [make_pod(0, exit_code=1, phase="Failed"), *gang()[1:]]))
    assert rc.decides_for_good(job["status"], run(job, gang()[:3]))  # a pod vanished: restart
    assert rc.decides_for_good(job["status"], run(job, gang(phase="Succeeded", exit_code=0)))
    assert not rc.decides_for_good(job["status"], run(job, gang()))
    assert not rc.decides_for_good({}, run(make_job(4), service=None, configmap=MISSING))
