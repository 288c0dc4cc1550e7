"""The operator against its anchors, in one run, interleaved: the floor (a bare client POSTing exactly what the
operator renders; bench/operator_floor.py), the Go peer (Kubeflow training-operator v1.8.1's PyTorchJob controller;
bench/operator_peer.py) and the operator (`sftjob-operator run`, production timings). Prints figures and ratios:

- floor-cr: the floor behind each job's SFTJob POST (no operator in its namespace): what any operator driven by a
  custom resource cannot beat here; `operator / floor-cr` is the operator's own share;
- 1 job x N nodes, alone, repeated (each run: every subject once, in rotating order): p50/p99 of start -> all N pods
  created (the pod watch sees the last one);
- M jobs x N nodes at once (each subject in turn, a fresh namespace and process each): start -> the last job's pods;
- API requests per job start, by verb and resource, from the API server's audit log (by the subject's user agent;
  long-running watches left out; requests of the same window that concern no measured job, such as an earlier
  job's progress log read or API discovery, are printed apart as the subject's background);
- CPU seconds (/proc/<pid>/stat) and peak RSS of the operator and the peer per burst; and for every repeat of a
  burst, the CPU seconds until its last pods of the subject, the bench process and each control-plane process (on
  shared cores their sum is the machine's work: what one process uses, the others wait for);
- with `--variant NAME:KEY=VALUE,...`, another operator subject with those environment variables: an A/B in one run.

    .venv/bin/python bench/operator_anchors.py [--single-runs 20] [--bursts 100,200] [--burst-repeats 1] [--nnodes 4]
    .venv/bin/python bench/operator_anchors.py --scale            # 1,000 jobs x 8 nodes on 64 fake nodes
    .venv/bin/python bench/operator_anchors.py --subjects floor,operator   # without the peer
    .venv/bin/python bench/operator_anchors.py --subjects operator --variant client:SFTJOB_OPERATOR_API_TRANSPORT=client

Runs on a fresh kwokctl cluster with an audit log (or TRAINING_HUB_KUBECONFIG: requests are counted only if that
cluster writes one). The peer is built first if needed (`hack/control-plane.sh peer-build`, cached; cold: minutes).
Timings depend on this machine (2 shared cores here): read the ratios, which the interleaving keeps fair.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import operator_floor  # noqa: E402
import operator_peer  # noqa: E402
from operator_common import PodWatch, bench_cluster, cpu_seconds, new_namespace, percentile, rss_mib, running_operator  # noqa: E402

from tests.cluster.operator_harness import sftjob  # noqa: E402
from tests.support import audit_log  # noqa: E402
from sftjob_operator.kube import GROUP, PLURAL, USER_AGENT, VERSION, ClientTransport  # noqa: E402

SUBJECTS = ("floor", "floor-cr", "floor-1", "peer", "operator")
# The operator's own calls, kopf's (watches, discovery), and the kubernetes client's default (operators before
# sftjob_operator.kube set its own user agent).
OPERATOR_AGENTS = (USER_AGENT, "kopf/", "OpenAPI-Generator/")
# The resync safety net is a steady-state cost, not a job-start cost: out of the window. Progress polling keeps its
# production timing: reading logs before a pod can have written any is part of what a job start costs.
OPERATOR_ENV = {"SFTJOB_OPERATOR_RESYNC_SECONDS": "600"}
# --variant NAME:KEY=VALUE,...: more operator subjects, `operator-NAME`, each with its own environment on top of
# OPERATOR_ENV. An A/B in one run, interleaved like the other subjects (separate runs differ by more than most changes).
VARIANTS: dict[str, dict[str, str]] = {}


def subject_order() -> list[str]:
    return [*SUBJECTS, *VARIANTS]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    pairs = [item.split("=", 1) for item in settings.split(",") if item]
    if not name or not pairs or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"--variant: NAME:KEY=VALUE[,KEY=VALUE...] (got {text!r})")
    return f"operator-{name}", dict(pairs)
POSTERS = 16  # concurrent POSTs of SFTJobs / PyTorchJobs in a burst, as kubectl apply from many hands


@dataclass
class Subject:
    kind: str
    namespace: str
    watch: PodWatch
    submit: Callable[[list[str]], None]
    pod_names: Callable[[str], list[str]]
    is_own_request: Callable[[audit_log.Request], bool]
    pid: int | None = None
    plane: dict[str, int] = field(default_factory=dict)  # the control plane's processes by program (kube-apiserver, ...)


@dataclass
class Measurement:
    job_created_s: list[float]  # per job: its start -> all its pods created
    last_created_s: float  # start -> the last job's pods created
    requests: collections.Counter = field(default_factory=collections.Counter)  # of the measured jobs
    background: collections.Counter = field(default_factory=collections.Counter)  # the subject's others, same window
    cpu_s: float | None = None
    rss_peak_mib: float | None = None
    pods_seen: int = 0
    # (seconds from start, "who verb resource") of every request in the window, the bench's own included
    timeline: list[tuple[float, str]] = field(default_factory=list)
    # CPU seconds from start to the last pods seen: the subject's, the bench process's (the floor's POSTs, every
    # subject's pod watch) and each control-plane process's. On shared cores, what one uses the others wait for.
    cpu_to_last: dict[str, float] = field(default_factory=dict)


def cpu_snapshot(subject: "Subject") -> dict[str, float]:
    pids = {"subject": subject.pid, "bench": os.getpid(), **subject.plane}
    snapshot = {}
    for name, pid in pids.items():
        if pid:
            with contextlib.suppress(OSError):
                snapshot[name] = cpu_seconds(pid)
    return snapshot


class Poster:
    """The benchmark's own POSTs (SFTJobs, PyTorchJobs), concurrent, under a user agent of their own."""

    def __init__(self, cluster) -> None:
        # Through the kubernetes client, as the floor's own POSTs: the bench's CPU stays comparable between subjects.
        self.transport = ClientTransport(
            operator_floor.api_client(cluster, operator_floor.BENCH_USER_AGENT, pool_size=POSTERS * 2))
        self.pool = ThreadPoolExecutor(max_workers=POSTERS)

    def post(self, path: str, body: dict) -> None:
        status, _, _ = self.transport.send("POST", path, [], body, operator_floor.JSON_HEADERS, 60)
        if not 200 <= status < 300:
            raise RuntimeError(f"POST {path} {body['metadata']['name']}: HTTP {status}")

    def post_all(self, path: str, bodies: list[dict]) -> None:
        if len(bodies) == 1:
            self.post(path, bodies[0])
            return
        for future in [self.pool.submit(self.post, path, body) for body in bodies]:
            future.result()


def start_subject(kind: str, cluster, stack: contextlib.ExitStack, args, poster: Poster, log_dir: Path,
                  peer_directory: Path | None) -> Subject:
    subject = _subject(kind, cluster, stack, args, poster, log_dir, peer_directory)
    subject.plane = {name: pid for name, pid in cluster.component_pids().items() if name in PLANE}
    return subject


# The control plane's processes whose CPU a measurement reports (kwokctl's binaries; etcd is its own).
PLANE = ("kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kwok-controller")


def _subject(kind: str, cluster, stack: contextlib.ExitStack, args, poster: Poster, log_dir: Path,
             peer_directory: Path | None) -> Subject:
    namespace = new_namespace(cluster, f"anchors-{kind}")
    nnodes = args.nnodes
    watch = PodWatch(cluster, namespace)
    watch.api_client.user_agent = operator_floor.BENCH_USER_AGENT
    watch.start()
    stack.callback(watch.stop)
    sftjob_path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"

    def sftjob_body(name: str) -> dict:
        return sftjob(name, namespace, nnodes=nnodes, nproc_per_node=1)

    if kind == "floor-cr":
        floor = operator_floor.Floor(cluster, args.floor_workers)
        stack.callback(floor.close)
        return Subject(kind, namespace, watch,
                       submit=lambda names: _floor_behind_sftjobs(poster, floor, sftjob_path, sftjob_body, names),
                       pod_names=lambda name: operator_floor.pod_names(name, nnodes),
                       is_own_request=audit_log.by_user_agent(operator_floor.FLOOR_USER_AGENT))
    if kind.startswith("floor"):
        floor = operator_floor.Floor(cluster, 1 if kind == "floor-1" else args.floor_workers)
        stack.callback(floor.close)
        return Subject(kind, namespace, watch,
                       submit=lambda names: floor.create([operator_floor.gang_objects(n, namespace, nnodes) for n in names]),
                       pod_names=lambda name: operator_floor.pod_names(name, nnodes),
                       is_own_request=audit_log.by_user_agent(operator_floor.FLOOR_USER_AGENT))
    if kind == "peer":
        peer = stack.enter_context(operator_peer.running_peer(cluster, namespace, log_dir, peer_directory))
        template_pod = operator_floor.gang_objects("template", namespace, nnodes)[-1]
        path = f"/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"
        return Subject(kind, namespace, watch,
                       submit=lambda names: poster.post_all(
                           path, [operator_peer.pytorchjob(n, namespace, nnodes, template_pod) for n in names]),
                       pod_names=lambda name: operator_peer.pod_names(name, nnodes),
                       is_own_request=audit_log.by_user_agent(operator_peer.PEER_USER_AGENT), pid=peer.pid)
    operator = stack.enter_context(running_operator(cluster, namespace, log_dir, env={**OPERATOR_ENV, **VARIANTS.get(kind, {})}))
    return Subject(kind, namespace, watch,
                   submit=lambda names: poster.post_all(sftjob_path, [sftjob_body(n) for n in names]),
                   pod_names=lambda name: operator_floor.pod_names(name, nnodes),
                   is_own_request=lambda r: r.user_agent.startswith(OPERATOR_AGENTS) and r.namespace in (namespace, ""),
                   pid=operator.pid)


def _floor_behind_sftjobs(poster: Poster, floor: operator_floor.Floor, path: str, body: Callable[[str], dict],
                          names: list[str]) -> None:
    """floor-cr: each job's SFTJob POSTed as for the operator (no operator runs in this namespace), then, once that
    POST returns, its objects by the floor's workers. The bound for any operator driven by a custom resource: the
    floor plus the resource's own create, nothing for watching, deciding or reporting."""
    created: list = []
    lock = threading.Lock()

    def one(name: str) -> None:
        job = body(name)
        poster.post(path, job)
        futures = [floor.submit(obj) for obj in operator_floor.gang_objects(name, job["metadata"]["namespace"],
                                                                              job["spec"]["nnodes"])]
        with lock:
            created.extend(futures)

    for future in [poster.pool.submit(one, name) for name in names]:
        future.result()
    for future in list(created):
        future.result()


class RssSampler:
    """Peak VmRSS of a process while it runs (VmHWM would be its lifetime peak, the burst before included)."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mib(self.pid)[0])
            if self._stop.wait(0.2):
                return


def of_jobs(request: audit_log.Request, names: list[str]) -> bool:
    """Whether a request is part of starting these jobs: it names one of them or an object named after one (its
    pods, Service, ConfigMap, events, status). Requests without a name (creates the audit log names nothing for,
    LISTs) count against the subject; requests for other objects (an earlier job's progress log) and
    non-resource requests (API discovery) are the subject's background, reported apart."""
    if request.resource.startswith("/"):
        return False
    if not request.name:
        return True
    return any(request.name == name or request.name.startswith((f"{name}-", f"{name}.")) for name in names)


def measure(subject: Subject, names: list[str], tail: audit_log.Tail | None, *, settle: float, timeout: float
            ) -> Measurement:
    """Starts `names` at once; waits for all their pods, then for the subject's requests to stop for `settle` s."""
    if tail:
        tail.read()  # what came before is not this measurement's
    cpu_before = cpu_seconds(subject.pid) if subject.pid else None
    timeline: list[tuple[float, str]] = []
    with RssSampler(subject.pid) as rss:
        plane_before = cpu_snapshot(subject)
        started, wall_started = time.monotonic(), time.time()
        subject.submit(names)
        done = {name: operator_floor.wait_created(subject.watch, subject.pod_names(name), timeout) for name in names}
        plane_after = cpu_snapshot(subject)
        requests: list[audit_log.Request] = []
        if tail:
            quiet_since, deadline = time.monotonic(), time.monotonic() + max(60.0, settle * 10)
            while time.monotonic() - quiet_since < settle and time.monotonic() < deadline:
                time.sleep(0.2)
                keyed = [(r, _timeline_key(subject, r)) for r in tail.read() if r.verb != "watch"]
                timeline += [(r.received - wall_started, key) for r, key in keyed]
                new = [r for r, key in keyed if key.startswith(OWN)]
                if new:
                    requests += new
                    quiet_since = time.monotonic()
        else:
            time.sleep(settle)
    return Measurement(
        job_created_s=[done[name] - started for name in names],
        last_created_s=max(done.values()) - started,
        requests=audit_log.count([r for r in requests if of_jobs(r, names)]),
        background=audit_log.count([r for r in requests if not of_jobs(r, names)]),
        cpu_s=cpu_seconds(subject.pid) - cpu_before if subject.pid else None,
        rss_peak_mib=rss.peak or None,
        pods_seen=len(subject.watch.created),
        timeline=timeline,
        cpu_to_last={name: round(plane_after[name] - plane_before[name], 2) for name in plane_after if name in plane_before},
    )


OWN = "own "  # the timeline key of the subject's own requests (what measure() counts)


def _timeline_key(subject: Subject, request: audit_log.Request) -> str:
    if subject.is_own_request(request):
        return f"{OWN}{request.verb} {request.resource}"
    if request.user_agent.startswith(operator_floor.BENCH_USER_AGENT):
        return f"bench {request.verb} {request.resource}"
    # the control plane's own clients (scheduler, kwok, controller-manager) by program: what else loads the server
    return f"other {request.user_agent.split('/', 1)[0]} {request.verb}"


def print_timeline(kind: str, m: Measurement, step: float = 0.5, others: int = 4) -> None:
    """Requests per `step` seconds from the burst's start, by who made them: where the subject's time went. Of the
    control plane's own requests, the `others` most frequent kinds."""
    counts = collections.Counter(key for _, key in m.timeline)
    busiest = [key for key, _ in counts.most_common() if key.startswith("other")][:others]
    keys = sorted(key for key in counts if not key.startswith("other")) + busiest
    if not keys:
        return
    bins = int(max(at for at, _ in m.timeline) // step) + 1
    table = {key: [0] * bins for key in keys}
    for at, key in m.timeline:
        if key in table and at >= 0:
            table[key][int(at // step)] += 1
    print(f"  timeline of {kind} (requests per {step} s; its last pods at {m.last_created_s:.2f} s):")
    print("    " + " ".join(f"{i * step:>5.1f}" for i in range(bins)) + "   request")
    for key in keys:
        print("    " + " ".join(f"{n:>5}" for n in table[key]) + f"   {key}")


def print_cpu(order: list[str], runs: dict[str, list[Measurement]], medians: dict[str, Measurement]) -> None:
    """Every repeat's CPU seconds until its last pods: the subject's, the bench's, the control plane's processes."""
    print("  CPU s until the last pods, every repeat (subject; bench process; control plane; their sum):")
    for kind in order:
        for index, m in enumerate(runs[kind]):
            shown = ", ".join(f"{name.removeprefix('kube-').removesuffix('-controller')} {m.cpu_to_last[name]:.1f}"
                              for name in ("subject", "bench", *PLANE) if name in m.cpu_to_last)
            mark = "*" if m is medians[kind] else " "
            print(f"    {kind:9} {index + 1}{mark} {m.last_created_s:6.2f} s   {shown}; sum {sum(m.cpu_to_last.values()):.1f}")


def delete_namespace(cluster, namespace: str, timeout: float = 600) -> None:
    """Deletes a subject's namespace and waits until it is gone: the next subject does not share the machine with
    the garbage collector's work."""
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
    deadline = time.monotonic() + timeout
    while cluster.kubectl("get", "namespace", namespace, check=False).returncode == 0:
        if time.monotonic() > deadline:
            print(f"  (namespace {namespace} still terminating after {timeout:.0f} s; going on)")
            return
        time.sleep(1)


def rotated(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def per_job(counter: collections.Counter, jobs: int) -> dict[str, float]:
    return {key: round(value / jobs, 2) for key, value in sorted(counter.items())}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:5.2f}x" if a is not None and b else "    -"


def run_single(cluster, args, subjects_wanted, poster, log_dir, peer_directory, tail, figures) -> None:
    with contextlib.ExitStack() as stack:
        subjects = [start_subject(kind, cluster, stack, args, poster, log_dir, peer_directory)
                    for kind in subjects_wanted]
        times = collections.defaultdict(list)
        requests = collections.defaultdict(collections.Counter)
        background = collections.defaultdict(collections.Counter)
        for run in range(args.single_runs + 1):  # run 0 warms up (connections, caches, first reconcile)
            for subject in rotated(subjects, run):
                m = measure(subject, [f"s{run}"], tail, settle=args.settle, timeout=120)
                if run:
                    times[subject.kind] += m.job_created_s
                    requests[subject.kind] += m.requests
                    background[subject.kind] += m.background
        namespaces = [s.namespace for s in subjects]
    for namespace in namespaces:
        delete_namespace(cluster, namespace)
    print(f"\n1 job x {args.nnodes} nodes, alone, {args.single_runs} runs: start -> all pods created")
    print(f"  {'':10} {'p50 ms':>8} {'p99 ms':>8}   {'/floor p50':>10} {'/floor p99':>10}   {'/peer p50':>9} {'/peer p99':>9}")
    single = figures["single"] = {}
    for kind in subjects_wanted:
        ms = [t * 1000 for t in times[kind]]
        single[kind] = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                        "requests_per_job": per_job(requests[kind], args.single_runs),
                        "requests_per_job_total": round(sum(requests[kind].values()) / args.single_runs, 2),
                        "background_per_run": per_job(background[kind], args.single_runs)}
    for kind in subjects_wanted:
        row, floor, peer = single[kind], single.get("floor", {}), single.get("peer", {})
        print(f"  {kind:10} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f}   "
              f"{ratio(row['p50_ms'], floor.get('p50_ms')):>10} {ratio(row['p99_ms'], floor.get('p99_ms')):>10}   "
              f"{ratio(row['p50_ms'], peer.get('p50_ms')):>9} {ratio(row['p99_ms'], peer.get('p99_ms')):>9}")
    if "floor-cr" in single and "operator" in single:
        row, bound = single["operator"], single["floor-cr"]
        print(f"  operator / floor-cr (the floor behind its SFTJob's POST): p50 {ratio(row['p50_ms'], bound['p50_ms']).strip()}, "
              f"p99 {ratio(row['p99_ms'], bound['p99_ms']).strip()}")


def run_burst(cluster, args, jobs: int, order: list[str], poster, log_dir, peer_directory, tail, figures) -> None:
    runs: dict[str, list[Measurement]] = collections.defaultdict(list)
    for repeat in range(args.burst_repeats):  # each repeat in another order: a load change moves every subject
        for kind in rotated(order, repeat):
            with contextlib.ExitStack() as stack:
                subject = start_subject(kind, cluster, stack, args, poster, log_dir, peer_directory)
                runs[kind].append(measure(subject, [f"b{jobs}-{i}" for i in range(jobs)], tail, settle=args.settle * 3,
                                          timeout=max(600, jobs * 2)))
            delete_namespace(cluster, subject.namespace)
    # The repeat with the median time stands for the subject (its CPU, requests and RSS with it).
    results = {kind: sorted(runs[kind], key=lambda m: m.last_created_s)[(len(runs[kind]) - 1) // 2] for kind in order}
    repeated = f", {args.burst_repeats} repeats, median" if args.burst_repeats > 1 else ""
    print(f"\n{jobs} jobs x {args.nnodes} nodes at once (order: {', '.join(order)}{repeated}): start -> the last job's pods created")
    print(f"  {'':10} {'last s':>8} {'job p50 s':>9}   {'/floor':>7} {'/peer':>7}   {'CPU s':>6} {'/peer':>7}   "
          f"{'RSS MiB':>7}   {'req/job':>7}   pods")
    burst = figures[f"burst_{jobs}"] = {}
    for kind in order:
        m = results[kind]
        burst[kind] = {"last_created_s": m.last_created_s, "job_created_p50_s": percentile(m.job_created_s, 50),
                       "cpu_s": m.cpu_s, "rss_peak_mib": m.rss_peak_mib, "pods_seen": m.pods_seen,
                       "pods_expected": jobs * args.nnodes, "requests_per_job": per_job(m.requests, jobs),
                       "requests_per_job_total": round(sum(m.requests.values()) / jobs, 2),
                       "background_per_run": dict(sorted(m.background.items())),
                       "last_created_s_per_repeat": [r.last_created_s for r in runs[kind]],
                       "cpu_to_last_per_repeat": [r.cpu_to_last for r in runs[kind]]}
    for kind in [k for k in subject_order() if k in burst]:
        row, floor, peer = burst[kind], burst.get("floor", {}), burst.get("peer", {})
        cpu = f"{row['cpu_s']:6.1f}" if row["cpu_s"] is not None else "     -"
        rss = f"{row['rss_peak_mib']:7.0f}" if row["rss_peak_mib"] else "      -"
        print(f"  {kind:10} {row['last_created_s']:8.2f} {row['job_created_p50_s']:9.2f}   "
              f"{ratio(row['last_created_s'], floor.get('last_created_s')):>7} "
              f"{ratio(row['last_created_s'], peer.get('last_created_s')):>7}   {cpu} "
              f"{ratio(row['cpu_s'], peer.get('cpu_s')):>7}   {rss}   {row['requests_per_job_total']:7.1f}   "
              f"{row['pods_seen']}/{row['pods_expected']}")
    if args.burst_repeats > 1 and "floor" in runs:
        for kind in [k for k in subject_order() if k in runs and k != "floor"]:
            ratios = [m.last_created_s / f.last_created_s for m, f in zip(runs[kind], runs["floor"])]
            print(f"  {kind} / floor, repeat by repeat: {', '.join(f'{r:.2f}x' for r in ratios)}")
    print_cpu(order, runs, results)
    if args.timeline:
        for kind in order:
            for index, m in enumerate(runs[kind]):
                print_timeline(f"{kind}, repeat {index + 1}" + (" (the median)" if m is results[kind] else ""), m)
    for variant in [k for k in VARIANTS if k in runs and "operator" in runs]:
        pairs = list(zip(runs[variant], runs["operator"]))
        times = sorted(v.last_created_s / o.last_created_s for v, o in pairs)
        cpus = sorted(v.cpu_s / o.cpu_s for v, o in pairs if v.cpu_s and o.cpu_s)
        print(f"  {variant} / operator, repeat by repeat: time {', '.join(f'{r:.2f}x' for r in times)} (sorted; "
              f"median {times[(len(times) - 1) // 2]:.2f}x); CPU {', '.join(f'{r:.2f}x' for r in cpus)}")
    if "floor-cr" in burst and "operator" in burst:
        ratios = [m.last_created_s / f.last_created_s for m, f in zip(runs["operator"], runs["floor-cr"])]
        print(f"  operator / floor-cr: {ratio(burst['operator']['last_created_s'], burst['floor-cr']['last_created_s']).strip()}"
              f" (median repeats; repeat by repeat: {', '.join(f'{r:.2f}x' for r in ratios)})")


def print_requests(figures: dict) -> None:
    print("\nAPI requests per job start, by verb and resource (audit log; watches left out)")
    for phase, rows in figures.items():
        if not isinstance(rows, dict):
            continue
        for kind in [k for k in subject_order() if k in rows]:
            row = rows[kind]
            if isinstance(row, dict) and "requests_per_job" in row:
                detail = ", ".join(f"{k} {v:g}" for k, v in row["requests_per_job"].items())
                print(f"  {phase:10} {kind:10} {row['requests_per_job_total']:5.1f}  ({detail})")
                if row.get("background_per_run"):
                    other = ", ".join(f"{k} {v:g}" for k, v in row["background_per_run"].items())
                    print(f"  {'':10} {'':10}        not of the measured jobs, per run: {other}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single-runs", type=int, default=20)
    parser.add_argument("--bursts", default="100,200", help="comma-separated job counts created at once")
    parser.add_argument("--nnodes", type=int, default=4)
    parser.add_argument("--floor-workers", type=int, default=16)
    parser.add_argument("--burst-repeats", type=int, default=1,
                        help="each burst this many times per subject, interleaved; the median stands (bursts vary ~10%%)")
    parser.add_argument("--subjects", default=",".join(SUBJECTS), help=f"a subset of {','.join(SUBJECTS)}")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME:KEY=VALUE,...",
                        help="one more operator subject, operator-NAME, with these environment variables (repeatable)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds without a request of the subject that end a single job's count (bursts: x3)")
    parser.add_argument("--scale", action="store_true", help="1,000 jobs x 8 nodes (64 fake nodes), no single runs")
    parser.add_argument("--timeline", action="store_true",
                        help="print each burst's requests per 0.5 s, by who made them (every repeat)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    pool_nodes = 16
    if args.scale:
        args.bursts, args.nnodes, args.single_runs, pool_nodes = "1000", 8, 0, 64
    VARIANTS.update(args.variant)
    subjects = [s for s in SUBJECTS if s in args.subjects.split(",")] + list(VARIANTS)
    bursts = [int(b) for b in args.bursts.split(",") if b]
    peer_directory = operator_peer.peer_dir(build=True) if "peer" in subjects else None
    log_dir = Path(tempfile.mkdtemp(prefix="operator-anchors-"))
    figures: dict = {"nnodes": args.nnodes, "single_runs": args.single_runs, "floor_workers": args.floor_workers}
    # 128 GPUs per fake node: every pod of every burst fits, so the scheduler binds them all and nothing retries.
    with bench_cluster(f"th-anchors-{os.getpid()}", pool_nodes=pool_nodes, gpus_per_node=128, audit=True) as cluster:
        if peer_directory:
            operator_peer.install(cluster, peer_directory)
        tail = audit_log.Tail(cluster.audit_log) if cluster.audit_log else None
        if tail is None:
            print("(this cluster writes no audit log: API requests are not counted)")
        poster = Poster(cluster)
        print(f"anchors: {', '.join(subjects)}; {args.nnodes} nodes per job; floor: {args.floor_workers} concurrent "
              f"POSTs (floor-1: one at a time); peer: {peer_directory.name if peer_directory else '-'}")
        if args.single_runs > 0:
            run_single(cluster, args, subjects, poster, log_dir, peer_directory, tail, figures)
        for index, jobs in enumerate(bursts):
            run_burst(cluster, args, jobs, rotated(subjects, index), poster, log_dir, peer_directory, tail, figures)
        if tail:
            print_requests(figures)
            tail.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"\nlogs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
