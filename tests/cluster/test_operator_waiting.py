"""Why a gang waits, without Kueue: the scheduler's reason on the SFTJob (conditions, events, `kubectl get`, `kubectl
describe`) for pods that cannot be placed (more GPUs than any node has, a missing PVC, an unknown GPU resource), and
unschedulableTimeoutSeconds failing such a job."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply,
    condition,
    describe_job,
    get_job,
    job_pods,
    sftjob,
    wait_phase,
    wait_until,
)

pytestmark = [pytest.mark.cluster]


@pytest.fixture
def operator(operator_pool, cluster, namespace, tmp_path: Path):
    process = OperatorProcess(cluster, [namespace], tmp_path / "operator.log").start()
    yield process
    process.stop()
    print(f"--- operator log ({namespace}) ---\n{process.log_tail(60)}")


@pytest.mark.timeout(180)
def test_unschedulable_gangs_say_the_schedulers_reason_and_a_timeout_fails_them(cluster, namespace, operator):
    ns = namespace
    missing_claim = {"name": "data", "claimName": "no-such-claim", "mountPath": "/data"}
    apply(
        cluster,
        sftjob("too-many-gpus", ns, nnodes=2, nproc_per_node=9),  # nodes have 8
        sftjob("missing-pvc", ns, nnodes=2, nproc_per_node=8, volumes=[missing_claim]),
        sftjob("unknown-gpu", ns, nnodes=2, nproc_per_node=8, gpuResourceName="example.com/gpu",
               unschedulableTimeoutSeconds=8),
    )
    expected = {
        "too-many-gpus": "Insufficient nvidia.com/gpu",
        "missing-pvc": 'persistentvolumeclaim "no-such-claim" not found',
        "unknown-gpu": "Insufficient example.com/gpu",
    }
    for name, text in expected.items():
        def says(name=name, text=text):
            job = get_job(cluster, ns, name)
            scheduled = condition(job, "Scheduled") or {}
            return scheduled.get("reason") == "Unschedulable" and text in scheduled.get("message", "") and job
        job = wait_until(says, 60, f"{name} Unschedulable: {text}", describe=describe_job(cluster, ns, name))
        assert job["status"]["phase"] == "Pending"
        ready = condition(job, "Ready")
        assert ready["reason"] == "Unschedulable" and text in ready["message"]
        assert condition(job, "Reconciling")["status"] == "True"
        events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
        assert any(e["reason"] == "Unschedulable" and e["type"] == "Warning" and text in e["message"] for e in events)
        assert text in cluster.kubectl("describe", "sftjob", name, "-n", ns).stdout

    print("\n--- kubectl get sftjobs -o wide (unschedulable) ---\n" + cluster.kubectl("get", "sftjobs", "-n", ns, "-o", "wide").stdout)
    rows = cluster.kubectl("get", "sftjobs", "-n", ns).stdout.splitlines()
    header = rows[0].split()
    assert header[:3] == ["NAME", "PHASE", "REASON"]
    assert {row.split()[0]: row.split()[2] for row in rows[1:]} == {name: "Unschedulable" for name in expected}
    wide = cluster.kubectl("get", "sftjobs", "-n", ns, "-o", "wide").stdout
    assert "MESSAGE" in wide and "Insufficient example.com/gpu" in wide

    # unschedulableTimeoutSeconds: that job fails with the scheduler's reason; the others (unset) keep waiting.
    failed = wait_phase(cluster, ns, "unknown-gpu", "Failed", timeout=40)
    assert condition(failed, "Failed")["reason"] == "Unschedulable"
    assert "example.com/gpu" in condition(failed, "Failed")["message"]
    wait_until(lambda: not [p for p in job_pods(cluster, ns, "unknown-gpu") if not p["metadata"].get("deletionTimestamp")],
               30, "unknown-gpu's pods deleted")
    assert get_job(cluster, ns, "too-many-gpus")["status"]["phase"] == "Pending"
