"""Apply -> all pods created: how fast the operator turns SFTJobs into gangs, and how many API requests it spends.

    .venv/bin/python bench/operator_startup.py [--single-runs 30] [--burst-jobs 100] [--nnodes 4]

Runs on a fresh kwokctl cluster (or TRAINING_HUB_KUBECONFIG): real API server, scheduler and controllers, kwok
kubelets. The operator runs as `sftjob-operator run` (a subprocess, production timings). Figures:
- 1 job x N nodes, applied alone, repeated: p50/p99 of apply -> all N pods created, and -> all N pods Running;
- M jobs x N nodes applied at once (M parallel POSTs): the same per job, plus the time until the last gang exists;
- API requests the operator made per job start (from its /metrics, until every gang runs and the operator is idle).
Timings depend on this machine (2 shared cores here); compare them with each other, not with a big cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_common import (  # noqa: E402
    PodWatch,
    api_requests,
    bench_cluster,
    cpu_seconds,
    new_namespace,
    percentile,
    running_operator,
)

from tests.cluster.operator_harness import sftjob  # noqa: E402
from sftjob_operator.kube import GROUP, PLURAL, VERSION, Kube  # noqa: E402


def _post_job(kube: Kube, namespace: str, body: dict) -> float:
    submitted = time.monotonic()
    kube.request("bench", "POST", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}", body=body)
    return submitted


def _wait_jobs(watch: PodWatch, jobs: list[str], nnodes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(watch.job_times(job, nnodes)[1] is None for job in jobs):
        if time.monotonic() > deadline:
            missing = [job for job in jobs if watch.job_times(job, nnodes)[1] is None]
            raise RuntimeError(f"{len(missing)} job(s) not running after {timeout}s: {missing[:5]}")
        time.sleep(0.05)


def _wait_idle(operator, settle: float = 2.0, timeout: float = 60) -> dict[str, float]:
    """The request counters once they stop moving (the last status patches are done)."""
    deadline = time.monotonic() + timeout
    last = api_requests(operator)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = api_requests(operator)
        if now == last:
            return now
        last = now
    return last


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {verb: after.get(verb, 0) - before.get(verb, 0) for verb in sorted(set(after) | set(before)) if after.get(verb, 0) - before.get(verb, 0)}


def _summary(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{label}: p50 {percentile(ms, 50):7.1f} ms   p99 {percentile(ms, 99):7.1f} ms   max {max(ms):7.1f} ms   (n={len(ms)})"


# Progress polling and the resync safety net are steady-state costs, not job-start costs: push them out of the window.
QUIET = {"SFTJOB_OPERATOR_PROGRESS_INTERVAL_SECONDS": "600", "SFTJOB_OPERATOR_RESYNC_SECONDS": "600"}


def _report_single(args, figures: dict, created: list[float], running: list[float], requests: list[float]) -> None:
    figures["single_created_ms"] = {"p50": percentile(created, 50) * 1000, "p99": percentile(created, 99) * 1000}
    figures["single_running_ms"] = {"p50": percentile(running, 50) * 1000, "p99": percentile(running, 99) * 1000}
    figures["single_requests_per_job"] = sum(requests) / len(requests)
    print(f"1 job x {args.nnodes} nodes, {args.single_runs} runs")
    print("  " + _summary("apply -> all pods created", created))
    print("  " + _summary("apply -> all pods Running", running))
    print(f"  API requests per job start: {figures['single_requests_per_job']:.1f}  "
          f"(first run by verb: {figures['single_requests_by_verb']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single-runs", type=int, default=30)
    parser.add_argument("--burst-jobs", type=int, default=100)
    parser.add_argument("--nnodes", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    figures: dict = {"nnodes": args.nnodes}

    with bench_cluster(pool_nodes=max(args.nnodes, 8), gpus_per_node=128) as cluster:
        kube = Kube(cluster.api_client())

        # --- 1 job x N nodes, one at a time ------------------------------------------------------------------
        namespace = new_namespace(cluster, "bench-single") if args.single_runs > 0 else None
        with (running_operator(cluster, namespace, log_dir, env=QUIET) if namespace else contextlib.nullcontext()) as operator:
            watch = PodWatch(cluster, namespace).start() if namespace else None
            created, running, requests = [], [], []
            for run in range(args.single_runs + 1 if namespace else 0):  # run 0 warms up (imports, connection pools)
                name = f"single-{run}"
                before = _wait_idle(operator, settle=0.5)
                submitted = _post_job(kube, namespace, sftjob(name, namespace, nnodes=args.nnodes, nproc_per_node=1))
                _wait_jobs(watch, [name], args.nnodes, 60)
                after = _wait_idle(operator, settle=0.5)
                all_created, all_running = watch.job_times(name, args.nnodes)
                if run:
                    created.append(all_created - submitted)
                    running.append(all_running - submitted)
                    requests.append(sum(_delta(after, before).values()))
                    if run == 1:
                        figures["single_requests_by_verb"] = _delta(after, before)
                cluster.kubectl("delete", "sftjob", name, "-n", namespace, "--wait=false")
            if watch:
                watch.stop()
        if created:
            _report_single(args, figures, created, running, requests)

        # --- M jobs x N nodes at once ------------------------------------------------------------------------
        namespace = new_namespace(cluster, "bench-burst")
        with running_operator(cluster, namespace, log_dir, env=QUIET) as operator:
            watch = PodWatch(cluster, namespace).start()
            names = [f"burst-{i}" for i in range(args.burst_jobs)]
            before = _wait_idle(operator, settle=0.5)
            cpu_before = cpu_seconds(operator.pid)
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=16) as pool:
                submitted = dict(zip(names, pool.map(
                    lambda n: _post_job(kube, namespace, sftjob(n, namespace, nnodes=args.nnodes, nproc_per_node=1)), names)))
            applied = time.monotonic() - started
            _wait_jobs(watch, names, args.nnodes, 600)
            after = _wait_idle(operator)
            watch.stop()
            created = [watch.job_times(n, args.nnodes)[0] - submitted[n] for n in names]
            running = [watch.job_times(n, args.nnodes)[1] - submitted[n] for n in names]
            last_created = max(watch.job_times(n, args.nnodes)[0] for n in names) - started
            last_running = max(watch.job_times(n, args.nnodes)[1] for n in names) - started
            figures["burst_operator_cpu_s"] = cpu_seconds(operator.pid) - cpu_before
            by_verb = _delta(after, before)
        figures["burst_created_ms"] = {"p50": percentile(created, 50) * 1000, "p99": percentile(created, 99) * 1000}
        figures["burst_running_ms"] = {"p50": percentile(running, 50) * 1000, "p99": percentile(running, 99) * 1000}
        figures["burst_last_gang_created_s"] = last_created
        figures["burst_requests_per_job"] = sum(by_verb.values()) / args.burst_jobs
        figures["burst_requests_by_verb_per_job"] = {v: c / args.burst_jobs for v, c in by_verb.items()}
        print(f"{args.burst_jobs} jobs x {args.nnodes} nodes applied at once ({applied:.2f}s to POST them all)")
        print("  " + _summary("apply -> all pods created", created))
        print("  " + _summary("apply -> all pods Running", running))
        print(f"  last gang created {last_created:.2f}s, last gang Running {last_running:.2f}s after the first POST; "
              f"operator CPU used meanwhile: {figures['burst_operator_cpu_s']:.1f}s")
        print(f"  API requests per job start: {figures['burst_requests_per_job']:.1f}  "
              f"(by verb: { {v: round(c, 2) for v, c in figures['burst_requests_by_verb_per_job'].items()} })")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"operator logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
