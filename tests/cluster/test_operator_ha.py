"""High availability on the real control plane: two `sftjob-operator run --leader-elect` processes, one Lease.

What is checked: with both up, exactly one acts (jobs applied meanwhile are reconciled, the standby sends no
write); the leader killed (SIGKILL) at seeded random moments while a gang is being created or restarted: the
standby takes over, no pod is created twice for one (job, attempt, rank), no failure is counted twice, every job
converges; SIGTERM hands over at once; a rolling-update-like sequence (start new, stop old, twice) loses nothing;
a paused leader (SIGSTOP past its lease) writes nothing when it wakes up.

Takeover times are printed (`pytest -s`); bench/operator_ha.py measures them over more runs. The pods are
watched through one watch, so "first action" is the moment the API server announced the first pod.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.operator_harness import (
    JOB_LABEL,
    OperatorProcess,
    apply,
    describe_job,
    free_port,
    get_job,
    sftjob,
    wait_gang_running,
    wait_until,
)

pytestmark = [pytest.mark.cluster]

LEASE = "training-hub-operator"
SEEDS = (11, 22, 33)  # kills during gang creation and during gang restart, each seed once


def ha_env(namespace: str, replica: str, **timings: float) -> dict[str, str]:
    env = {"SFTJOB_OPERATOR_LEADER_ELECT": "true", "SFTJOB_OPERATOR_LEADER_ELECT_LEASE_NAMESPACE": namespace,
           "POD_NAME": replica}
    names = {"lease_duration": "LEASE_DURATION", "renew_deadline": "RENEW_DEADLINE", "retry_period": "RETRY_PERIOD"}
    env.update({f"SFTJOB_OPERATOR_LEADER_ELECT_{names[k]}": str(v) for k, v in timings.items()})
    return env


class PodRecord:
    """Every pod of the namespace the API server ever announced (one watch, in a thread): when each first
    appeared, and under which (job, attempt, rank)."""

    def __init__(self, cluster, namespace: str) -> None:
        from kubernetes import client, watch

        self.api = client.CoreV1Api(cluster.api_client())
        self.namespace = namespace
        self.first_seen: dict[str, float] = {}  # uid -> monotonic time
        self.identity: dict[str, tuple[str, str, str]] = {}  # uid -> (job, attempt, rank)
        self._stop = threading.Event()
        self._watch = watch
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        version = None
        while not self._stop.is_set():
            stream = self._watch.Watch()
            try:
                for event in stream.stream(self.api.list_namespaced_pod, self.namespace, label_selector=JOB_LABEL,
                                           resource_version=version, timeout_seconds=5):
                    pod = event["raw_object"]
                    meta = pod["metadata"]
                    version = meta.get("resourceVersion")
                    if meta["uid"] not in self.first_seen:
                        self.first_seen[meta["uid"]] = time.monotonic()
                        labels = meta.get("labels") or {}
                        self.identity[meta["uid"]] = (labels.get(JOB_LABEL), labels.get("training-hub.io/attempt"),
                                                      labels.get("training-hub.io/node-rank"))
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - 410 Gone and friends: list again
                version = None
                time.sleep(0.1)
            finally:
                stream.stop()

    def first_pod_of(self, job: str, after: float = 0.0) -> float | None:
        times = [t for uid, t in self.first_seen.items() if self.identity[uid][0] == job and t >= after]
        return min(times) if times else None

    def duplicates(self) -> dict[tuple[str, str, str], int]:
        counts: dict[tuple[str, str, str], int] = {}
        for key in self.identity.values():
            counts[key] = counts.get(key, 0) + 1
        return {key: n for key, n in counts.items() if n > 1}

    def stop(self) -> None:
        self._stop.set()


class Replicas:
    """The operator's replicas as processes, named like pods; `leader()` maps the Lease holder to one of them."""

    def __init__(self, cluster, namespace: str, log_dir: Path, **timings: float) -> None:
        self.cluster, self.namespace, self.log_dir, self.timings = cluster, namespace, log_dir, timings
        self.processes: dict[str, OperatorProcess] = {}
        from kubernetes import client

        self.leases = client.CoordinationV1Api(cluster.api_client())

    def start(self, name: str, settle: float = 3.0) -> OperatorProcess:
        """Start (or restart) a replica and wait until it serves metrics and its watches have listed (`settle`):
        a warm standby, as a pod is once it is Ready."""
        process = self.processes.get(name) or OperatorProcess(
            self.cluster, [self.namespace], self.log_dir / f"{name}.log",
            env=ha_env(self.namespace, name, **self.timings), metrics_port=free_port())
        self.processes[name] = process.start()
        wait_until(lambda: "sftjob_operator_leader" in self.metrics(name), 60, f"{name} serving metrics",
                   describe=self.logs)
        time.sleep(settle)
        return process

    def holder(self) -> str:
        try:
            lease = self.leases.read_namespaced_lease(LEASE, self.namespace)
        except Exception:  # noqa: BLE001 - not created yet
            return ""
        return lease.spec.holder_identity or ""

    def leader(self, timeout: float = 40) -> str:
        """The name of the live replica holding the Lease."""
        def live_holder():
            holder = self.holder()
            name = holder.rsplit("_", 1)[0]
            process = self.processes.get(name)
            return name if process and process.process and process.process.poll() is None else None

        return wait_until(live_holder, timeout, "a live replica holding the lease", interval=0.1,
                          describe=self.logs)

    def metrics(self, name: str) -> dict[str, float]:
        import urllib.request

        port = self.processes[name].metrics_port
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:  # not serving yet
            return {}
        values = {}
        for line in text.splitlines():
            if line.startswith("sftjob_") and " " in line:
                key, value = line.rsplit(" ", 1)
                values[key] = float(value)
        return values

    def writes(self, name: str) -> float:
        return sum(v for k, v in self.metrics(name).items()
                   if k.startswith("sftjob_api_requests_total") and any(
                       f'verb="{verb}"' in k for verb in ("create", "patch", "delete", "event")))

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{p.log_tail(40)}" for name, p in self.processes.items())

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop()


@pytest.fixture
def pods(cluster, namespace):
    record = PodRecord(cluster, namespace)
    yield record
    record.stop()


@pytest.fixture
def replicas(operator_pool, cluster, namespace, tmp_path):
    group = Replicas(cluster, namespace, tmp_path)
    yield group
    group.stop_all()
    print(group.logs())


def converged(cluster, namespace: str, name: str, nnodes: int, attempt: int = 0, timeout: float = 60) -> None:
    wait_gang_running(cluster, namespace, name, nnodes, attempt=attempt, timeout=timeout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_two_replicas_one_acts_and_jobs_are_reconciled_while_both_run(cluster, namespace, replicas, pods):
    replicas.start("replica-a")
    assert replicas.leader() == "replica-a"
    replicas.start("replica-b")
    wait_until(lambda: replicas.metrics("replica-b").get("sftjob_operator_leader") == 0.0, 30, "replica-b up as standby")
    assert replicas.metrics("replica-a")["sftjob_operator_leader"] == 1.0

    started = time.monotonic()
    apply(cluster, *(sftjob(f"job-{i}", namespace, nnodes=2, nproc_per_node=1) for i in range(3)))
    for i in range(3):
        converged(cluster, namespace, f"job-{i}", 2)
    latency = max(pods.first_pod_of(f"job-{i}") for i in range(3)) - started
    print(f"\nHA: 3 jobs applied with two replicas up: last first-pod {latency:.2f}s after apply")

    assert replicas.writes("replica-b") == 0, "the standby wrote to the API"
    assert replicas.writes("replica-a") > 0
    assert replicas.leader() == "replica-a"
    assert not pods.duplicates()
    # The standby's cache is warm: it knows the jobs without having reconciled them.
    assert replicas.metrics("replica-b")['sftjob_jobs{phase="Running"}'] == 3.0


@pytest.mark.timeout(600)
def test_leader_killed_during_gang_creation_and_restart_standby_takes_over_without_duplicates(
    cluster, namespace, replicas, pods
):
    replicas.start("replica-a")
    replicas.leader()
    replicas.start("replica-b")
    takeovers: list[float] = []
    for round_, seed in enumerate(SEEDS):
        rng = random.Random(seed)
        # 1. Killed while the gang is being created.
        leader = replicas.leader()
        job = f"create-{round_}"
        apply(cluster, sftjob(job, namespace, nnodes=4, nproc_per_node=1))
        time.sleep(rng.uniform(0.0, 0.3))
        killed_at = time.monotonic()
        replicas.processes[leader].kill()
        probe = f"probe-c{round_}"
        apply(cluster, sftjob(probe, namespace, nnodes=1, nproc_per_node=1))
        first = wait_until(lambda: pods.first_pod_of(probe), 60, f"{probe}'s first pod", interval=0.05,
                           describe=replicas.logs)
        takeovers.append(first - killed_at)
        replicas.start(leader)  # comes back as the standby
        converged(cluster, namespace, job, 4)
        converged(cluster, namespace, probe, 1)

        # 2. Killed while the gang is being restarted after a pod failure (delete gang, back off, recreate).
        leader = replicas.leader()
        cluster.set_pod_terminated(namespace, f"{job}-node-1", 1)
        time.sleep(rng.uniform(0.0, 1.0))
        killed_at = time.monotonic()
        replicas.processes[leader].kill()
        probe = f"probe-r{round_}"
        apply(cluster, sftjob(probe, namespace, nnodes=1, nproc_per_node=1))
        first = wait_until(lambda: pods.first_pod_of(probe), 60, f"{probe}'s first pod", interval=0.05,
                           describe=replicas.logs)
        takeovers.append(first - killed_at)
        replicas.start(leader)
        converged(cluster, namespace, job, 4, attempt=1)
        status = get_job(cluster, namespace, job)["status"]
        assert status["restarts"] == 1, f"one failure, counted once: {status}"
        cluster.kubectl("delete", "sftjob", job, probe, f"probe-c{round_}", "-n", namespace, "--wait=false")

    assert not pods.duplicates(), f"pods created twice for one (job, attempt, rank): {pods.duplicates()}"
    print(f"\nHA takeover after SIGKILL of the leader ({len(takeovers)} seeded runs, lease 15 s / renew 10 s / retry 2 s): "
          f"p50 {statistics.median(takeovers):.1f}s, max {max(takeovers):.1f}s; runs: "
          + ", ".join(f"{t:.1f}" for t in takeovers))
    assert max(takeovers) < 25, takeovers  # the lease duration plus a retry, with room for a busy machine


@pytest.mark.timeout(180)
def test_sigterm_releases_the_lease_and_the_standby_acts_at_once(cluster, namespace, replicas, pods):
    replicas.start("replica-a")
    replicas.leader()
    replicas.start("replica-b")
    wait_until(lambda: replicas.metrics("replica-b").get("sftjob_operator_leader") == 0.0, 30, "replica-b up as standby")
    times = []
    for round_ in range(2):
        leader = replicas.leader()
        stopped_at = time.monotonic()
        replicas.processes[leader].process.send_signal(signal.SIGTERM)  # as the kubelet does; not waited for
        job = f"after-term-{round_}"
        apply(cluster, sftjob(job, namespace, nnodes=1, nproc_per_node=1))
        first = wait_until(lambda: pods.first_pod_of(job), 30, f"{job}'s first pod", interval=0.05,
                           describe=replicas.logs)
        times.append(first - stopped_at)
        assert replicas.processes[leader].process.wait(15) == 0  # a clean exit of its own
        converged(cluster, namespace, job, 1)
        assert "released lease" in replicas.processes[leader].log_tail(200)
        replicas.start(leader)
    print(f"\nHA takeover after SIGTERM of the leader: " + ", ".join(f"{t:.2f}s" for t in times)
          + " (stop signal -> the standby's first pod of a job applied after the stop)")
    # Well under the lease duration: the lease was released, not left to expire.
    assert max(times) < 8, times


@pytest.mark.timeout(300)
def test_rolling_update_start_new_stop_old_loses_nothing(cluster, namespace, replicas, pods):
    replicas.start("old-1")
    replicas.leader()
    replicas.start("old-2")
    steps = [("start", "new-1"), ("stop", "old-1"), ("start", "new-2"), ("stop", "old-2")]
    jobs = []
    for index, (verb, name) in enumerate(steps):
        if verb == "start":
            replicas.start(name)
        else:
            replicas.processes[name].stop()
        job = f"roll-{index}"
        apply(cluster, sftjob(job, namespace, nnodes=1, nproc_per_node=1))
        jobs.append(job)
        time.sleep(1)
    assert replicas.leader().startswith("new-")
    for job in jobs:
        converged(cluster, namespace, job, 1, timeout=60)
    assert not pods.duplicates()


@pytest.mark.timeout(240)
def test_a_paused_leader_writes_nothing_when_it_wakes_up(cluster, namespace, tmp_path, pods, operator_pool):
    """SIGSTOP the leader past its lease: the standby takes over and acts; SIGCONT: the old leader's timers and
    buffered watch events fire at once, but its lease ran out by its own clock: it sends no write, and rejoins
    as a standby. (Short timings: lease 4 s, renew deadline 2.5 s, retry 0.5 s.)"""
    replicas = Replicas(cluster, namespace, tmp_path, lease_duration=4, renew_deadline=2.5, retry_period=0.5)
    try:
        replicas.start("replica-a")
        replicas.leader()
        replicas.start("replica-b")
        wait_until(lambda: replicas.metrics("replica-b").get("sftjob_operator_leader") == 0.0, 30, "standby up")
        apply(cluster, sftjob("before", namespace, nnodes=2, nproc_per_node=1))
        converged(cluster, namespace, "before", 2)
        time.sleep(1)
        writes_before = replicas.writes("replica-a")
        assert writes_before > 0

        paused = replicas.processes["replica-a"].process
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: replicas.holder().startswith("replica-b"), 30, "replica-b took over", interval=0.2)
            # Work that the paused process would act on if it believed itself the leader: a failed pod of a
            # gang it created, and a new job.
            cluster.set_pod_terminated(namespace, "before-node-0", 1)
            apply(cluster, sftjob("during", namespace, nnodes=2, nproc_per_node=1))
            converged(cluster, namespace, "before", 2, attempt=1)
            converged(cluster, namespace, "during", 2)
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        wait_until(lambda: replicas.metrics("replica-a").get("sftjob_operator_leader") == 0.0, 20,
                   "replica-a back as standby", describe=replicas.logs)
        cluster.set_pod_terminated(namespace, "during-node-1", 1)
        converged(cluster, namespace, "during", 2, attempt=1)
        time.sleep(1)

        assert replicas.writes("replica-a") == writes_before, "the woken-up leader wrote to the API"
        assert "lost leadership" in replicas.processes["replica-a"].log_tail(400)
        assert replicas.holder().startswith("replica-b")
        for job in ("before", "during"):
            assert get_job(cluster, namespace, job)["status"]["restarts"] == 1
        assert not pods.duplicates()
    finally:
        replicas.stop_all()
        print(replicas.logs())
