"""High availability figures: reconcile latency with two replicas up versus one, and takeover times.

    .venv/bin/python bench/operator_ha.py [--runs 10] [--kills 8] [--terms 4] [--seed 1] [--json FILE]

Runs on a fresh kwokctl cluster (or TRAINING_HUB_KUBECONFIG), the operator as `sftjob-operator run` subprocesses
with production timings and the default leader election timings (lease 15 s, renew deadline 10 s, retry 2 s).
- apply -> all 4 pods created, 1 job at a time (`--runs` each): one replica without leader election, then two
  replicas with it (the leader acts, the standby watches): p50/p99 and the ratio;
- SIGKILL of the leader at a seeded random moment after a 4-node job is applied (`--kills`): kill -> the first
  pod of a job applied right after the kill, created by the new leader: p50/max;
- SIGTERM of the leader (`--terms`): the same, stop signal -> first pod.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_common import PodWatch, bench_cluster, free_port, new_namespace, percentile, scrape  # noqa: E402

from tests.cluster.operator_harness import OperatorProcess, sftjob, wait_until  # noqa: E402
from sftjob_operator.kube import GROUP, PLURAL, VERSION, Kube  # noqa: E402

QUIET = {"SFTJOB_OPERATOR_PROGRESS_INTERVAL_SECONDS": "600", "SFTJOB_OPERATOR_RESYNC_SECONDS": "600"}


def replica(cluster, namespace: str, log_dir: Path, name: str, elect: bool) -> OperatorProcess:
    env = dict(QUIET)
    if elect:
        env.update({"SFTJOB_OPERATOR_LEADER_ELECT": "true", "SFTJOB_OPERATOR_LEADER_ELECT_LEASE_NAMESPACE": namespace,
                    "POD_NAME": name})
    return OperatorProcess(cluster, [namespace], log_dir / f"{namespace}-{name}.log", env=env, metrics_port=free_port(),
                           fast=False).start()


def wait_warm(process: OperatorProcess, settle: float = 3.0) -> None:
    """Until the replica serves metrics and its watches have listed: a warm standby, as a Ready pod is. (A replica
    that has not yet seen the Lease when the leader dies waits a full lease duration from its first sight.)"""
    wait(lambda: "sftjob_operator_leader" in (scrape(process) or ""), 60, "the replica serving metrics", interval=0.2)
    time.sleep(settle)


def holder(kube: Kube, namespace: str) -> str:
    try:
        lease = kube.request("get", "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/training-hub-operator")
    except Exception:  # noqa: BLE001 - not there yet
        return ""
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def wait(predicate, timeout: float, what: str, interval: float = 0.02):
    return wait_until(predicate, timeout, what, interval=interval)


def post(kube: Kube, namespace: str, name: str, nnodes: int) -> float:
    submitted = time.monotonic()
    kube.request("bench", "POST", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                 body=sftjob(name, namespace, nnodes=nnodes, nproc_per_node=1))
    return submitted


def latencies(cluster, kube: Kube, namespace: str, runs: int) -> list[float]:
    watch = PodWatch(cluster, namespace).start()
    values = []
    for run in range(runs + 1):  # run 0 warms up
        name = f"lat-{run}"
        submitted = post(kube, namespace, name, 4)
        created = wait(lambda: watch.job_times(name, 4)[0], 60, f"{name} created")
        if run:
            values.append(created - submitted)
        cluster.kubectl("delete", "sftjob", name, "-n", namespace, "--wait=false")
        time.sleep(0.3)
    watch.stop()
    return values


def leader_process(kube: Kube, namespace: str, processes: dict[str, OperatorProcess]) -> str:
    def live():
        name = holder(kube, namespace).rsplit("_", 1)[0]
        process = processes.get(name)
        return name if process and process.process.poll() is None else None

    return wait(live, 60, "a live leader", interval=0.1)


def takeovers(cluster, kube: Kube, log_dir: Path, runs: int, seed: int, how: str) -> list[float]:
    namespace = new_namespace(cluster, f"bench-ha-{how}")
    watch = PodWatch(cluster, namespace).start()
    processes = {name: replica(cluster, namespace, log_dir, name, True) for name in ("replica-a",)}
    leader_process(kube, namespace, processes)
    processes["replica-b"] = replica(cluster, namespace, log_dir, "replica-b", True)
    wait_warm(processes["replica-b"])
    rng = random.Random(seed)
    values = []
    try:
        for run in range(runs):
            leader = leader_process(kube, namespace, processes)
            post(kube, namespace, f"gang-{run}", 4)
            time.sleep(rng.uniform(0.0, 0.3))
            stopped = time.monotonic()
            if how == "kill":
                processes[leader].kill()
            else:
                processes[leader].process.send_signal(signal.SIGTERM)  # a pod's termination: not waited for
            post(kube, namespace, f"probe-{run}", 1)
            first = wait(lambda: watch.created.get(f"probe-{run}-node-0"), 60, f"probe-{run}")
            values.append(first - stopped)
            processes[leader].process.wait(30) if how == "term" else None
            wait(lambda: watch.job_times(f"gang-{run}", 4)[0], 60, f"gang-{run} created")
            wait_warm(processes[leader].start())  # back as the standby
            cluster.kubectl("delete", "sftjob", f"gang-{run}", f"probe-{run}", "-n", namespace, "--wait=false")
            print(f"  {how} {run + 1}/{runs}: {values[-1]:.2f} s", flush=True)
    finally:
        watch.stop()
        for process in processes.values():
            process.stop()
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--terms", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="operator-ha-bench-"))
    figures: dict = {}
    with bench_cluster(f"th-bench-ha-{os.getpid()}", pool_nodes=8, gpus_per_node=128) as cluster:
        kube = Kube(cluster.api_client())
        if args.runs:
            namespace = new_namespace(cluster, "bench-ha-one")
            one = replica(cluster, namespace, log_dir, "solo", False)
            time.sleep(3)
            single = latencies(cluster, kube, namespace, args.runs)
            one.stop()
            namespace = new_namespace(cluster, "bench-ha-two")
            processes = {"replica-a": replica(cluster, namespace, log_dir, "replica-a", True)}
            leader_process(kube, namespace, processes)
            processes["replica-b"] = replica(cluster, namespace, log_dir, "replica-b", True)
            time.sleep(3)
            double = latencies(cluster, kube, namespace, args.runs)
            for process in processes.values():
                process.stop()
            p50_one, p50_two = percentile(single, 50), percentile(double, 50)
            figures["latency_ms"] = {"one": {"p50": p50_one * 1e3, "p99": percentile(single, 99) * 1e3},
                                     "two": {"p50": p50_two * 1e3, "p99": percentile(double, 99) * 1e3},
                                     "ratio_p50": p50_two / p50_one}
            print(f"apply -> 4 pods created, {args.runs} runs: one replica p50 {p50_one * 1e3:.0f} ms "
                  f"p99 {percentile(single, 99) * 1e3:.0f} ms; two replicas (leader election) p50 {p50_two * 1e3:.0f} ms "
                  f"p99 {percentile(double, 99) * 1e3:.0f} ms; ratio two/one p50 {p50_two / p50_one:.2f}")
        for how, runs in (("kill", args.kills), ("term", args.terms)):
            if not runs:
                continue
            values = takeovers(cluster, kube, log_dir, runs, args.seed, how)
            figures[f"takeover_{how}_s"] = {"p50": statistics.median(values), "max": max(values), "runs": values}
            print(f"takeover after SIG{how.upper()} of the leader ({runs} seeded runs): p50 {statistics.median(values):.2f} s, "
                  f"max {max(values):.2f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(f"logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
