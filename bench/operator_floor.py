"""The floor: a bare client that POSTs exactly the objects the operator renders for an SFTJob (its Service, ConfigMap
and N pods, from sftjob_operator.render), nothing else: no watch, no reads, no status. How fast the API server
itself lets a gang come into existence on this machine; the operator's figures are read against it
(bench/operator_anchors.py runs it beside the operator and the Go peer).

    .venv/bin/python bench/operator_floor.py [--single-runs 20] [--bursts 100,200] [--nnodes 4] [--workers 1,16]

Keep-alive connections (one urllib3 pool), `--workers` concurrent POSTs. Figures: one job alone, p50/p99 of start
-> all N pods created (seen by a pod watch, as for the operator); M jobs at once, start -> the last job's pods.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_common import PodWatch, bench_cluster, new_namespace, percentile  # noqa: E402

from tests.cluster.operator_harness import sftjob  # noqa: E402
from sftjob_operator.config import OperatorConfig  # noqa: E402
from sftjob_operator.kube import ClientTransport  # noqa: E402
from sftjob_operator.render import new_rdzv_id, pod_name, render_gang  # noqa: E402

FLOOR_USER_AGENT = "th-bench-floor/1"
BENCH_USER_AGENT = "th-bench/1"  # the benchmarks' own requests (SFTJob POSTs, pod watches), told apart in the audit log
_PATHS = {"Service": "services", "ConfigMap": "configmaps", "Pod": "pods"}
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def api_client(cluster, user_agent: str, pool_size: int = 32):
    """A client of its own (keep-alive pool sized for `pool_size` concurrent requests) with its own user agent."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=cluster.kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    configuration.retries = 0
    api = client.ApiClient(configuration)
    api.user_agent = user_agent
    return api


def gang_objects(name: str, namespace: str, nnodes: int) -> list[dict[str, Any]]:
    """What the operator creates for `sftjob(name, nnodes=...)`: rendered by its own render_gang. Without owner
    references: there is no SFTJob here, and the garbage collector would delete the orphans mid-measurement."""
    job = sftjob(name, namespace, nnodes=nnodes, nproc_per_node=1)
    job["metadata"]["uid"] = str(uuid.uuid4())
    gang = render_gang(job, attempt=0, rdzv_id=new_rdzv_id(job["metadata"]["uid"], 0), config=OperatorConfig())
    objects = gang.objects()
    for obj in objects:
        obj["metadata"].pop("ownerReferences", None)
    return objects


def pod_names(name: str, nnodes: int) -> list[str]:
    return [pod_name(name, rank) for rank in range(nnodes)]


class Floor:
    """POSTs gangs' objects with `workers` concurrent requests over keep-alive connections."""

    def __init__(self, cluster, workers: int) -> None:
        # The kubernetes client's own path (serialisation, urllib3's pool): the floor is what a plain client does.
        self.transport = ClientTransport(api_client(cluster, FLOOR_USER_AGENT, pool_size=max(workers, 1) * 2))
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _post(self, obj: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{obj['metadata']['namespace']}/{_PATHS[obj['kind']]}"
        status, _, _ = self.transport.send("POST", path, [], obj, JSON_HEADERS, 60)
        if not 200 <= status < 300:
            raise RuntimeError(f"floor: POST {obj['kind']} {obj['metadata']['name']}: HTTP {status}")

    def submit(self, obj: dict[str, Any]) -> Future:
        """POST one object on one of the workers."""
        return self.pool.submit(self._post, obj)

    def create(self, jobs: list[list[dict[str, Any]]]) -> None:
        """Creates every object of every job (in job order, each job's objects in the operator's order); returns
        once all are created."""
        for future in [self.submit(obj) for objects in jobs for obj in objects]:
            future.result()


def wait_created(watch: PodWatch, names: list[str], timeout: float) -> float:
    """Monotonic time the last of `names` was first seen by `watch`."""
    deadline = time.monotonic() + timeout
    while True:
        seen = [watch.created.get(name) for name in names]
        if all(seen):
            return max(seen)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sum(1 for s in seen if s is None)} pod(s) not created after {timeout}s")
        time.sleep(0.01)


def _print_ms(label: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"  {label}: p50 {percentile(ms, 50):7.1f} ms   p99 {percentile(ms, 99):7.1f} ms   (n={len(ms)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single-runs", type=int, default=20)
    parser.add_argument("--bursts", default="100,200", help="comma-separated job counts created at once")
    parser.add_argument("--nnodes", type=int, default=4)
    parser.add_argument("--workers", default="1,16", help="comma-separated numbers of concurrent POSTs")
    args = parser.parse_args(argv)
    bursts = [int(b) for b in args.bursts.split(",") if b]
    with bench_cluster(f"th-floor-{__import__('os').getpid()}", pool_nodes=16) as cluster:
        for workers in [int(w) for w in args.workers.split(",")]:
            floor = Floor(cluster, workers)
            namespace = new_namespace(cluster, f"floor-w{workers}")
            watch = PodWatch(cluster, namespace)
            watch.api_client.user_agent = BENCH_USER_AGENT
            watch.start()
            print(f"floor, {workers} concurrent POST(s), 1 job x {args.nnodes} nodes, {args.single_runs} runs")
            times = []
            for run in range(args.single_runs + 1):  # run 0 warms the connections up
                name = f"single-{run}"
                started = time.monotonic()
                floor.create([gang_objects(name, namespace, args.nnodes)])
                done = wait_created(watch, pod_names(name, args.nnodes), 60)
                if run:
                    times.append(done - started)
            _print_ms("start -> all pods created", times)
            for jobs in bursts:
                names = [f"b{jobs}-{i}" for i in range(jobs)]
                objects = [gang_objects(name, namespace, args.nnodes) for name in names]
                started = time.monotonic()
                floor.create(objects)
                done = wait_created(watch, [p for name in names for p in pod_names(name, args.nnodes)], 600)
                print(f"  {jobs} jobs at once: the last job's pods created {done - started:.2f} s after the start")
            watch.stop()
            floor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
