"""The operator across kube-apiserver restarts: how long until it works again, and how long a deleted job's pods live.

    .venv/bin/python bench/operator_outage.py [--runs 3] [--operator-src DIR]

Runs on a fresh kwokctl cluster (or TRAINING_HUB_KUBECONFIG). Figures:
- start-up recovery: the operator is started while the API server is down (or it goes down 0.3 s / 1.5 s after the
  start); once the API server is back, the time until a job created then has all its pods Running;
- `kubectl delete sftjob` -> no pod of the job left, on a quiet cluster and right after an API-server restart
  (the garbage collector's view of the CRD lags after a restart).
`--operator-src DIR` runs the operator from another checkout's `operator/` (e.g. an older commit, for a before/after);
`--gc-only` stops the operator before each delete (the garbage collector alone: how deletes worked before).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_common import bench_cluster, new_namespace, percentile  # noqa: E402

from tests.cluster.operator_harness import OperatorProcess, apply, job_pods, sftjob, wait_gang_running, wait_until  # noqa: E402


def _operator(cluster, namespace: str, log_dir: Path, src: Path | None) -> OperatorProcess:
    env = {"PYTHONPATH": f"{src}:{os.environ.get('PYTHONPATH', '')}"} if src else None
    return OperatorProcess(cluster, [namespace], log_dir / f"operator-{namespace}.log", env=env)


def _delete_seconds(cluster, namespace: str, name: str) -> float:
    started = time.monotonic()
    cluster.kubectl("delete", "sftjob", name, "-n", namespace, "--wait=false")
    wait_until(lambda: not job_pods(cluster, namespace, name), 300, f"pods of {name} gone", interval=0.1)
    return time.monotonic() - started


def start_up_recovery(cluster, log_dir: Path, src: Path | None, down_before: float | None, down_after: float | None) -> float:
    namespace = new_namespace(cluster, "bench-outage")
    operator = _operator(cluster, namespace, log_dir, src)
    try:
        if down_before is not None:
            cluster.stop_apiserver()
            operator.start()
            time.sleep(down_before)
        else:
            operator.start()
            time.sleep(down_after)
            cluster.stop_apiserver()
        time.sleep(3)
        cluster.start_apiserver()
        back = time.monotonic()
        apply(cluster, sftjob("after", namespace, nnodes=2))
        try:
            wait_gang_running(cluster, namespace, "after", 2, timeout=300)
        except AssertionError:
            return float("inf")  # never (the operator watches nothing: the bug this measures)
        return time.monotonic() - back
    finally:
        if cluster.apiserver_pid() is None:
            cluster.start_apiserver()
        # Free the GPUs for the next run (the pool holds 8 such gangs).
        cluster.kubectl("delete", "sftjobs", "--all", "-n", namespace, "--wait=false", check=False)
        operator.stop()


def _wait_served(cluster) -> None:
    """Until discovery lists sftjobs (an operator started before that would not watch them, before the fix)."""
    wait_until(lambda: "sftjobs" in cluster.kubectl("get", "--raw", "/apis/training-hub.io/v1alpha1", check=False).stdout,
               120, "sftjobs served by API discovery")
    time.sleep(2)


def delete_times(cluster, log_dir: Path, src: Path | None, restart: bool, gc_only: bool = False) -> float:
    namespace = new_namespace(cluster, "bench-delete")
    _wait_served(cluster)
    operator = _operator(cluster, namespace, log_dir, src).start()
    try:
        apply(cluster, sftjob("doomed", namespace, nnodes=2))
        wait_gang_running(cluster, namespace, "doomed", 2, timeout=120)
        if gc_only:
            operator.stop()  # the pods are left to the garbage collector alone, as before the operator deleted them
        if restart:
            cluster.stop_apiserver()
            time.sleep(1)
            cluster.start_apiserver()
        return _delete_seconds(cluster, namespace, "doomed")
    finally:
        operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--operator-src", type=Path, help="run the operator package from this directory instead")
    parser.add_argument("--cases", choices=("all", "startup", "delete"), default="all")
    parser.add_argument("--gc-only", action="store_true",
                        help="stop the operator before each delete: the garbage collector alone removes the pods")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="operator-outage-bench-"))
    src = args.operator_src.resolve() if args.operator_src else None
    figures: dict = {"operator_src": str(src or "this checkout")}
    with bench_cluster(pool_nodes=4, gpus_per_node=8) as cluster:
        startup = (("down 1 s before start", 1.0, None), ("down 0.3 s after start", None, 0.3),
                   ("down 1.5 s after start", None, 1.5))
        for label, before, after in startup if args.cases in ("all", "startup") else ():
            times = []
            for _ in range(args.runs):
                times.append(start_up_recovery(cluster, log_dir, src, before, after))
                print(f"  start-up, API server {label}: {times[-1]:.1f} s", flush=True)
            figures[f"start_up_recovery_s[{label}]"] = times
            print(f"operator start, API server {label}: back -> new job Running  "
                  f"p50 {percentile(times, 50):.1f} s  max {max(times):.1f} s  (n={len(times)})")
        for restart in (False, True) if args.cases in ("all", "delete") else ():
            times = []
            for _ in range(args.runs):
                times.append(delete_times(cluster, log_dir, src, restart, args.gc_only))
                print(f"  delete -> no pods ({'after a restart' if restart else 'quiet'}): {times[-1]:.2f} s", flush=True)
            label = "right after an API-server restart" if restart else "quiet cluster"
            figures[f"delete_to_no_pods_s[{label}]"] = times
            print(f"kubectl delete sftjob -> no pods, {label}: p50 {percentile(times, 50):.2f} s  "
                  f"max {max(times):.2f} s  (n={len(times)})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"operator logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
