"""A seeded, bounded fault-injection campaign against the real operator on the real control plane.

    .venv/bin/python -m tests.support.fault_campaign [--seed 1] [--faults 60] [--jobs 3] [--nnodes 2]

(Starts its own kwokctl cluster, or uses TRAINING_HUB_KUBECONFIG. tests/cluster/test_fault_campaign.py runs a short
one in CI.) SFTJobs run as gangs under `sftjob-operator run` while faults are injected, one after another, in an
order drawn from the seed:

- operator_kill     SIGKILL the operator at a random moment, start it again after 0-2 s
- apiserver_restart SIGKILL kube-apiserver, start it again after 0.5-3 s (controllers that lose their lease are
                    restarted, as a control-plane node's kubelet would)
- pod_delete        delete a pod of a running gang (a disruption: restart, not counted against backoffLimit)
- pod_fail          a pod of a running gang exits 1 or is OOMKilled (137): restart, counted
- node_delete       delete the node under a pod of a running gang (a replacement node joins): restart, not counted

Invariants, checked continuously by a monitor (every ~0.25 s while the API server answers) and at the end:

- one_pod_per_rank  never two live (not terminating, not finished) pods for one rank of a job
- one_rdzv_id       never live pods of two gang attempts (two rdzv ids) of one job at once
- exact_restarts    at the end, each job's status.restarts == the counted failures injected into it, and
                    status.attempt == all the gang faults injected into it (operator kills and API-server restarts
                    cause none)
- converged         every job runs its whole gang again within --converge-timeout s of the last fault
- no_leftovers      after `kubectl delete sftjob`, no pod of the job is left (within 30 s), and no pod of another job
                    was touched
- operator_alive    the operator never exits by itself, and logs no traceback

Prints the faults by kind, the violations by invariant, and the figures (convergence after the last fault, delete ->
no pods, API-server restart -> operator reconnected). Exit status 1 when an invariant was violated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.cluster.operator_harness import POOL_LABEL, OperatorProcess, sftjob  # noqa: E402

JOB_LABEL = "training-hub.io/job-name"
RANK_LABEL = "training-hub.io/node-rank"
RDZV_LABEL = "training-hub.io/rdzv-id"
POOL = "faults"
KINDS = ("operator_kill", "apiserver_restart", "pod_delete", "pod_fail", "node_delete")
DEFAULT_WEIGHTS = {"operator_kill": 3, "apiserver_restart": 2, "pod_delete": 2, "pod_fail": 3, "node_delete": 1}
NODE_LOSS_SECONDS = 150  # extra wait for the effect of a node deletion (pod GC quarantine)
INVARIANTS = ("one_pod_per_rank", "one_rdzv_id", "exact_restarts", "converged", "no_leftovers", "operator_alive")


@dataclass
class Expected:
    attempt: int = 0
    restarts: int = 0


@dataclass
class Report:
    seed: int
    faults: Counter = field(default_factory=Counter)
    fault_seconds: Counter = field(default_factory=Counter)  # time spent injecting (and awaiting the effect), by kind
    violations: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in INVARIANTS})
    converge_seconds: float | None = None
    delete_seconds: list[float] = field(default_factory=list)
    reconnect_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    checks: int = 0

    def violate(self, invariant: str, detail: str) -> None:
        if len(self.violations[invariant]) < 20:
            self.violations[invariant].append(detail)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def text(self) -> str:
        lines = [f"fault campaign, seed {self.seed}: {sum(self.faults.values())} faults in {self.wall_seconds:.0f} s, "
                 f"{self.checks} invariant checks"]
        lines.append("  faults by kind:       " + ", ".join(f"{k} {self.faults.get(k, 0)}" for k in KINDS))
        lines.append("  seconds per fault:    " + ", ".join(
            f"{k} {self.fault_seconds[k] / self.faults[k]:.1f}" for k in KINDS if self.faults.get(k)))
        lines.append("  violations:           " + ", ".join(f"{k} {len(v)}" for k, v in self.violations.items()))
        if self.converge_seconds is not None:
            lines.append(f"  converged after the last fault in {self.converge_seconds:.1f} s")
        if self.reconnect_seconds:
            lines.append("  API server started -> operator reconnected: "
                         + ", ".join(f"{s:.1f}" for s in self.reconnect_seconds) + " s")
        if self.delete_seconds:
            lines.append("  kubectl delete sftjob -> no pods left: " + ", ".join(f"{s:.2f}" for s in self.delete_seconds) + " s")
        for invariant, details in self.violations.items():
            for detail in details:
                lines.append(f"  VIOLATION {invariant}: {detail}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "faults": dict(self.faults),
                "violations": {k: len(v) for k, v in self.violations.items()},
                "converge_seconds": self.converge_seconds, "delete_seconds": self.delete_seconds,
                "reconnect_seconds": self.reconnect_seconds, "wall_seconds": self.wall_seconds}


class Campaign:
    def __init__(self, cluster, namespace: str, *, seed: int, faults: int, jobs: int, nnodes: int, log_dir: Path,
                 weights: dict[str, int] | None = None, converge_timeout: float = 90, pool_nodes: int | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.rng = random.Random(seed)
        self.fault_count = faults
        self.jobs = [f"fault-{index}" for index in range(jobs)]
        self.nnodes = nnodes
        self.weights = weights or DEFAULT_WEIGHTS
        self.converge_timeout = converge_timeout
        self.pool_nodes = pool_nodes or jobs * nnodes + 1
        self.report = Report(seed)
        self.expected = {job: Expected() for job in self.jobs}
        self.injected: dict[str, list[str]] = {job: [] for job in self.jobs}
        self.operator = OperatorProcess(cluster, [namespace], log_dir / "operator.log")
        self.api = cluster.api_client()
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._monitor_loop, daemon=True, name="invariants")
        self._nodes_made = 0
        self.expected_operator_down = threading.Event()

    # --- reads (python client: fast, one call per look) -----------------------------------------------------------
    def _get(self, path: str, timeout: float = 5) -> Any:
        method, url, headers, _, _ = self.api.param_serialize("GET", path, header_params={"Accept": "application/json"},
                                                              auth_settings=["BearerToken"])
        response = self.api.rest_client.pool_manager.request(method, url, headers=headers, timeout=timeout, retries=False)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return json.loads(response.data)

    def pods(self) -> list[dict]:
        return self._get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]

    def job(self, name: str) -> dict | None:
        try:
            return self._get(f"/apis/training-hub.io/v1alpha1/namespaces/{self.namespace}/sftjobs/{name}")
        except RuntimeError:
            return None

    @staticmethod
    def _live(pod: dict) -> bool:
        return not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")

    # --- invariants -------------------------------------------------------------------------------------------------
    def check_pods(self, pods: list[dict]) -> None:
        self.report.checks += 1
        ranks: dict[tuple[str, str], list[str]] = defaultdict(list)
        rdzv: dict[str, set[str]] = defaultdict(set)
        for pod in pods:
            if not self._live(pod):
                continue
            labels = pod["metadata"].get("labels") or {}
            job = labels.get(JOB_LABEL, "")
            ranks[(job, labels.get(RANK_LABEL, ""))].append(pod["metadata"]["name"])
            rdzv[job].add(labels.get(RDZV_LABEL, ""))
        for (job, rank), names in ranks.items():
            if len(names) > 1:
                self.report.violate("one_pod_per_rank", f"{job} rank {rank}: {names}")
        for job, ids in rdzv.items():
            if len(ids) > 1:
                self.report.violate("one_rdzv_id", f"{job}: live pods of rdzv ids {sorted(ids)}")

    def _monitor_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_pods(self.pods())
            except Exception:  # noqa: BLE001 - the API server is down (a fault): look again later
                pass
            if self.operator.process and self.operator.process.poll() is not None and not self.expected_operator_down.is_set():
                self.report.violate("operator_alive", f"the operator exited by itself (code {self.operator.process.returncode})")
                self.expected_operator_down.set()  # report once
            self._stop.wait(0.25)

    def steady(self, name: str) -> list[dict] | None:
        """The job's gang when it runs whole (status Running, all pods of status.attempt Running), else None."""
        job = self.job(name)
        status = (job or {}).get("status") or {}
        if status.get("phase") != "Running":
            return None
        attempt = str(status.get("attempt", 0))
        pods = [p for p in self.pods() if (p["metadata"].get("labels") or {}).get(JOB_LABEL) == name and self._live(p)]
        if len(pods) != self.nnodes:
            return None
        if not all(p["metadata"]["labels"].get("training-hub.io/attempt") == attempt
                   and (p.get("status") or {}).get("phase") == "Running" for p in pods):
            return None
        return pods

    def describe(self, name: str) -> str:
        """Why a job is not steady, in one line: its phase and attempt, each pod's attempt, phase and node."""
        try:
            status = (self.job(name) or {}).get("status") or {}
            pods = [p for p in self.pods() if (p["metadata"].get("labels") or {}).get(JOB_LABEL) == name]
        except Exception as error:  # noqa: BLE001 - API server restarting
            return f"unreadable: {type(error).__name__}"
        shown = [f"{p['metadata']['name']} a{p['metadata']['labels'].get('training-hub.io/attempt')} "
                 f"{(p.get('status') or {}).get('phase')} on {(p.get('spec') or {}).get('nodeName') or 'no node'}"
                 f"{' terminating' if p['metadata'].get('deletionTimestamp') else ''}" for p in pods]
        return f"phase {status.get('phase')}, attempt {status.get('attempt')}, pods: {'; '.join(shown) or 'none'}"

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except Exception:  # noqa: BLE001 - API server restarting
                value = None
            if value:
                return value
            time.sleep(0.2)
        return None

    # --- faults -----------------------------------------------------------------------------------------------------
    def _pool(self, count: int) -> None:
        """`count` more fake 8-GPU nodes of the campaign's own tainted pool (a deleted node is replaced by a new one:
        a node of the same name would take the lost pods back)."""
        nodes = self.cluster.create_gpu_nodes(count, 8, prefix=f"fault-gpu-{self._nodes_made}", labels={POOL_LABEL: POOL})
        self._nodes_made += 1
        self.cluster.kubectl("taint", "nodes", *nodes, f"{POOL_LABEL}={POOL}:NoSchedule", "--overwrite")

    def remove_pool(self) -> None:
        self.cluster.kubectl("delete", "nodes", "-l", f"{POOL_LABEL}={POOL}", "--wait=false", check=False)

    def _gang_fault(self, kind: str) -> None:
        name = self.rng.choice(self.jobs)
        pods = self.wait(lambda: self.steady(name), self.converge_timeout)
        if pods is None:
            self.report.violate("converged", f"{name} not running whole within {self.converge_timeout}s before a {kind} "
                                             f"({self.describe(name)})")
            return
        pod = self.rng.choice(sorted(pods, key=lambda p: p["metadata"]["name"]))
        pod_name = pod["metadata"]["name"]
        if kind == "pod_delete":
            self.cluster.kubectl("delete", "pod", pod_name, "-n", self.namespace, "--wait=false")
        elif kind == "pod_fail":
            if self.rng.random() < 0.5:
                self.cluster.set_pod_terminated(self.namespace, pod_name, 1)
            else:
                self.cluster.set_pod_terminated(self.namespace, pod_name, 137, reason="OOMKilled")
            self.expected[name].restarts += 1
        else:  # node_delete
            self.cluster.delete_pod_node(self.namespace, pod_name)
            self._pool(1)
        self.expected[name].attempt += 1
        self.injected[name].append(f"{kind} {pod_name} at attempt {self.expected[name].attempt - 1}")
        # The next fault on this job only once this one is counted (its attempt moved on): exact counts.
        target = self.expected[name].attempt
        # A vanished node's pods are deleted by the pod garbage collector only after its 40 s quarantine (checked
        # every 20 s, by a controller-manager that may itself be restarting after an API-server restart).
        timeout = self.converge_timeout + (NODE_LOSS_SECONDS if kind == "node_delete" else 0)
        moved = self.wait(lambda: int(((self.job(name) or {}).get("status") or {}).get("attempt", 0)) >= target, timeout)
        if not moved:
            self.report.violate("converged", f"{name}: {kind} of {pod_name} not acted on within {timeout:.0f}s")

    def _operator_kill(self) -> None:
        self.expected_operator_down.set()
        self.operator.kill()
        time.sleep(self.rng.uniform(0, 2))
        self.operator.start()
        self.expected_operator_down.clear()

    def _apiserver_restart(self) -> None:
        log_size = self.operator.log_path.stat().st_size if self.operator.log_path.exists() else 0
        self.cluster.stop_apiserver()
        time.sleep(self.rng.uniform(0.5, 3))
        back = time.monotonic()  # measured from the API server's start: it takes seconds to serve
        self.cluster.start_apiserver()

        def reconnected() -> bool:
            with open(self.operator.log_path, "rb") as log:
                log.seek(log_size)
                return b"API server reachable again" in log.read()

        if self.wait(reconnected, 60):
            self.report.reconnect_seconds.append(time.monotonic() - back)
        else:
            self.report.violate("converged", "the operator did not log its reconnection within 60 s of an API-server restart")

    def inject(self, kind: str) -> None:
        self.report.faults[kind] += 1
        started = time.monotonic()
        if kind == "operator_kill":
            self._operator_kill()
        elif kind == "apiserver_restart":
            self._apiserver_restart()
        else:
            self._gang_fault(kind)
        self.report.fault_seconds[kind] += time.monotonic() - started

    def plan(self) -> list[str]:
        """Every kind with a weight at least once (when there are enough faults), the rest drawn by weight."""
        kinds = [kind for kind in KINDS for _ in range(self.weights.get(kind, 0))]
        plan = [kind for kind in KINDS if self.weights.get(kind, 0)][: self.fault_count]
        plan += [self.rng.choice(kinds) for _ in range(self.fault_count - len(plan))]
        self.rng.shuffle(plan)
        return plan

    # --- the run ----------------------------------------------------------------------------------------------------
    def run(self) -> Report:
        started = time.monotonic()
        self._pool(self.pool_nodes)
        self.operator.start()
        for name in self.jobs:
            body = sftjob(name, self.namespace, nnodes=self.nnodes, nproc_per_node=2, backoffLimit=1000,
                          nodeSelector={POOL_LABEL: POOL},
                          tolerations=[{"key": POOL_LABEL, "operator": "Equal", "value": POOL, "effect": "NoSchedule"}])
            self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        for name in self.jobs:
            if not self.wait(lambda: self.steady(name), 120):
                self.report.violate("converged", f"{name} never ran before the first fault")
        self._monitor.start()
        try:
            for kind in self.plan():
                self.inject(kind)
                time.sleep(self.rng.uniform(0, 1.5))
            last_fault = time.monotonic()
            converged = self.wait(lambda: all(self.steady(name) for name in self.jobs), self.converge_timeout)
            if converged:
                self.report.converge_seconds = time.monotonic() - last_fault
            else:
                self.report.violate("converged", f"not every job running whole {self.converge_timeout}s after the last fault")
            self._check_counts()
            self._check_delete()
        finally:
            self._stop.set()
            self._monitor.join(5)
            self.expected_operator_down.set()
            self.operator.stop()
            log = self.operator.log_path.read_text(errors="replace") if self.operator.log_path.exists() else ""
            if "Traceback" in log:
                self.report.violate("operator_alive", "the operator logged a traceback (see its log)")
            self.report.wall_seconds = time.monotonic() - started
        return self.report

    def _check_counts(self) -> None:
        for name, expected in self.expected.items():
            status = (self.job(name) or {}).get("status") or {}
            restarts, attempt = int(status.get("restarts", 0)), int(status.get("attempt", 0))
            if (restarts, attempt) != (expected.restarts, expected.attempt):
                self.report.violate("exact_restarts", f"{name}: restarts {restarts} attempt {attempt}, injected "
                                    f"{expected.restarts} counted failure(s) in {expected.attempt} gang fault(s); "
                                    f"faults {self.injected[name]}; last failure {status.get('lastFailure')}")

    def _check_delete(self) -> None:
        survivor, doomed = self.jobs[0], self.jobs[1:]
        before = {p["metadata"]["uid"] for p in self.steady(survivor) or ()}
        for name in doomed:
            started = time.monotonic()
            self.cluster.kubectl("delete", "sftjob", name, "-n", self.namespace, "--wait=false")
            gone = self.wait(lambda: not [p for p in self.pods() if (p["metadata"].get("labels") or {}).get(JOB_LABEL) == name], 30)
            if gone:
                self.report.delete_seconds.append(time.monotonic() - started)
            else:
                self.report.violate("no_leftovers", f"pods of deleted job {name} still there after 30 s")
        after = {p["metadata"]["uid"] for p in self.steady(survivor) or ()}
        if doomed and before != after:
            self.report.violate("no_leftovers", f"deleting other jobs touched {survivor}'s pods")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--nnodes", type=int, default=2)
    parser.add_argument("--converge-timeout", type=float, default=90)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from tests.cluster.deploy_helpers import install_crd
    from tests.support import kwok_cluster

    bin_dir = kwok_cluster.find_bin_dir()
    if bin_dir is None:
        print("no control-plane binaries: run `hack/control-plane.sh build` first", file=sys.stderr)
        return 2
    external = os.environ.get("TRAINING_HUB_KUBECONFIG")
    name = f"th-faults-{os.getpid()}"
    cluster = kwok_cluster.attach_cluster(external, bin_dir) if external else kwok_cluster.start_cluster(name, bin_dir, nodes=0)
    log_dir = Path(f"/tmp/fault-campaign-{os.getpid()}")
    log_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        install_crd(cluster)
        namespace = cluster.create_namespace(f"faults-{os.getpid()}")
        report = Campaign(cluster, namespace, seed=args.seed, faults=args.faults, jobs=args.jobs, nnodes=args.nnodes,
                          log_dir=log_dir, converge_timeout=args.converge_timeout).run()
    finally:
        if not external:
            kwok_cluster.stop_cluster(name, bin_dir)
    print(report.text())
    print(f"operator log: {log_dir / 'operator.log'}")
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
