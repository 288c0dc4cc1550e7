"""A real Kubernetes control plane for tests: kwokctl (binary runtime) plus fake GPU nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are real binaries (built by
``hack/control-plane.sh build``); only the kubelets are simulated, by kwok. So admission, RBAC,
garbage collection, namespace deletion and scheduling by ``nvidia.com/gpu`` limits really happen;
containers never run: a test decides how each pod ends (:meth:`KwokCluster.set_pod_terminated`)
and what its log says (:meth:`KwokCluster.set_pod_log`).

pytest fixtures (``tests/conftest.py``), the stable interface for tests:

``cluster`` (session)
    a :class:`KwokCluster`, started once per session with 4 nodes x 8 ``nvidia.com/gpu``
    (:data:`DEFAULT_GPU_PRODUCT`), deleted at the end. With ``TRAINING_HUB_KUBECONFIG`` set, that
    cluster is used instead and left running. Attributes and methods:

    - ``.kubeconfig``: path of an admin (system:masters) kubeconfig; never ``~/.kube/config``
    - ``.kubectl(*args, input=None, check=True, timeout=120) -> CompletedProcess[str]``
    - ``.api_client() -> kubernetes.client.ApiClient`` (a new one per call)
    - ``.create_gpu_nodes(count=4, gpus_per_node=8, prefix="gpu-node", product=..., labels=None)``
    - ``.set_pod_running(namespace, name)``
    - ``.set_pod_terminated(namespace, name, exit_code, reason="Error", message="")``:
      phase Succeeded when every exit code is 0, else Failed; ``exit_code`` is an int for every
      container or a ``{container: code}`` dict
    - ``.set_pod_log(namespace, name, text, container=None)``: what the API server (``kubectl
      logs``, ``read_namespaced_pod_log``) returns for the pod's containers from then on
    - ``.delete_pod_node(namespace, name)``: deletes the Node a pod is bound to
    - ``.wait_for_pod(namespace, name, predicate, timeout=60)`` -> the pod as a dict
    - ``.create_namespace(name, labels=None)``, ``.kubectl_json(*args)``, ``.env`` (PATH + KUBECONFIG),
      ``.pids()``, ``.wait_for_controllers()``
``namespace`` (function)
    a fresh namespace name (its ``default`` ServiceAccount exists), deleted after the test.

Tests using them carry ``@pytest.mark.cluster``; without binaries they are skipped, or fail when
``TRAINING_HUB_REQUIRE_CLUSTER=1`` (CI).

Also a command line (``hack/control-plane.sh up|down|nodes|kubeconfig|status`` calls it) and
the functions :func:`start_cluster`, :func:`stop_cluster`, :func:`find_bin_dir`.
Only the standard library is imported at module level: the CLI runs without the project's venv.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

if not __package__:  # run as a script (hack/control-plane.sh)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import audit_log, real_nodes  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE_SCRIPT = REPO_ROOT / "hack" / "control-plane.sh"
REQUIRED_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwokctl",
    "helm",
)
DEFAULT_CLUSTER_NAME = "training-hub"
DEFAULT_NODE_COUNT = 4
DEFAULT_GPUS_PER_NODE = 8
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_RESOURCE = "nvidia.com/gpu"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# kwok serves container logs from files named by these (namespaced) objects.
KWOK_LOGS_API_VERSION = "kwok.x-k8s.io/v1alpha1"


class ControlPlaneUnavailable(RuntimeError):
    """The binaries are missing, or the cluster could not be started."""


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[3:])} failed (exit {self.returncode}): {(self.stderr or '').strip()}"


def cache_root() -> Path:
    explicit = os.environ.get("TRAINING_HUB_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "training-hub"


def kwok_workdir() -> Path:
    return Path(os.environ.get("KWOK_WORKDIR") or cache_root() / "kwok")


def _has_all_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in REQUIRED_BINARIES)


def find_bin_dir() -> Path | None:
    """The directory with every binary, without building anything; None when there is none.

    ``TRAINING_HUB_K8S_BIN`` wins; else the version-keyed cache that ``hack/control-plane.sh
    build`` fills (the script is the one place the versions are written down).
    """
    explicit = os.environ.get("TRAINING_HUB_K8S_BIN")
    if explicit:
        directory = Path(explicit)
        if not _has_all_binaries(directory):
            missing = [n for n in REQUIRED_BINARIES if not os.access(directory / n, os.X_OK)]
            raise ControlPlaneUnavailable(f"TRAINING_HUB_K8S_BIN={explicit} lacks {', '.join(missing)}")
        return directory
    result = subprocess.run(
        ["bash", str(CONTROL_PLANE_SCRIPT), "bin-dir"], capture_output=True, text=True, timeout=30
    )
    if result.returncode == 0 and result.stdout.strip():
        directory = Path(result.stdout.strip())
        if _has_all_binaries(directory):
            return directory
    return None


def _env_with_bin_dir(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["KWOK_WORKDIR"] = str(kwok_workdir())
    env.setdefault("KUBECACHEDIR", str(cache_root() / "kube-cache"))  # kubectl's discovery cache, not ~/.kube
    return env


def _cri_log_lines(text: str, stream: str = "stdout") -> str:
    """kwok reads container logs in the CRI file format: `<RFC3339Nano> <stream> F <line>`."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # a trailing newline ends the last line rather than starting an empty one
    return "".join(f"{stamp} {stream} F {line}\n" for line in lines)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class KwokCluster:
    """A running cluster; see the module docstring for the interface."""

    kubeconfig: str
    bin_dir: Path
    name: str | None = None  # None: a cluster this process did not start (TRAINING_HUB_KUBECONFIG)
    workdir: Path | None = None
    _logs_dir: Path | None = field(default=None, repr=False)
    _launches: dict = field(default_factory=dict, repr=False)  # component -> (argv, cwd, env), by stop_apiserver
    real_nodes: "real_nodes.RealNodes | None" = None  # set by add_real_nodes

    @property
    def audit_log(self) -> Path | None:
        """The API server's audit log (a cluster started with `audit=True`); None when it writes none."""
        path = self.workdir / "logs" / "audit.log" if self.workdir else None
        return path if path and path.exists() else None

    def add_real_nodes(self, count: int = 2, gpus_per_node: int = DEFAULT_GPUS_PER_NODE, archives=()) -> list[str]:
        """Starts `count` real kubelet nodes (tests/support/real_nodes.py) beside the fake ones; returns their names."""
        if self.workdir is None:
            raise ControlPlaneUnavailable("real nodes need a cluster started here (its workdir holds the CA)")
        self.real_nodes = real_nodes.start_real_nodes(
            self.workdir, self.kubeconfig, str(self.bin_dir / "kubectl"), count, gpus_per_node, archives=archives
        )
        return self.real_nodes.names()

    # --- plumbing -----------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment with the binaries first on PATH and KUBECONFIG set to this cluster."""
        env = _env_with_bin_dir(self.bin_dir)
        env["KUBECONFIG"] = self.kubeconfig
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def pids(self) -> set[int]:
        """Processes of this cluster (every component's command line names the cluster's workdir)."""
        return _pids_mentioning(self.workdir) if self.workdir else set()

    def wait_for_controllers(self, timeout: float = 240) -> None:
        """Waits until kube-scheduler and kube-controller-manager hold their leader leases (they act only then)."""
        deadline = time.monotonic() + timeout
        wanted = {"kube-scheduler", "kube-controller-manager"}
        while True:
            result = self.kubectl("get", "leases", "-n", "kube-system", "-o", "name", check=False)
            held = {line.rsplit("/", 1)[-1] for line in result.stdout.split()}
            if wanted <= held:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneUnavailable(f"no leader lease for {sorted(wanted - held)} after {timeout}s")
            time.sleep(0.5)

    # --- API-server outages ----------------------------------------------------------------------
    def component_pids(self) -> dict[str, int]:
        """Running components by binary name (kube-apiserver, kube-scheduler, ...)."""
        found = {}
        for pid in self.pids():
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
            except OSError:
                continue
            if _alive(pid):
                found[Path(argv0).name] = pid
        return found

    def apiserver_pid(self) -> int | None:
        return self.component_pids().get("kube-apiserver")

    def stop_apiserver(self, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
        """Stops this cluster's kube-apiserver only (etcd, controllers and kwok keep running), remembering how every
        component was started, so that `start_apiserver` brings the API server back and, like the kubelet of a real
        control-plane node, restarts the scheduler or controller-manager that exit when they lose their leader
        lease during the outage. SIGKILL is the crash; SIGTERM a graceful restart."""
        pids = self.component_pids()
        if "kube-apiserver" not in pids:
            raise ControlPlaneUnavailable(f"cluster {self.name}: no kube-apiserver running")
        launches = {}
        for name, pid in pids.items():
            proc = Path(f"/proc/{pid}")
            try:
                launches[name] = (
                    [arg.decode() for arg in (proc / "cmdline").read_bytes().split(b"\0") if arg],
                    os.readlink(proc / "cwd"),
                    dict(line.decode().split("=", 1) for line in (proc / "environ").read_bytes().split(b"\0") if b"=" in line),
                )
            except OSError:
                continue
        self._launches = launches
        os.kill(pids["kube-apiserver"], sig)
        if _wait_until_gone({pids["kube-apiserver"]}, timeout):
            raise ControlPlaneUnavailable(f"cluster {self.name}: kube-apiserver still running after {timeout}s")

    def _launch(self, name: str) -> subprocess.Popen:
        argv, cwd, env = self._launches[name]
        log_name = "kwok-controller" if name == "kwok" else name
        with open(Path(self.workdir or cwd) / "logs" / f"{log_name}.log", "ab") as log:
            return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_apiserver(self, wait_ready: float = 120, watch_components: float = 20) -> None:
        """Starts the kube-apiserver stopped by `stop_apiserver` again (same flags; log appended) and returns once
        /readyz answers; for `watch_components` seconds more, a background thread restarts any other component
        that exits (lost leader lease). `stop_cluster` finds the new processes like every other component."""
        if not self._launches:
            raise ControlPlaneUnavailable(f"cluster {self.name}: start_apiserver without stop_apiserver")
        process = self._launch("kube-apiserver")
        deadline = time.monotonic() + wait_ready
        while self.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ControlPlaneUnavailable(f"cluster {self.name}: kube-apiserver not ready again (see its log)")
            time.sleep(0.2)
        self.revive_components()
        if watch_components > 0:
            import threading

            def watch() -> None:
                until = time.monotonic() + watch_components
                while time.monotonic() < until:
                    time.sleep(0.5)
                    self.revive_components()

            threading.Thread(target=watch, daemon=True, name="revive-components").start()

    # Components that exit when they cannot renew their leader lease (or lose the API server for good).
    REVIVED = ("kube-scheduler", "kube-controller-manager", "kwok-controller")

    def revive_components(self) -> list[str]:
        """Restarts the components (seen by the last `stop_apiserver`) that exited; returns their names. Nothing
        while the API server is down or the cluster is being deleted."""
        if self.workdir is None or not (self.workdir / "kwok.yaml").exists() or self.apiserver_pid() is None:
            return []
        running = self.component_pids()
        revived = [name for name in self.REVIVED if name in self._launches and name not in running]
        for name in revived:
            try:
                self._launch(name)
            except OSError:  # the cluster was deleted meanwhile
                return []
        return revived

    # --- nodes --------------------------------------------------------------------------------
    def create_gpu_nodes(
        self,
        count: int = DEFAULT_NODE_COUNT,
        gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
        prefix: str = "gpu-node",
        product: str = DEFAULT_GPU_PRODUCT,
        labels: Mapping[str, str] | None = None,
        cpu: str = "96",
        memory: str = "1Ti",
        pods: str = "110",
        wait_ready: float = 120,
    ) -> list[str]:
        """Creates (or updates) fake nodes `<prefix>-0..count-1` and waits until they are Ready."""
        if count < 0 or gpus_per_node < 0:
            raise ValueError(f"count and gpus_per_node must be >= 0, got {count} and {gpus_per_node}")
        names = [f"{prefix}-{i}" for i in range(count)]
        resources = {
            "cpu": cpu,
            "memory": memory,
            "pods": pods,
            "ephemeral-storage": "1Ti",
            GPU_RESOURCE: str(gpus_per_node),
        }
        nodes = []
        for name in names:
            node_labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(gpus_per_node),
                **(labels or {}),
            }
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": node_labels,
                        "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    },
                    "spec": {},
                    "status": {"capacity": resources, "allocatable": resources},
                }
            )
        if not nodes:
            return []
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        if wait_ready:
            self.kubectl(
                "wait", "--for=condition=Ready", f"--timeout={int(wait_ready)}s", *[f"node/{n}" for n in names],
                timeout=wait_ready + 30,
            )
        return names

    def delete_pod_node(self, namespace: str, name: str) -> str:
        """Deletes the Node that pod `name` is bound to (the pod GC then removes the pod); returns the node name."""
        node = self.kubectl("get", "pod", "-n", namespace, name, "-o", "jsonpath={.spec.nodeName}").stdout.strip()
        if not node:
            raise ValueError(f"pod {namespace}/{name} is not bound to a node")
        self.kubectl("delete", "node", node, "--wait=false")
        return node

    # --- pods ---------------------------------------------------------------------------------
    def _patch_pod_status(self, namespace: str, name: str, status: dict) -> None:
        self.kubectl(
            "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=strategic",
            "-p", json.dumps({"status": status}),
        )

    def _pod(self, namespace: str, name: str) -> dict:
        return self.kubectl_json("get", "pod", "-n", namespace, name)

    def set_pod_running(self, namespace: str, name: str) -> None:
        """Marks every container running and the pod Ready (kwok does this by itself for new pods)."""
        pod = self._pod(namespace, name)
        now = _now()
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": f"kwok://{name}-{c['name']}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod["spec"]["containers"]
        ]
        self._patch_pod_status(
            namespace,
            name,
            {
                "phase": "Running",
                "startTime": pod.get("status", {}).get("startTime", now),
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("Initialized", "Ready", "ContainersReady")
                ],
                "containerStatuses": statuses,
            },
        )

    def set_pod_terminated(
        self,
        namespace: str,
        name: str,
        exit_code: int | Mapping[str, int],
        reason: str = "Error",
        message: str = "",
    ) -> None:
        """Ends the pod as a kubelet would: terminated container states, then phase Succeeded or Failed.

        `reason` (e.g. "OOMKilled", "Error") goes on containers with a non-zero exit code; zero exit codes get
        reason "Completed". `message` is the termination message of the containers `exit_code` names (every
        container for a plain int), whatever their exit code: a kubelet keeps what a container wrote to its
        termination-message path on exit 0 too (the entrypoint's success summary); containers left to the
        default exit code 0 get none.
        """
        pod = self._pod(namespace, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        if isinstance(exit_code, Mapping):
            unknown = set(exit_code) - set(containers)
            if unknown:
                raise ValueError(f"exit_code names containers {sorted(unknown)}; pod {name} has {containers}")
            codes = {c: int(exit_code.get(c, 0)) for c in containers}
            with_message = set(exit_code)
        else:
            codes = {c: int(exit_code) for c in containers}
            with_message = set(containers)
        now = _now()
        started = pod.get("status", {}).get("startTime", now)
        images = {c["name"]: c.get("image", "") for c in pod["spec"]["containers"]}
        statuses = []
        for container, code in codes.items():
            terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else reason,
                "startedAt": started,
                "finishedAt": now,
                "containerID": f"kwok://{name}-{container}",
            }
            if message and container in with_message:
                terminated["message"] = message
            statuses.append(
                {
                    "name": container,
                    "image": images[container],
                    "imageID": "",
                    "containerID": f"kwok://{name}-{container}",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            )
        phase = "Succeeded" if all(code == 0 for code in codes.values()) else "Failed"
        not_ready = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        self._patch_pod_status(
            namespace,
            name,
            {
                "phase": phase,
                "conditions": [
                    {"type": t, "status": "False", "reason": not_ready, "lastTransitionTime": now}
                    for t in ("Ready", "ContainersReady")
                ],
                "containerStatuses": statuses,
            },
        )

    def set_pod_log(self, namespace: str, name: str, text: str, container: str | None = None) -> Path:
        """From now on the pod's log (one container, or all of them) reads `text`; returns the backing file."""
        logs_dir = self._pod_logs_dir() / namespace / name
        logs_dir.mkdir(parents=True, exist_ok=True)
        log_file = logs_dir / f"{container or '_all'}.log"
        tmp = log_file.with_suffix(".tmp")
        tmp.write_text(_cri_log_lines(text))
        tmp.replace(log_file)  # a reader never sees half a file
        existing = self.kubectl(
            "get", "logs.kwok.x-k8s.io", name, "-n", namespace, "-o", "json", "--ignore-not-found"
        ).stdout.strip()
        entries = json.loads(existing)["spec"]["logs"] if existing else []
        containers = [container] if container else []
        entries = [e for e in entries if sorted(e.get("containers") or []) != containers]
        entry = {"logsFile": str(log_file), "follow": False}
        if container:
            entry["containers"] = [container]
        # Specific containers first: kwok takes the first entry that matches.
        entries = sorted([*entries, entry], key=lambda e: 0 if e.get("containers") else 1)
        logs = {
            "apiVersion": KWOK_LOGS_API_VERSION,
            "kind": "Logs",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"logs": entries},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(logs))
        return log_file

    def _pod_logs_dir(self) -> Path:
        if self._logs_dir is None:
            self._logs_dir = (
                self.workdir / "pod-logs" if self.workdir else Path(tempfile.mkdtemp(prefix="training-hub-pod-logs-"))
            )
        return self._logs_dir

    def wait_for_pod(
        self, namespace: str, name: str, predicate: Callable[[dict], bool], timeout: float = 60, interval: float = 0.5
    ) -> dict:
        """Polls the pod (as JSON) until `predicate` holds; returns it, or raises TimeoutError with its last state."""
        deadline = time.monotonic() + timeout
        last: dict | None = None
        while True:
            result = self.kubectl("get", "pod", "-n", namespace, name, "-o", "json", check=False)
            if result.returncode == 0:
                last = json.loads(result.stdout)
                if predicate(last):
                    return last
            if time.monotonic() > deadline:
                status = json.dumps((last or {}).get("status"), indent=1)
                raise TimeoutError(f"pod {namespace}/{name}: condition not met in {timeout}s; status: {status}")
            time.sleep(interval)

    # --- namespaces ---------------------------------------------------------------------------
    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None, timeout: float = 60) -> str:
        """Creates a namespace and waits for its `default` ServiceAccount (pods are refused before it exists)."""
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
        self.kubectl("create", "-f", "-", input=json.dumps(manifest))
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"namespace {name}: no default ServiceAccount after {timeout}s")
            time.sleep(0.3)
        return name


# --- starting and stopping ---------------------------------------------------------------------
def cluster_dir(name: str) -> Path:
    return kwok_workdir() / "clusters" / name


def _pids_mentioning(path: Path) -> set[int]:
    """Pids whose command line mentions `path` (the cluster's own folder, so nothing else matches)."""
    needle = (str(path).rstrip("/") + "/").encode()  # the trailing slash keeps cluster "a" from matching "a2"
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and int(entry.name) != os.getpid():
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _prune_oldest(directory: Path, keep: int) -> None:
    entries = sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
    for old in entries[: max(0, len(entries) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _wait_until_gone(pids: set[int], timeout: float) -> set[int]:
    """Waits up to `timeout` for `pids` to exit; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if _alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {p for p in alive if _alive(p)}
    return alive


def _config_yaml(bin_dir: Path, workdir: Path, audit_policy: Path | None = None) -> str:
    # JSON is YAML; kwokctl reads a multi-document file, here one KwokctlConfiguration.
    options = {
        "runtime": "binary",
        "bindAddress": "127.0.0.1",
        "kubeApiserverBinary": str(bin_dir / "kube-apiserver"),
        "kubeControllerManagerBinary": str(bin_dir / "kube-controller-manager"),
        "kubeSchedulerBinary": str(bin_dir / "kube-scheduler"),
        "kubectlBinary": str(bin_dir / "kubectl"),
        "kwokControllerBinary": str(bin_dir / "kwok"),
        "etcdBinary": str(bin_dir / "etcd"),
        # Logs objects are read from the API at run time, so a test can feed a pod's log.
        "enableCRDs": ["Logs", "ClusterLogs"],
        "disableQPSLimits": True,
    }
    if audit_policy is not None:  # kwokctl then runs the API server with --audit-log-path=<workdir>/logs/audit.log
        options["kubeAuditPolicy"] = str(audit_policy)
    pki = workdir / "pki"
    patches = [
        # kwok plays only the fake nodes, so real kubelets can join the same cluster (tests/support/real_nodes.py).
        {
            "name": "kwok-controller",
            "extraArgs": [
                {"key": "manage-all-nodes", "value": "false", "override": True},
                {"key": "manage-nodes-with-annotation-selector", "value": f"{FAKE_NODE_ANNOTATION}=fake"},
            ],
        },
        # The API server shows real kubelets a client certificate (logs, exec), so they need no anonymous access.
        {
            "name": "kube-apiserver",
            "extraArgs": [
                {"key": "kubelet-client-certificate", "value": str(pki / "admin.crt")},
                {"key": "kubelet-client-key", "value": str(pki / "admin.key")},
            ],
        },
    ]
    return json.dumps(
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": options,
            "componentsPatches": patches,
        }
    )


def start_cluster(
    name: str = DEFAULT_CLUSTER_NAME,
    bin_dir: Path | None = None,
    nodes: int = DEFAULT_NODE_COUNT,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    timeout: float = 300,
    failed_logs_dir: Path | None = None,
    audit: bool = False,
) -> KwokCluster:
    """Starts cluster `name` (or returns it if it already answers) with `nodes` fake GPU nodes.

    `audit`: the API server writes an audit log (`cluster.audit_log`; tests/support/audit_log.py counts requests in
    it). Off by default: it costs every request a log line.

    If kwokctl fails, the components' logs are copied to `failed_logs_dir` (default
    `<KWOK_WORKDIR>/failed-logs/<name>-<time>`, the newest 20 kept) before everything is stopped.
    """
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", name):
        raise ValueError(f"cluster name {name!r}: use lowercase letters, digits and '-', at most 32 characters")
    bin_dir = bin_dir or find_bin_dir()
    if bin_dir is None:
        raise ControlPlaneUnavailable("no control-plane binaries; run `hack/control-plane.sh build` or set TRAINING_HUB_K8S_BIN")
    workdir = cluster_dir(name)
    cluster = KwokCluster(kubeconfig=str(workdir / "kubeconfig.yaml"), bin_dir=bin_dir, name=name, workdir=workdir)
    if workdir.exists() and cluster.pids() and cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0:
        cluster.create_gpu_nodes(nodes, gpus_per_node)
        return cluster
    if workdir.exists():  # left over from a crashed run: clear it, processes included
        stop_cluster(name, bin_dir)
    config_dir = kwok_workdir() / "configs"
    config_dir.mkdir(parents=True, exist_ok=True)
    config_path = config_dir / f"{name}.yaml"
    audit_policy = None
    if audit:
        audit_policy = config_dir / f"{name}-audit-policy.json"
        audit_policy.write_text(json.dumps(audit_log.POLICY))
    config_path.write_text(_config_yaml(bin_dir, workdir, audit_policy))
    cmd = [
        str(bin_dir / "kwokctl"), "--config", str(config_path), "create", "cluster", "--name", name,
        "--runtime", "binary", "--kubeconfig", "", "--wait", f"{int(timeout)}s", "--timeout", f"{int(timeout)}s",
    ]
    # kwokctl picks ports by counting down from 32767, skipping those of clusters already saved in
    # the workdir: two creates at once would pick the same ones, so they take turns.
    with open(kwok_workdir() / "create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            cmd, capture_output=True, text=True, env=_env_with_bin_dir(bin_dir), timeout=timeout + 60
        )
    def keep_logs_and_stop() -> Path:
        if failed_logs_dir is None:
            _prune_oldest(kwok_workdir() / "failed-logs", keep=19)
            kept = kwok_workdir() / "failed-logs" / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}"
        else:
            kept = failed_logs_dir
        if (workdir / "logs").is_dir():
            shutil.copytree(workdir / "logs", kept, dirs_exist_ok=True)
        stop_cluster(name, bin_dir)  # also after a failed start: leave no process behind
        return kept

    if result.returncode != 0:
        kept_logs = keep_logs_and_stop()
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ControlPlaneUnavailable(
            f"kwokctl create cluster {name} failed (exit {result.returncode}); component logs kept in {kept_logs}:\n{output}"
        )
    try:
        cluster.wait_for_controllers()
        cluster.create_gpu_nodes(nodes, gpus_per_node)
    except BaseException as error:
        if isinstance(error, (subprocess.SubprocessError, TimeoutError, ControlPlaneUnavailable)):
            kept_logs = keep_logs_and_stop()
            raise ControlPlaneUnavailable(
                f"cluster {name} started but did not become usable: {error}; component logs kept in {kept_logs}"
            ) from error
        stop_cluster(name, bin_dir)
        raise
    return cluster


def stop_cluster(name: str = DEFAULT_CLUSTER_NAME, bin_dir: Path | None = None, grace: float = 3) -> None:
    """Deletes the cluster and ends every process it started, even if kwokctl's own bookkeeping is broken."""
    workdir = cluster_dir(name)
    bin_dir = bin_dir or find_bin_dir()
    # Real nodes first: their kubelets would otherwise outlive the API server, and their pods' processes, mounts
    # and cgroups are not kwokctl's to clean.
    real_nodes.stop_real_nodes(workdir)
    # Taken before kwokctl signals them: an exiting process loses its command line before it is gone,
    # so a scan made afterwards can miss one that is still running down.
    started = _pids_mentioning(workdir)
    if bin_dir is not None:
        subprocess.run(
            # kwokctl refuses an empty --kubeconfig here; a file of its own keeps ~/.kube/config untouched.
            [str(bin_dir / "kwokctl"), "delete", "cluster", "--name", name,
             "--kubeconfig", str(kwok_workdir() / "unused-kubeconfig.yaml")],
            capture_output=True, text=True, env=_env_with_bin_dir(bin_dir), timeout=120,
        )
    # kwokctl has signalled its processes; give them `grace` to exit, then TERM, then KILL. A killed
    # process can still take a while to go (etcd blocked in fsync on a busy disk): wait for it.
    leftovers = _wait_until_gone(started | _pids_mentioning(workdir), grace)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 60)):
        if not leftovers:
            break
        for pid in leftovers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        leftovers = _wait_until_gone(leftovers, wait)
    if leftovers:
        raise ControlPlaneUnavailable(f"cluster {name}: processes {sorted(leftovers)} survived SIGKILL for 60 s")
    shutil.rmtree(workdir, ignore_errors=True)
    (kwok_workdir() / "configs" / f"{name}.yaml").unlink(missing_ok=True)


def stop_clusters_of_dead_processes(prefix: str) -> list[str]:
    """Stops clusters named `<prefix><pid>` whose process is gone (a test session that was killed)."""
    clusters = kwok_workdir() / "clusters"
    stopped = []
    for path in sorted(clusters.glob(f"{prefix}*")) if clusters.is_dir() else []:
        owner = path.name[len(prefix):]
        if owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
            stop_cluster(path.name)
            stopped.append(path.name)
    return stopped


def attach_cluster(kubeconfig: str, bin_dir: Path) -> KwokCluster:
    """A cluster someone else started (TRAINING_HUB_KUBECONFIG); its lifetime is theirs."""
    if not Path(kubeconfig).is_file():
        raise ControlPlaneUnavailable(f"TRAINING_HUB_KUBECONFIG={kubeconfig} is not a file")
    workdir = Path(kubeconfig).parent
    name = workdir.name if (workdir / "kwok.yaml").exists() else None
    return KwokCluster(kubeconfig=kubeconfig, bin_dir=bin_dir, name=name, workdir=workdir if name else None)


# --- command line ------------------------------------------------------------------------------
def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hack/control-plane.sh", description="kwokctl cluster with fake GPU nodes")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster (prints its kubeconfig path)")
    up.add_argument("name", nargs="?", default=DEFAULT_CLUSTER_NAME)
    up.add_argument("--nodes", type=int, default=DEFAULT_NODE_COUNT)
    up.add_argument("--gpus-per-node", type=int, default=DEFAULT_GPUS_PER_NODE)
    up.add_argument("--audit", action="store_true", help="write an audit log (<workdir>/logs/audit.log)")
    down = sub.add_parser("down", help="delete a cluster and every process it started")
    down.add_argument("name", nargs="?", default=DEFAULT_CLUSTER_NAME)
    nodes = sub.add_parser("nodes", help="add fake GPU nodes")
    nodes.add_argument("name", nargs="?", default=DEFAULT_CLUSTER_NAME)
    nodes.add_argument("count", nargs="?", type=int, default=DEFAULT_NODE_COUNT)
    nodes.add_argument("gpus", nargs="?", type=int, default=DEFAULT_GPUS_PER_NODE)
    nodes.add_argument("--prefix", default="gpu-node")
    real = sub.add_parser("real-nodes", help="add real kubelet nodes (containerd + runc; root)")
    real.add_argument("name", nargs="?", default=DEFAULT_CLUSTER_NAME)
    real.add_argument("count", nargs="?", type=int, default=2)
    real.add_argument("gpus", nargs="?", type=int, default=DEFAULT_GPUS_PER_NODE)
    real.add_argument("--image", action="append", default=[], help="an image archive to import into every node")
    for cmd in ("kubeconfig", "status"):
        p = sub.add_parser(cmd)
        p.add_argument("name", nargs="?", default=DEFAULT_CLUSTER_NAME)
    args = parser.parse_args(argv)

    if args.command == "up":
        started = time.monotonic()
        cluster = start_cluster(args.name, nodes=args.nodes, gpus_per_node=args.gpus_per_node, audit=args.audit)
        print(f"control-plane: cluster {args.name} up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        print(cluster.kubeconfig)
    elif args.command == "down":
        stop_cluster(args.name)
    elif args.command == "kubeconfig":
        path = cluster_dir(args.name) / "kubeconfig.yaml"
        if not path.exists():
            print(f"control-plane: no cluster {args.name} (run `hack/control-plane.sh up {args.name}`)", file=sys.stderr)
            return 1
        print(path)
    else:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise ControlPlaneUnavailable("no binaries; run `hack/control-plane.sh build`")
        cluster = KwokCluster(
            kubeconfig=str(cluster_dir(args.name) / "kubeconfig.yaml"), bin_dir=bin_dir, name=args.name,
            workdir=cluster_dir(args.name),
        )
        if args.command == "real-nodes":
            started = time.monotonic()
            nodes = real_nodes.start_real_nodes(
                cluster.workdir, cluster.kubeconfig, str(bin_dir / "kubectl"), args.count, args.gpus,
                archives=[Path(p) for p in args.image],
            )
            print(f"control-plane: {args.count} real nodes Ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
            print("\n".join(nodes.names()))
        elif args.command == "nodes":
            print("\n".join(cluster.create_gpu_nodes(args.count, args.gpus, prefix=args.prefix)))
        else:
            pids = sorted(cluster.pids())
            print(f"cluster {args.name}: {'running' if pids else 'not running'}; pids {pids}; kubeconfig {cluster.kubeconfig}")
            return 0 if pids else 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except (ControlPlaneUnavailable, real_nodes.RealNodesUnavailable, ValueError, subprocess.CalledProcessError) as error:
        print(f"control-plane: error: {error}", file=sys.stderr)
        sys.exit(1)
