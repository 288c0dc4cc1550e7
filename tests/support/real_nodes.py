"""Real kubelet nodes beside kwok's fake ones, on this one machine, without touching its network.

Each real node is a kubelet (v1.34, built by ``hack/control-plane.sh node-build`` from the same wrapper module
as kube-apiserver) and a containerd + runc (Debian packages) of its own, both started inside one private mount
namespace (``unshare --mount --propagation slave``), so what they mount never reaches the host. The facts and
walls behind each setting are in docs/real-nodes.md; in short:

- host network only: containerd's CNI config is loopback-only, so only ``hostNetwork: true`` pods run; no bridge,
  iptables rule or route is created (``makeIPTablesUtilChains: false``). Every node's pods share the host's
  network and its first address (``--node-ip``): pod IPs may not be loopback.
- the node's name is a loopback address of its own (127.77.<slot>.<2+i>): the API server dials a kubelet by it.
  The kubelet authenticates the API server by its client certificate (signed by the cluster's CA); no anonymous
  access.
- the kubelet would rewrite host sysctls; ``protectKernelDefaults: true`` plus, inside the namespace, files with
  the values it wants bind-mounted over those ``/proc/sys`` entries: the host keeps its own.
- fixed host paths two kubelets would share (``/var/lib/kubelet/device-plugins``, ``/var/log/containers``,
  containerd's ``/run/containerd``) are per-node bind mounts; pod logs and the cgroup parent are per node.
- ``nvidia.com/gpu`` capacity is patched into the node's status (nothing checks a device; as on the fake nodes).
- cluster DNS: CoreDNS (built with only bind/ready/errors/log/cache/kubernetes, no forward) on 127.77.<slot>.1.
- kwok manages only nodes annotated ``kwok.x-k8s.io/node: fake`` (kwok_cluster starts it so).

Tear-down (``stop_real_nodes``): kubelet, then every process in the node's cgroups, then the shims and
containerd, then the namespace holder, all by pid; then the node's cgroups, deepest first, and its folder.
Nothing is left: no process, mount or cgroup.

Only the standard library: ``hack/control-plane.sh real-nodes`` runs this without the venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE_SCRIPT = REPO_ROOT / "hack" / "control-plane.sh"
NODE_BINARIES = ("kubelet", "coredns", "pause")
HOST_TOOLS = {  # command -> what provides it
    "containerd": "apt-get install containerd",
    "containerd-shim-runc-v2": "apt-get install containerd",
    "ctr": "apt-get install containerd",
    "runc": "apt-get install runc",
    "unshare": "util-linux",
}
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
PAUSE_IMAGE = "localhost/training-hub/pause:3.10.1"
BUSYBOX_IMAGE = "localhost/training-hub/busybox:local"
REAL_NODE_LABEL = "training-hub.io/node-kind"
GPU_RESOURCE = "nvidia.com/gpu"
CLUSTER_DOMAIN = "cluster.local"
ADDRESS_PREFIX = "127.77"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
DNS_READY_PORT = 8181
# The sysctls the kubelet would set (pkg/kubelet/cm: setupKernelTunables) and the values it wants.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Host paths the kubelet or containerd use whatever their configuration says; each node gets its own.
PER_NODE_HOST_PATHS = {
    "/var/lib/kubelet/device-plugins": "device-plugins",
    "/var/log/containers": "container-logs",
    "/run/containerd": "run-containerd",
}
CGROUP_ROOT = Path("/sys/fs/cgroup")


class RealNodesUnavailable(RuntimeError):
    """A prerequisite is missing, or a node did not come up."""


def _cache_root() -> Path:
    explicit = os.environ.get("TRAINING_HUB_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "training-hub"


def find_node_bin_dir() -> Path | None:
    """The directory with kubelet, coredns and pause (``TRAINING_HUB_NODE_BIN`` or the build cache); None if absent."""
    explicit = os.environ.get("TRAINING_HUB_NODE_BIN")
    if explicit:
        return Path(explicit) if all(os.access(Path(explicit) / b, os.X_OK) for b in NODE_BINARIES) else None
    result = subprocess.run(
        ["bash", str(CONTROL_PLANE_SCRIPT), "node-bin-dir"], capture_output=True, text=True, timeout=30
    )
    found = result.stdout.strip()
    return Path(found) if result.returncode == 0 and found else None


def missing_prerequisites() -> list[str]:
    """What this machine lacks for real nodes, each named with how to get it; empty when they can run."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (kubelet and containerd mount, and create cgroups)")
    for tool, provider in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            missing.append(f"{tool} ({provider})")
    if not any(Path(d, "loopback").exists() for d in CNI_BIN_DIRS):
        missing.append("the CNI loopback plugin (apt-get install containernetworking-plugins)")
    if not (CGROUP_ROOT / "memory").is_dir() and not (CGROUP_ROOT / "cgroup.controllers").exists():
        missing.append("cgroups under /sys/fs/cgroup")
    if find_node_bin_dir() is None:
        missing.append("kubelet, coredns and pause (hack/control-plane.sh node-build)")
    return missing


def host_ip() -> str:
    """The host's first non-loopback IPv4 address: every real node's --node-ip (pod IPs may not be loopback)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    for address in out:
        if "." in address and not address.startswith("127."):
            return address
    raise RealNodesUnavailable("the host has no non-loopback IPv4 address to give pods (hostname -I)")


# --- images ------------------------------------------------------------------------------------
def write_image_archive(
    path: Path,
    ref: str,
    files: Mapping[str, Path],
    symlinks: Mapping[str, str] | None = None,
    entrypoint: Sequence[str] = (),
) -> Path:
    """A one-layer image (docker-archive format, which ``ctr images import`` reads) holding `files` (image path ->
    host file) and `symlinks` (image path -> target): the pause image, a busybox image for tests."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        dirs = sorted({str(Path(p).parent).lstrip("/") for p in [*files, *(symlinks or {})]} - {""})
        for directory in dirs:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for image_path, host_path in sorted(files.items()):
            data = Path(host_path).read_bytes()
            info = tarfile.TarInfo(image_path.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for image_path, target in sorted((symlinks or {}).items()):
            info = tarfile.TarInfo(image_path.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint) or None, "Env": ["PATH=/bin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as archive:
        for name, data in (
            ("layer.tar", layer_bytes), (config_name, config_bytes), ("manifest.json", json.dumps(manifest).encode())
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    # Rewritten only when it changes: the image store imports an archive again when its mtime moves.
    if not path.exists() or path.read_bytes() != whole.getvalue():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(whole.getvalue())
        tmp.replace(path)
    return path


def builtin_image_archives(node_bin: Path, into: Path) -> dict[str, Path]:
    """The pause image (sandbox) and, when busybox is installed, a busybox image; ref -> archive."""
    into.mkdir(parents=True, exist_ok=True)
    archives = {
        PAUSE_IMAGE: write_image_archive(
            into / "pause.tar", PAUSE_IMAGE, {"/pause": (node_bin / "pause").resolve()}, entrypoint=["/pause"]
        )
    }
    busybox = shutil.which("busybox")
    if busybox:
        archives[BUSYBOX_IMAGE] = write_image_archive(
            into / "busybox.tar", BUSYBOX_IMAGE, {"/bin/busybox": Path(busybox).resolve()},
            symlinks={"/bin/sh": "busybox"}, entrypoint=["/bin/sh"],
        )
    return archives


PROJECT_IMAGES = ("operator", "trainer")  # built by hack/images.sh; names come from their archives


def project_image_archive(name: str) -> tuple[Path | None, str]:
    """(docker-archive of the project's `name` image, "") or (None, why not). The archive comes from
    ``hack/images.sh archive NAME`` (which builds the image first if needed); ``TRAINING_HUB_<NAME>_IMAGE_ARCHIVE``
    names one instead."""
    explicit = os.environ.get(f"TRAINING_HUB_{name.upper()}_IMAGE_ARCHIVE")
    if explicit:
        return (Path(explicit), "") if Path(explicit).is_file() else (None, f"{explicit} is not a file")
    script = REPO_ROOT / "hack" / "images.sh"
    if not script.exists():
        return None, f"the {name} image: no hack/images.sh to build it"
    result = subprocess.run(["bash", str(script), "archive", name], capture_output=True, text=True, timeout=3600)
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not Path(path).is_file():
        return None, f"the {name} image (bash hack/images.sh archive {name} failed: {result.stderr.strip()[-500:]})"
    return Path(path), ""


def archive_image_ref(archive: Path) -> str:
    """The image name a docker-archive carries (the first RepoTag of its manifest.json)."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    tags = manifest[0].get("RepoTags") or []
    if not tags:
        raise RealNodesUnavailable(f"{archive} names no image (RepoTags is empty)")
    return tags[0]


# --- the image store shared by every node -------------------------------------------------------
def image_store_dir() -> Path:
    return _cache_root() / "real-node-images"


def _archive_identity(archive: Path) -> str:
    stat = Path(archive).stat()
    return f"{Path(archive).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _stop_pid(pid: int, grace: float = 10) -> None:
    _signal_and_wait({pid}, grace)


def seed_image_store(archives: Iterable[Path], timeout: float = 1800) -> tuple[Path, float]:
    """A containerd root with `archives` imported and unpacked for overlayfs, kept across runs under the cache:
    an archive is imported once per change (a 6 GB image takes minutes), then every node's root starts as a
    hard-linked copy of it (`seed_node_root`). Returns the root and the seconds spent importing (0 when warm)."""
    store = image_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    record_path = store / "imported.json"
    with open(store / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        missing = [Path(a) for a in archives if record.get(str(Path(a).resolve())) != _archive_identity(Path(a))]
        if not missing:
            return store / "root", 0.0
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="seed-", dir=store))
        sock = work / "containerd.sock"
        config = _write(work / "config.toml", f"""version = 2
root = "{store / 'root'}"
state = "{work / 'state'}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{work / 'opt'}"
""")
        # Unpacking mounts layers: in a mount namespace of its own, as for the nodes.
        with open(work / "containerd.log", "wb") as log:
            process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "slave", "containerd", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while not sock.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RealNodesUnavailable(f"containerd for the image store did not start: "
                                               f"{(work / 'containerd.log').read_text(errors='replace')[-1500:]}")
                time.sleep(0.1)
            for archive in missing:
                result = subprocess.run(
                    ["ctr", "--address", str(sock), "--namespace", "k8s.io", "images", "import", str(archive)],
                    capture_output=True, text=True, timeout=timeout,
                )
                if result.returncode != 0:
                    raise RealNodesUnavailable(f"importing {archive} failed: {result.stderr.strip()[-1500:]}")
                record[str(archive.resolve())] = _archive_identity(archive)
        finally:
            _stop_pid(process.pid)
            shutil.rmtree(work, ignore_errors=True)
        record_path.write_text(json.dumps(record, indent=1))
        return store / "root", time.monotonic() - started


def seed_node_root(store_root: Path, node_root: Path) -> None:
    """The node's containerd root as a hard-linked copy of the store (layers are never written in place: a
    container writes to its own upper directory), with the bolt databases copied for real."""
    with open(image_store_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if node_root.exists():
            shutil.rmtree(node_root)
        node_root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "-l", str(store_root), str(node_root)], check=True, timeout=600)
        for database in node_root.rglob("*.db"):
            data = database.read_bytes()
            database.unlink()
            database.write_bytes(data)


# --- one node ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealNode:
    name: str  # also its kubelet's address
    directory: Path
    socket: Path  # containerd's

    @property
    def cgroup_name(self) -> str:
        return "th-" + self.name.replace(".", "-")

    def ctr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout,
        )

    def import_image(self, archive: Path) -> float:
        """``ctr images import`` into this node's containerd (unpacked for the CRI); returns the seconds it took."""
        started = time.monotonic()
        result = self.ctr("images", "import", "--no-unpack=false", str(archive))
        if result.returncode != 0:
            raise RealNodesUnavailable(f"node {self.name}: importing {archive} failed: {result.stderr.strip()}")
        return time.monotonic() - started

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()

    def log_tail(self, component: str, lines: int = 30) -> str:
        path = self.directory / f"{component}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _containerd_config(node: RealNode) -> str:
    d = node.directory
    cni_bin = next((c for c in CNI_BIN_DIRS if Path(c, "loopback").exists()), CNI_BIN_DIRS[0])
    # `restrict_oom_score_adj`: root here lacks CAP_SYS_RESOURCE; sandboxes asking for -998 would fail.
    return f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{node.socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "{node.name}"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{d}/cni"
"""


def _kubelet_config(node: RealNode, *, dns_address: str, ca_file: str) -> str:
    d = node.directory
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.name,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": node.name,
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": ca_file},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node.cgroup_name}",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": False,
        "failCgroupV1": False,
        "makeIPTablesUtilChains": False,
        "protectKernelDefaults": True,
        "clusterDNS": [dns_address],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(d / "resolv.conf"),  # empty: no host search domains in pods
        "podLogsDir": str(d / "pod-logs"),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "serializeImagePulls": False,
        "runtimeRequestTimeout": "10m",
        "maxPods": 32,
    }
    return json.dumps(config, indent=1)


def _holder_script(node: RealNode, kubelet_args: Sequence[str], sysctl_files: Mapping[str, Path]) -> str:
    """Runs inside the node's private mount namespace: the bind mounts, then containerd, then the kubelet."""
    d = node.directory
    lines = ["set -eu"]
    for key, value_file in sysctl_files.items():
        lines.append(f"mount --bind {value_file} /proc/sys/{key}")
    for host_path, name in PER_NODE_HOST_PATHS.items():
        lines.append(f"mount --bind {d / name} {host_path}")
    lines += [
        f"containerd --config {d / 'containerd.toml'} >{d / 'containerd.log'} 2>&1 &",
        f"echo $! >{d / 'containerd.pid'}",
        f"for _ in $(seq 300); do [ -S {node.socket} ] && break; sleep 0.1; done",
        f"[ -S {node.socket} ] || {{ echo 'containerd did not open its socket' >&2; exit 1; }}",
        f"{' '.join(kubelet_args)} >{d / 'kubelet.log'} 2>&1 &",
        f"echo $! >{d / 'kubelet.pid'}",
        "wait",
    ]
    return "\n".join(lines) + "\n"


# --- processes, cgroups, mounts ----------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pids_mentioning(path: Path) -> set[int]:
    needle = (str(path).rstrip("/") + "/").encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _signal_and_wait(pids: Iterable[int], grace: float) -> None:
    """TERM, `grace` seconds, then KILL and wait (up to 30 s) for each pid to be gone."""
    pending = {p for p in pids if _alive(p)}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        for pid in pending:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            time.sleep(0.1)
            pending = {p for p in pending if _alive(p)}
        if not pending:
            return
    raise RealNodesUnavailable(f"processes {sorted(pending)} survived SIGKILL for 30 s")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def create_node_cgroup(cgroup_name: str) -> None:
    """The kubelet's cgroupRoot must exist before it starts (in every v1 hierarchy)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        (CGROUP_ROOT / cgroup_name).mkdir(exist_ok=True)
        return
    for hierarchy in CGROUP_ROOT.iterdir():
        if not hierarchy.is_dir() or hierarchy.name == "unified":
            continue
        group = hierarchy / cgroup_name
        group.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # an empty cpuset admits no process: inherit the parent's
            for key in ("cpuset.cpus", "cpuset.mems"):
                if not (group / key).read_text().strip():
                    (group / key).write_text((hierarchy / key).read_text())


def node_cgroups(cgroup_name: str) -> list[Path]:
    """Every cgroup directory of a node (all v1 hierarchies, or v2), deepest first."""
    found: list[Path] = []
    tops = [CGROUP_ROOT / cgroup_name] if (CGROUP_ROOT / "cgroup.controllers").exists() else [
        h / cgroup_name for h in CGROUP_ROOT.iterdir() if h.is_dir()
    ]
    for top in tops:
        if top.is_dir():
            found += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(cgroups: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for group in cgroups:
        try:
            pids |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            continue
    return pids


def node_mounts(directory: Path) -> list[str]:
    """Mount points under `directory` visible in this (the host's) mount namespace: none, if the namespace held."""
    prefix = str(directory).rstrip("/") + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(prefix) or point == prefix.rstrip("/"):
            mounts.append(point)
    return mounts


# --- the set of nodes of one cluster -----------------------------------------------------------
def _slot_dir() -> Path:
    return _cache_root() / "kwok" / "real-node-slots"


def _claim_slot(owner: Path) -> int:
    """An address block 127.77.<slot>.0/24 for one cluster, claimed until its owner (a cluster folder) is gone."""
    slots = _slot_dir()
    slots.mkdir(parents=True, exist_ok=True)
    with open(slots / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for slot in range(1, 255):
            claim = slots / str(slot)
            if claim.exists():
                holder = Path(claim.read_text().strip())
                if holder == owner or not holder.exists():
                    claim.write_text(str(owner))
                    return slot
                continue
            claim.write_text(str(owner))
            return slot
    raise RealNodesUnavailable("no free address block 127.77.<1-254>.0/24 for real nodes")


def _release_slot(owner: Path) -> None:
    slots = _slot_dir()
    for claim in slots.iterdir() if slots.is_dir() else []:
        if claim.name.isdigit():
            try:
                if Path(claim.read_text().strip()) == owner:
                    claim.unlink()
            except OSError:
                continue


def real_nodes_dir(cluster_workdir: Path) -> Path:
    # Short names: the kubelet binds unix sockets under its root dir, and a socket path may not exceed 107 bytes.
    return Path(cluster_workdir) / "rn"


@dataclass
class RealNodes:
    """The real nodes and the DNS server of one cluster (see the module docstring)."""

    cluster_workdir: Path
    kubeconfig: str
    kubectl: str
    slot: int
    nodes: list[RealNode]
    dns_address: str

    @property
    def directory(self) -> Path:
        return real_nodes_dir(self.cluster_workdir)

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def import_images(self, archives: Iterable[Path]) -> dict[str, float]:
        """Imports each archive into every node; returns seconds per node name (all archives)."""
        timings = {}
        for node in self.nodes:
            timings[node.name] = sum(node.import_image(Path(a)) for a in archives)
        return timings

    def stop(self) -> None:
        stop_real_nodes(self.cluster_workdir)


def _kubectl(kubectl: str, kubeconfig: str, *args: str, input: str | None = None, check: bool = True):
    result = subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, *args], input=input, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise RealNodesUnavailable(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _start_dns(directory: Path, address: str, kubeconfig: str, node_bin: Path) -> None:
    corefile = _write(
        directory / "Corefile",
        f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {address}
    ready {address}:{DNS_READY_PORT}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 1
    }}
}}
""",
    )
    with open(directory / "coredns.log", "wb") as log:
        process = subprocess.Popen(
            [str(node_bin / "coredns"), "-conf", str(corefile), "-pidfile", str(directory / "coredns.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=directory,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}:{DNS_READY_PORT}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (directory / "coredns.log").read_text(errors="replace")[-2000:]
            raise RealNodesUnavailable(f"CoreDNS on {address} did not become ready: {tail}")
        time.sleep(0.3)


def _sysctl_files(directory: Path) -> dict[str, Path]:
    """Files holding the values the kubelet insists on, for the sysctls whose host value differs."""
    files = {}
    for key, wanted in KUBELET_SYSCTLS.items():
        current = Path("/proc/sys", key)
        if current.exists() and current.read_text().strip() != wanted:
            files[key] = _write(directory / "sysctl" / key.replace("/", "."), wanted + "\n")
    return files


def _start_node(
    node: RealNode, *, cluster_workdir: Path, kubeconfig: str, node_bin: Path, dns_address: str, node_ip: str,
    labels: Mapping[str, str],
) -> None:
    d = node.directory
    for sub in ("containerd", "cni", "pod-logs", "k", *PER_NODE_HOST_PATHS.values()):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for host_path in PER_NODE_HOST_PATHS:
        Path(host_path).mkdir(parents=True, exist_ok=True)  # mount points; the host's stay empty
    _write(d / "resolv.conf", "")
    create_node_cgroup(node.cgroup_name)
    _write(
        d / "cni" / "10-loopback.conflist",
        json.dumps({"cniVersion": "1.0.0", "name": "loopback-only", "plugins": [{"type": "loopback"}]}),
    )
    _write(d / "containerd.toml", _containerd_config(node))
    _write(
        d / "kubelet.yaml", _kubelet_config(node, dns_address=dns_address, ca_file=str(cluster_workdir / "pki" / "ca.crt"))
    )
    kubelet_args = [
        str(node_bin / "kubelet"),
        f"--config={d / 'kubelet.yaml'}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node.name}",
        f"--node-ip={node_ip}",
        f"--root-dir={d / 'k'}",  # short: sockets live under it
        f"--cert-dir={d / 'k' / 'pki'}",
        "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "--v=1",
    ]
    script = _write(d / "node.sh", _holder_script(node, kubelet_args, _sysctl_files(d)))
    with open(d / "node.log", "wb") as log:
        holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "bash", str(script)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=d,
        )
    (d / "holder.pid").write_text(str(holder.pid))


def seed_project_images() -> float:
    """The project's images (``hack/images.sh archive``: built or exported first when needed) imported into the
    shared image store; returns the seconds spent importing (0 when current). ``hack/test.sh`` runs this in the
    background while Go compiles, so a cold machine's 5 GB trainer import never waits in line; the real-node
    fixture then finds the store current."""
    missing = [f"{tool} ({provider})" for tool, provider in HOST_TOOLS.items() if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.insert(0, "root")
    if missing:
        raise RealNodesUnavailable("the image store needs " + "; ".join(missing))
    archives = []
    for name in PROJECT_IMAGES:
        archive, why_not = project_image_archive(name)
        if archive is None:
            raise RealNodesUnavailable(why_not)
        archives.append(archive)
    return seed_image_store(archives)[1]


def start_real_nodes(
    cluster_workdir: Path,
    kubeconfig: str,
    kubectl: str,
    count: int = 2,
    gpus_per_node: int = 8,
    gpu_product: str = "NVIDIA-H100-80GB-HBM3",
    archives: Iterable[Path] = (),
    timeout: float = 120,
) -> RealNodes:
    """Starts CoreDNS and `count` real nodes for the cluster in `cluster_workdir`; waits until they are Ready
    with their GPU capacity, the pause (and busybox) image and `archives` imported. Cleans up on failure."""
    missing = missing_prerequisites()
    if missing:
        raise RealNodesUnavailable("real nodes need " + "; ".join(missing))
    node_bin = find_node_bin_dir()
    assert node_bin is not None
    cluster_workdir = Path(cluster_workdir)
    directory = real_nodes_dir(cluster_workdir)
    if directory.exists():
        stop_real_nodes(cluster_workdir)
    directory.mkdir(parents=True)
    try:
        slot = _claim_slot(cluster_workdir)
        (directory / "slot").write_text(str(slot))
        dns_address = f"{ADDRESS_PREFIX}.{slot}.1"
        _start_dns(directory, dns_address, kubeconfig, node_bin)
        node_ip = host_ip()
        nodes = [
            RealNode(name=f"{ADDRESS_PREFIX}.{slot}.{2 + i}", directory=directory / f"n{i}",
                     socket=directory / f"n{i}" / "containerd.sock")
            for i in range(count)
        ]
        labels = {
            REAL_NODE_LABEL: "real",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": gpu_product,
            "nvidia.com/gpu.count": str(gpus_per_node),
        }
        images = [*builtin_image_archives(node_bin, image_store_dir() / "builtin").values(), *archives]
        store_root, import_seconds = seed_image_store(images)
        (directory / "images-imported-seconds").write_text(f"{import_seconds:.1f}")
        for node in nodes:
            seed_node_root(store_root, node.directory / "containerd" / "root")
            _start_node(node, cluster_workdir=cluster_workdir, kubeconfig=kubeconfig, node_bin=node_bin,
                        dns_address=dns_address, node_ip=node_ip, labels=labels)
        real = RealNodes(cluster_workdir, kubeconfig, kubectl, slot, nodes, dns_address)
        _wait_for_sockets(nodes, timeout)
        _wait_registered(real, timeout)
        capacity = {GPU_RESOURCE: str(gpus_per_node)}
        for node in nodes:
            _kubectl(kubectl, kubeconfig, "patch", "node", node.name, "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": {"capacity": capacity, "allocatable": capacity}}))
        _kubectl(kubectl, kubeconfig, "wait", "--for=condition=Ready", f"--timeout={int(timeout)}s",
                 *[f"node/{n.name}" for n in nodes])
        return real
    except BaseException:
        stop_real_nodes(cluster_workdir)
        raise


def _wait_for_sockets(nodes: Sequence[RealNode], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        while not node.socket.exists():
            holder = _read_pid(node.directory / "holder.pid")
            if time.monotonic() > deadline or (holder and not _alive(holder)):
                raise RealNodesUnavailable(
                    f"node {node.name}: containerd did not start:\n{node.log_tail('node')}\n{node.log_tail('containerd')}"
                )
            time.sleep(0.2)


def _wait_registered(real: RealNodes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(real.names())
    while pending:
        listed = _kubectl(real.kubectl, real.kubeconfig, "get", "nodes", "-o", "name", check=False).stdout.split()
        pending -= {n.removeprefix("node/") for n in listed}
        if not pending:
            return
        for node in real.nodes:
            if node.name in pending:
                pid = _read_pid(node.directory / "kubelet.pid")
                if pid and not _alive(pid):
                    raise RealNodesUnavailable(f"node {node.name}: the kubelet exited:\n{node.log_tail('kubelet')}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n.name}\n{n.log_tail('kubelet')}" for n in real.nodes if n.name in pending)
            raise RealNodesUnavailable(f"nodes {sorted(pending)} did not register in {timeout}s:\n{tails}")
        time.sleep(0.3)


def stop_real_nodes(cluster_workdir: Path, grace: float = 5) -> None:
    """Stops the cluster's real nodes and DNS, leaving no process, mount, cgroup or folder; a no-op if none."""
    directory = real_nodes_dir(Path(cluster_workdir))
    if not directory.is_dir():
        _release_slot(Path(cluster_workdir))
        return
    node_dirs = sorted(p for p in directory.glob("n[0-9]*") if p.is_dir())
    # 1. kubelets first, so nothing restarts what comes next.
    _signal_and_wait({p for d in node_dirs if (p := _read_pid(d / "kubelet.pid"))}, grace)
    for node_dir in node_dirs:
        cgroup_name = _cgroup_name_of(node_dir)
        # 2. every process of the node's pods (pause, containers), by the cgroups the kubelet made for them.
        for _ in range(20):
            pids = _cgroup_pids(node_cgroups(cgroup_name)) if cgroup_name else set()
            if not pids:
                break
            _signal_and_wait(pids, 0)
        # 3. shims and containerd (their command lines name the node's folder), then the namespace holder.
        containerd = _read_pid(node_dir / "containerd.pid")
        _signal_and_wait(_pids_mentioning(node_dir) - {containerd or -1, _read_pid(node_dir / "holder.pid") or -1}, 1)
        _signal_and_wait({containerd} if containerd else set(), grace)
        _signal_and_wait(_pids_mentioning(node_dir), grace)
    dns = _read_pid(directory / "coredns.pid")
    _signal_and_wait({dns} if dns else set(), grace)
    _signal_and_wait(_pids_mentioning(directory), grace)
    # 4. cgroups, deepest first (a cgroup empties a moment after its last process is reaped).
    for node_dir in node_dirs:
        cgroup_name = _cgroup_name_of(node_dir)
        if not cgroup_name:
            continue
        deadline = time.monotonic() + 30
        while (groups := node_cgroups(cgroup_name)) and time.monotonic() < deadline:
            for group in groups:
                try:
                    group.rmdir()
                except OSError:
                    pass
            time.sleep(0.1)
        if groups:
            raise RealNodesUnavailable(f"cgroups of {node_dir.name} could not be removed: {[str(g) for g in groups]}")
    leftover_mounts = node_mounts(directory)
    if leftover_mounts:
        raise RealNodesUnavailable(f"mounts left under {directory}: {leftover_mounts}")
    shutil.rmtree(directory, ignore_errors=True)
    _release_slot(Path(cluster_workdir))


def _cgroup_name_of(node_dir: Path) -> str | None:
    try:
        config = json.loads((node_dir / "kubelet.yaml").read_text())
    except (OSError, ValueError):
        return None
    return config["cgroupRoot"].strip("/") or None


def wait_for_dns(address: str, name: str, timeout: float = 30) -> None:
    """Waits until `name` resolves through `address` (a minimal A query; the standard library has no resolver)."""
    query_id = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split(".")) + b"\0"
    packet = query_id.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question + b"\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1)
            try:
                sock.sendto(packet, (address, 53))
                reply = sock.recv(512)
                if reply[3] & 0x0F == 0 and int.from_bytes(reply[6:8], "big") > 0:
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} does not resolve through {address} after {timeout}s")
        time.sleep(0.5)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["seed-images"]:
        sys.exit("usage: python3 tests/support/real_nodes.py seed-images")
    try:
        seconds = seed_project_images()
    except RealNodesUnavailable as error:
        sys.exit(f"real nodes: image store not seeded: {error}")
    print(f"real nodes: image store current ({seconds:.0f} s importing)", file=sys.stderr)
