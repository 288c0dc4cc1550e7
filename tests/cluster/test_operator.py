"""The operator on the real control plane: real API server (schema, CEL, status subresource), scheduler (GPU limits,
anti-affinity), controllers (garbage collector, EndpointSlices), kwok-simulated kubelets. The operator runs as
`sftjob-operator run -n <test namespace>` in a subprocess, exactly as in its Deployment."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cluster.operator_harness import (
    JOB_LABEL,
    describe_job,
    env_of,
    wait_gang_running,
    wait_phase,
    OperatorProcess,
    apply,
    condition,
    delete_pv,
    get_job,
    job_pods,
    shared_volume,
    sftjob,
    wait_until,
)

pytestmark = [pytest.mark.cluster]


@pytest.fixture
def operator(operator_pool, cluster, namespace, tmp_path: Path):
    process = OperatorProcess(cluster, [namespace], tmp_path / "operator.log").start()
    yield process
    process.stop()
    print(f"--- operator log ({namespace}) ---\n{process.log_tail(80)}")  # shown by pytest when the test failed


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_four_node_gang_is_wired_and_reported(cluster, namespace, operator):
    volume = shared_volume(cluster, namespace)
    try:
        apply(cluster, sftjob("llama", namespace, nnodes=4, nproc_per_node=8, volumes=[volume]))
        pods = wait_gang_running(cluster, namespace, "llama", 4)

        assert [p["metadata"]["name"] for p in pods] == [f"llama-node-{r}" for r in range(4)]
        assert len({p["spec"]["nodeName"] for p in pods}) == 4, "no two pods of a gang may share a node"
        ranks, rdzv_ids, endpoints = [], set(), set()
        for pod in pods:
            container = pod["spec"]["containers"][0]
            assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "8"
            assert {"name": "shared", "mountPath": "/shared"}.items() <= next(
                m for m in container["volumeMounts"] if m["name"] == "shared").items()
            claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "shared")["persistentVolumeClaim"]
            assert claim["claimName"] == "shared"
            env = env_of(pod)
            ranks.append(int(env["TRAINING_HUB_NODE_RANK"]))
            assert int(pod["metadata"]["labels"]["training-hub.io/node-rank"]) == ranks[-1]
            assert env["TRAINING_HUB_NNODES"] == "4" and env["TRAINING_HUB_NPROC_PER_NODE"] == "8"
            rdzv_ids.add(env["TRAINING_HUB_RDZV_ID"])
            endpoints.add(env["TRAINING_HUB_RDZV_ENDPOINT"])
            owner = pod["metadata"]["ownerReferences"][0]
            assert owner["kind"] == "SFTJob" and owner["name"] == "llama" and owner["controller"]
        assert sorted(ranks) == [0, 1, 2, 3]
        assert len(rdzv_ids) == 1
        [endpoint] = endpoints
        assert endpoint == f"llama.{namespace}.svc:29500"

        # The endpoint's name is the headless Service, whose only backend is rank 0.
        service = cluster.kubectl_json("get", "service", "llama", "-n", namespace)
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
        assert service["spec"]["selector"] == {JOB_LABEL: "llama", "training-hub.io/node-rank": "0"}
        assert [p["port"] for p in service["spec"]["ports"]] == [29500]

        def rank0_endpoint():
            slices = cluster.kubectl_json("get", "endpointslices", "-n", namespace,
                                          "-l", "kubernetes.io/service-name=llama")["items"]
            return [e for s in slices for e in s.get("endpoints") or []]

        endpoints = wait_until(rank0_endpoint, 60, "EndpointSlice of the rank-0 Service")
        assert [e["targetRef"]["name"] for e in endpoints] == ["llama-node-0"]
        assert endpoints[0]["addresses"] == [pods[0]["status"]["podIP"]]

        job = get_job(cluster, namespace, "llama")
        status = job["status"]
        assert status["rdzvId"] == rdzv_ids.pop()
        assert (status["nodes"], status["nodesReady"], status["nodesTotal"], status["gpusPerNode"]) == ("4/4", 4, 4, 8)
        assert status["restarts"] == 0 and status["attempt"] == 0 and status["observedGeneration"] == job["metadata"]["generation"]
        assert condition(job, "Created")["status"] == "True" and condition(job, "Running")["status"] == "True"
        assert status["startTime"]

        table = cluster.kubectl("get", "sftjobs", "-n", namespace).stdout.splitlines()
        assert table[0].split()[:6] == ["NAME", "PHASE", "REASON", "NODES", "GPUS/NODE", "RESTARTS"]
        assert table[1].split()[:6] == ["llama", "Running", "GangRunning", "4/4", "8", "0"]
        def events():
            return cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                   "involvedObject.name=llama,involvedObject.kind=SFTJob",
                                   "-o", "jsonpath={.items[*].reason}").stdout.split()

        # One event per gang start: the gang's creation (with its rdzv id); Running is the phase and its condition.
        wait_until(lambda: events() == ["GangCreated"], 10, "one GangCreated event")
    finally:
        delete_pv(cluster, namespace)


@pytest.mark.timeout(120)
def test_progress_is_read_from_the_rank0_log(cluster, namespace, operator):
    apply(cluster, sftjob("prog", namespace, nnodes=2))
    wait_gang_running(cluster, namespace, "prog", 2)
    lines = [
        "loading the model",
        json.dumps({"event": "progress", "epoch": 0, "step": 10, "loss": 2.31, "samples_seen": 320, "lr": 1e-5}),
        json.dumps({"event": "progress", "epoch": 1, "step": 40, "loss": 1.23, "samples_seen": 1280, "lr": 1e-5}),
    ]
    cluster.set_pod_log(namespace, "prog-node-0", "\n".join(lines) + "\n")
    cluster.set_pod_log(namespace, "prog-node-1", json.dumps({"event": "progress", "epoch": 9, "step": 999, "loss": 9.9}) + "\n")
    job = wait_until(
        lambda: (j := get_job(cluster, namespace, "prog")) and (j["status"].get("progress") or {}).get("step") == 40 and j,
        30, "progress from rank 0", describe=describe_job(cluster, namespace, "prog"),
    )
    progress = job["status"]["progress"]
    assert (progress["epoch"], progress["step"], progress["loss"], progress["samplesSeen"]) == (1, 40, 1.23, 1280)
    assert job["status"]["progressText"] == "epoch 1 step 40 loss 1.23"
    row = cluster.kubectl("get", "sftjob", "prog", "-n", namespace, "--no-headers").stdout
    assert "epoch 1 step 40 loss 1.23" in row


@pytest.mark.timeout(180)
def test_a_failed_pod_restarts_the_whole_gang_with_a_new_rdzv_id(cluster, namespace, operator):
    apply(cluster, sftjob("retry", namespace, nnodes=4, backoffLimit=2))
    before = wait_gang_running(cluster, namespace, "retry", 4)
    old_uids = {p["metadata"]["uid"] for p in before}
    old_rdzv = env_of(before[0])["TRAINING_HUB_RDZV_ID"]

    cluster.set_pod_terminated(namespace, "retry-node-2", 1, message=json.dumps({"outcome": "failed", "message": "NCCL timeout"}))
    after = wait_gang_running(cluster, namespace, "retry", 4, attempt=1)

    assert not old_uids & {p["metadata"]["uid"] for p in after}, "every pod of the gang is replaced"
    new_rdzv = {env_of(p)["TRAINING_HUB_RDZV_ID"] for p in after}
    assert len(new_rdzv) == 1 and old_rdzv not in new_rdzv
    job = get_job(cluster, namespace, "retry")
    assert job["status"]["restarts"] == 1 and job["status"]["attempt"] == 1
    assert job["status"]["rdzvId"] == new_rdzv.pop()
    assert job["status"]["lastFailure"] == {"rank": 2, "exitCode": 1, "reason": "TrainingFailed", "message": "NCCL timeout"}
    table = cluster.kubectl("get", "sftjob", "retry", "-n", namespace, "--no-headers").stdout.split()
    assert table[1:6] == ["Running", "GangRunning", "4/4", "2", "1"]


@pytest.mark.timeout(180)
def test_backoff_limit_exhausted_fails_the_job_and_leaves_no_pods(cluster, namespace, operator):
    apply(cluster, sftjob("flaky", namespace, nnodes=2, backoffLimit=1, cleanPodPolicy="All"))
    wait_gang_running(cluster, namespace, "flaky", 2)
    cluster.set_pod_terminated(namespace, "flaky-node-1", 1)
    wait_gang_running(cluster, namespace, "flaky", 2, attempt=1)
    cluster.set_pod_terminated(namespace, "flaky-node-0", 137, reason="OOMKilled")

    job = wait_phase(cluster, namespace, "flaky", "Failed")
    failed = condition(job, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "OOMKilled" in failed["message"]
    assert job["status"]["restarts"] == 1 and job["status"]["lastFailure"]["reason"] == "OOMKilled"
    assert job["status"]["completionTime"]
    wait_until(lambda: not job_pods(cluster, namespace, "flaky"), 30, "no pods left")
    assert cluster.kubectl("wait", "--for=condition=Failed", "--timeout=5s", "sftjob/flaky", "-n", namespace).returncode == 0


@pytest.mark.timeout(120)
def test_invalid_config_exit_fails_the_job_at_once_with_the_message(cluster, namespace, operator):
    apply(cluster, sftjob("badcfg", namespace, nnodes=3, backoffLimit=5))
    wait_gang_running(cluster, namespace, "badcfg", 3)
    summary = {"outcome": "invalid_config", "message": "dataPath /shared/data/train.jsonl: no such file"}
    cluster.set_pod_terminated(namespace, "badcfg-node-0", 78, message=json.dumps(summary))

    job = wait_phase(cluster, namespace, "badcfg", "Failed", timeout=30)
    failed = condition(job, "Failed")
    assert failed["reason"] == "InvalidConfig" and failed["message"] == summary["message"]
    assert job["status"]["restarts"] == 0 and job["status"]["attempt"] == 0
    # default cleanPodPolicy Running: no pod keeps running, the failed one stays for its logs
    wait_until(lambda: [p["metadata"]["name"] for p in job_pods(cluster, namespace, "badcfg")] == ["badcfg-node-0"],
               30, "only the failed pod left")


@pytest.mark.timeout(120)
def test_all_pods_succeeded_sets_succeeded_with_the_summary(cluster, namespace, operator):
    apply(cluster, sftjob("done", namespace, nnodes=2))
    wait_gang_running(cluster, namespace, "done", 2)
    summary = {"outcome": "succeeded", "message": "training finished", "final_checkpoint": "/shared/checkpoints/run/hf_format/samples_2560",
               "epoch": 2, "step": 80, "loss": 0.87, "resumed_from_epoch": 1}
    cluster.set_pod_terminated(namespace, "done-node-1", 0)
    time.sleep(1)
    assert get_job(cluster, namespace, "done")["status"]["phase"] == "Running", "one finished rank does not end the job"
    cluster.set_pod_terminated(namespace, "done-node-0", 0, message=json.dumps(summary))

    waited = cluster.kubectl("wait", "--for=condition=Succeeded", "--timeout=30s", "sftjob/done", "-n", namespace, check=False)
    assert waited.returncode == 0, waited.stderr
    job = get_job(cluster, namespace, "done")
    assert job["status"]["phase"] == "Succeeded" and job["status"]["completionTime"]
    assert job["status"]["summary"] == {
        "outcome": "succeeded", "message": "training finished",
        "finalCheckpoint": "/shared/checkpoints/run/hf_format/samples_2560",
        "epoch": 2, "step": 80, "loss": 0.87, "resumedFromEpoch": 1,
    }
    assert "resumed from epoch 1" in condition(job, "Succeeded")["message"]
    assert condition(job, "Succeeded")["observedGeneration"] == job["metadata"]["generation"]


@pytest.mark.timeout(180)
def test_suspend_removes_the_gang_and_resume_starts_a_new_one(cluster, namespace, operator):
    apply(cluster, sftjob("pause", namespace, nnodes=2))
    before = wait_gang_running(cluster, namespace, "pause", 2)
    cluster.kubectl("patch", "sftjob", "pause", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}')

    wait_until(lambda: not job_pods(cluster, namespace, "pause"), 30, "pods deleted on suspend")
    job = wait_phase(cluster, namespace, "pause", "Suspended")
    assert condition(job, "Suspended")["status"] == "True" and job["status"]["restarts"] == 0
    assert cluster.kubectl("wait", "--for=condition=Suspended", "--timeout=10s", "sftjob/pause", "-n", namespace).returncode == 0

    cluster.kubectl("patch", "sftjob", "pause", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    after = wait_gang_running(cluster, namespace, "pause", 2, attempt=1)
    assert env_of(after[0])["TRAINING_HUB_RDZV_ID"] != env_of(before[0])["TRAINING_HUB_RDZV_ID"]
    job = get_job(cluster, namespace, "pause")
    assert condition(job, "Suspended")["status"] == "False" and job["status"]["restarts"] == 0


@pytest.mark.timeout(120)
def test_active_deadline_fails_the_job_and_stops_its_pods(cluster, namespace, operator):
    apply(cluster, sftjob("slow", namespace, nnodes=2, activeDeadlineSeconds=4))
    wait_gang_running(cluster, namespace, "slow", 2)
    job = wait_phase(cluster, namespace, "slow", "Failed", timeout=30)
    assert condition(job, "Failed")["reason"] == "DeadlineExceeded"
    wait_until(lambda: not job_pods(cluster, namespace, "slow"), 30, "pods deleted after the deadline")


@pytest.mark.timeout(120)
def test_ttl_after_finished_deletes_the_job_and_everything_it_owns(cluster, namespace, operator):
    apply(cluster, sftjob("brief", namespace, nnodes=2, ttlSecondsAfterFinished=2))
    wait_gang_running(cluster, namespace, "brief", 2)
    for rank in range(2):
        cluster.set_pod_terminated(namespace, f"brief-node-{rank}", 0)
    wait_phase(cluster, namespace, "brief", "Succeeded")
    wait_until(lambda: get_job(cluster, namespace, "brief") is None, 30, "the SFTJob deleted after its TTL")
    _wait_owned_objects_gone(cluster, namespace, "brief")


@pytest.mark.timeout(120)
def test_deleting_the_sftjob_deletes_everything_it_owns(cluster, namespace, operator):
    apply(cluster, sftjob("gone", namespace, nnodes=3))
    wait_gang_running(cluster, namespace, "gone", 3)
    assert cluster.kubectl("get", "configmap", "gone-params", "-n", namespace).returncode == 0
    operator.stop()  # the garbage collector does this, not the operator
    cluster.kubectl("delete", "sftjob", "gone", "-n", namespace, "--wait=true", "--timeout=30s")
    _wait_owned_objects_gone(cluster, namespace, "gone")


def _wait_owned_objects_gone(cluster, namespace: str, name: str) -> None:
    def gone():
        pods = job_pods(cluster, namespace, name)
        service = cluster.kubectl("get", "service", name, "-n", namespace, check=False).returncode
        configmap = cluster.kubectl("get", "configmap", f"{name}-params", "-n", namespace, check=False).returncode
        return not pods and service != 0 and configmap != 0

    wait_until(gone, 60, f"pods, Service and ConfigMap of {name} garbage-collected")


@pytest.mark.timeout(180)
def test_creation_errors_are_reported_and_an_operator_restart_converges_without_duplicates(cluster, namespace, operator):
    # A quota lets only 2 of 4 pods be created; the operator must say why (condition + event), never stall silently.
    apply(cluster, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods", "namespace": namespace},
                    "spec": {"hard": {"pods": "2"}}})
    time.sleep(1)  # the quota controller computes usage first
    apply(cluster, sftjob("quota", namespace, nnodes=4))
    job = wait_until(
        lambda: (j := get_job(cluster, namespace, "quota")) and (condition(j, "Created") or {}).get("reason") == "CreateFailed" and j,
        60, "Created=False/CreateFailed", describe=describe_job(cluster, namespace, "quota"),
    )
    message = condition(job, "Created")["message"]
    assert "HTTP 403" in message and "exceeded quota" in message, message
    assert len(job_pods(cluster, namespace, "quota")) == 2

    # Crash the operator in the middle of creating the gang, lift the quota, start it again.
    operator.kill()
    cluster.kubectl("delete", "resourcequota", "pods", "-n", namespace)
    operator.start()
    pods = wait_gang_running(cluster, namespace, "quota", 4)
    time.sleep(2)  # give any duplicate a chance to show up
    pods = job_pods(cluster, namespace, "quota")
    assert sorted(p["metadata"]["name"] for p in pods) == [f"quota-node-{r}" for r in range(4)]
    assert len({p["metadata"]["labels"]["training-hub.io/rdzv-id"] for p in pods}) == 1
    assert len({p["spec"]["nodeName"] for p in pods}) == 4
    assert condition(get_job(cluster, namespace, "quota"), "Created")["status"] == "True"


@pytest.mark.timeout(180)
def test_operator_killed_while_creating_gangs_leaves_no_duplicate_or_orphan_pods(cluster, namespace, operator):
    operator.kill()
    names = [f"burst-{i}" for i in range(6)]
    apply(cluster, *[sftjob(name, namespace, nnodes=2, nproc_per_node=1) for name in names])
    for _ in range(3):  # kill it mid-creation a few times, at whatever point it reached
        operator.start()
        wait_until(lambda: cluster.kubectl_json("get", "pods", "-n", namespace)["items"], 60, "the first pod")
        operator.kill()
    operator.start()
    for name in names:
        wait_gang_running(cluster, namespace, name, 2, timeout=90)
    all_pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    assert sorted(p["metadata"]["name"] for p in all_pods) == sorted(f"{n}-node-{r}" for n in names for r in range(2))
    for name in names:
        pods = [p for p in all_pods if p["metadata"]["labels"][JOB_LABEL] == name]
        assert {p["metadata"]["labels"]["training-hub.io/attempt"] for p in pods} == {"0"}
        assert get_job(cluster, namespace, name)["status"]["restarts"] == 0
