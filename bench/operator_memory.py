"""Operator memory with many SFTJobs present: RSS of `sftjob-operator run` with 0 and with N (default 1,000) SFTJobs.

    .venv/bin/python bench/operator_memory.py [--jobs 1000] [--running 0] [--nnodes 2]

    # the scale run: 1,000 SFTJobs x 8 nodes = 8,000 pods on 80 fake nodes (minutes)
    .venv/bin/python bench/operator_memory.py --jobs 1000 --running 1000 --nnodes 8

The jobs are created suspended (no pods: 1,000 gangs would be 4,000 pods), so the figure is the operator's own
per-job cost: kopf's watch and per-object state, the reconciler's cached body, its timers. `--running K` also lets
K of them run gangs of --nnodes pods (their pods are watched and cached too). Every job is reconciled (status.phase set) before RSS
is read. Also prints how long the operator took to give all N jobs a status.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_common import bench_cluster, cpu_seconds, new_namespace, rss_mib, running_operator  # noqa: E402

from tests.cluster.operator_harness import apply, sftjob  # noqa: E402


def _phases(cluster, namespace: str) -> list[str]:
    items = cluster.kubectl_json("get", "sftjobs", "-n", namespace)["items"]
    return [(item.get("status") or {}).get("phase") or "" for item in items]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--running", type=int, default=0, help="how many of the jobs run gangs")
    parser.add_argument("--nnodes", type=int, default=2, help="pods per running gang")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    figures: dict = {"jobs": args.jobs, "running": args.running, "nnodes": args.nnodes}
    pool_nodes = max(8, args.nnodes, -(-args.running * args.nnodes // 100))  # a fake node holds 110 pods

    with bench_cluster(pool_nodes=pool_nodes, gpus_per_node=128) as cluster:
        namespace = new_namespace(cluster, "bench-memory")
        with running_operator(cluster, namespace, log_dir) as operator:
            time.sleep(3)
            figures["rss_idle_mib"], _ = rss_mib(operator.pid)
            started = time.monotonic()
            batch = 200
            for first in range(0, args.jobs, batch):
                jobs = [
                    sftjob(f"mem-{i}", namespace, nnodes=args.nnodes, nproc_per_node=1, suspend=i >= args.running)
                    for i in range(first, min(args.jobs, first + batch))
                ]
                apply(cluster, *jobs)
            figures["apply_s"] = time.monotonic() - started
            deadline = time.monotonic() + 900
            while True:
                phases = _phases(cluster, namespace)
                done = sum(1 for p in phases if p in ("Suspended", "Running"))
                if len(phases) == args.jobs and done == args.jobs:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {done}/{args.jobs} jobs reconciled after 900s")
                time.sleep(1)
            figures["all_reconciled_s"] = time.monotonic() - started
            time.sleep(5)  # let the last status patches' watch echoes arrive
            figures["rss_with_jobs_mib"], figures["rss_peak_mib"] = rss_mib(operator.pid)
            figures["per_job_kib"] = (figures["rss_with_jobs_mib"] - figures["rss_idle_mib"]) * 1024 / args.jobs
            # The mass delete: every job at once; their pods go by garbage collection, each pod event reaching the
            # operator after its job's DELETED (it must not read the gone jobs back, nor keep them).
            cpu_before, started = cpu_seconds(operator.pid), time.monotonic()
            cluster.kubectl("delete", "sftjobs", "--all", "-n", namespace, "--wait=false")
            deadline = time.monotonic() + 900
            while cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip():
                if time.monotonic() > deadline:
                    raise RuntimeError("pods left 900 s after deleting every SFTJob")
                time.sleep(1)
            figures["delete_s"] = time.monotonic() - started
            time.sleep(10)  # the last pod events reach the operator
            figures["delete_cpu_s"] = cpu_seconds(operator.pid) - cpu_before
            figures["rss_after_delete_mib"], figures["rss_peak_with_delete_mib"] = rss_mib(operator.pid)

    print(f"operator RSS idle (0 SFTJobs): {figures['rss_idle_mib']:.1f} MiB")
    print(f"operator RSS with {args.jobs} SFTJobs ({args.running} running) x {args.nnodes} pods: {figures['rss_with_jobs_mib']:.1f} MiB "
          f"(peak {figures['rss_peak_mib']:.1f} MiB), {figures['per_job_kib']:.1f} KiB per job")
    print(f"{args.jobs} SFTJobs applied in {figures['apply_s']:.1f}s; all had a status after {figures['all_reconciled_s']:.1f}s")
    print(f"all deleted at once: every pod gone after {figures['delete_s']:.1f}s; operator CPU meanwhile (+10 s) "
          f"{figures['delete_cpu_s']:.1f}s; RSS after {figures['rss_after_delete_mib']:.1f} MiB, "
          f"lifetime peak {figures['rss_peak_with_delete_mib']:.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"operator logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
