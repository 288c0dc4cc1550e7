"""Shared pieces of the operator benchmarks: a cluster (TRAINING_HUB_KUBECONFIG, or a fresh kwokctl one), the
operator as a subprocess, a pod watch with arrival times, the operator's /metrics and RSS."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.cluster.deploy_helpers import install_crd  # noqa: E402
from tests.cluster.operator_harness import POOL_LABEL, OperatorProcess, create_pool  # noqa: E402
from tests.support import kwok_cluster  # noqa: E402


@contextlib.contextmanager
def bench_cluster(name: str = "th-bench", *, pool_nodes: int = 8, gpus_per_node: int = 128,
                  audit: bool = False) -> Iterator:
    """`audit`: a cluster started here writes an audit log (`cluster.audit_log`; tests/support/audit_log.py)."""
    bin_dir = kwok_cluster.find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no control-plane binaries: run `hack/control-plane.sh build` first")
    external = os.environ.get("TRAINING_HUB_KUBECONFIG")
    cluster = kwok_cluster.attach_cluster(external, bin_dir) if external else kwok_cluster.start_cluster(name, bin_dir, audit=audit)
    try:
        install_crd(cluster)
        # Someone else's cluster (e.g. the test session's, for the CI smoke run) keeps the pool it has: its other
        # users size their tests by it.
        if not (external and cluster.kubectl("get", "nodes", "-l", POOL_LABEL, "-o", "name").stdout.strip()):
            create_pool(cluster, count=pool_nodes, gpus_per_node=gpus_per_node)
        yield cluster
    finally:
        for namespace in _namespaces:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
        if not external:
            kwok_cluster.stop_cluster(name, bin_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_operator(cluster, namespace: str, log_dir: Path, env: dict[str, str] | None = None) -> Iterator[OperatorProcess]:
    port = free_port()
    # production timings (reconcile.ReconcilePolicy / handlers.RuntimeSettings defaults), not the tests' fast ones
    operator = OperatorProcess(cluster, [namespace], log_dir / f"operator-{namespace}.log", env=env, metrics_port=port,
                               fast=False)
    operator.start()
    try:
        deadline = time.monotonic() + 60
        while scrape(operator) is None:
            if time.monotonic() > deadline or operator.process.poll() is not None:
                raise RuntimeError(f"the operator did not start:\n{operator.log_tail()}")
            time.sleep(0.2)
        time.sleep(1.0)  # let kopf finish its initial listing
        yield operator
    finally:
        operator.stop()


def scrape(operator: OperatorProcess) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def api_requests(operator: OperatorProcess, *, by_resource: bool = False) -> dict[str, float]:
    """The operator's API requests so far, by verb (or by "verb resource", e.g. "patch sftjobs/status")."""
    text = scrape(operator) or ""
    totals: dict[str, float] = {}
    for m in re.finditer(r'^sftjob_api_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = f"{labels.get('verb')} {labels.get('resource')}" if by_resource else labels.get("verb", "")
        totals[key] = totals.get(key, 0) + float(m.group(2))
    return totals


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_namespaces: list[str] = []


def new_namespace(cluster, prefix: str) -> str:
    """A fresh namespace, deleted (with everything in it) when bench_cluster ends."""
    name = cluster.create_namespace(f"{prefix}-{secrets.token_hex(3)}")
    _namespaces.append(name)
    return name


class PodWatch:
    """Watches the pods of a namespace; records when each pod was first seen and first seen Running."""

    def __init__(self, cluster, namespace: str) -> None:
        self.api_client = cluster.api_client()
        self.namespace = namespace
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.job_of: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def start(self) -> "PodWatch":
        self._thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("pod watch did not start")
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            try:
                resource_version = self._watch_once(resource_version)
            except Exception as error:  # noqa: BLE001 - a benchmark's watch reconnects, and says why
                print(f"pod watch: {type(error).__name__}: {error}; reconnecting", file=sys.stderr)
                resource_version = ""
                time.sleep(0.2)

    def _watch_once(self, resource_version: str) -> str:
        query = [("watch", "true"), ("timeoutSeconds", 300)]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        method, url, headers, _, _ = self.api_client.param_serialize(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods", query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
        )
        response = self.api_client.rest_client.pool_manager.request(method, url, headers=headers, preload_content=False,
                                                                    timeout=None)
        self.ready.set()
        buffer = b""
        try:
            for chunk in response.stream(65536, decode_content=True):
                now = time.monotonic()
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        return ""  # e.g. 410 Gone: start over from now
                    self._record(event, now)
                    resource_version = (event.get("object") or {}).get("metadata", {}).get("resourceVersion", resource_version)
                if self._stop.is_set():
                    break
        finally:
            response.release_conn()
        return resource_version

    def _record(self, event: dict, now: float) -> None:
        pod = event.get("object") or {}
        name = (pod.get("metadata") or {}).get("name")
        if not name:
            return
        self.job_of.setdefault(name, (pod["metadata"].get("labels") or {}).get("training-hub.io/job-name", ""))
        self.created.setdefault(name, now)
        if (pod.get("status") or {}).get("phase") == "Running":
            self.running.setdefault(name, now)

    def job_times(self, job: str, nnodes: int) -> tuple[float | None, float | None]:
        """(all pods created, all pods running) monotonic times for one job, None when not yet."""
        names = [f"{job}-node-{rank}" for rank in range(nnodes)]
        created = [self.created.get(n) for n in names]
        running = [self.running.get(n) for n in names]
        return (max(created) if all(created) else None, max(running) if all(running) else None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]
