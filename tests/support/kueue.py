"""Real Kueue (v0.17, built from its Go module by ``hack/control-plane.sh kueue-build``) beside a test cluster.

Kueue runs as a local process against the cluster's API server, as it would in-cluster, with what a cluster
would give it by other means set up here (docs/operator.md, "Kueue"; ``/work/shared/notes/kueue.md``):

- its CRDs, applied server-side (the Workload CRD is too large for a client-side apply);
- its webhooks as URL webhooks on 127.0.0.1 with a CA made here (openssl) instead of a Service and cert-manager.
  Only the pod webhooks and Kueue's own resources are registered (no other framework is enabled); the pod
  webhooks carry a ``namespaceSelector`` on :data:`MANAGED_NAMESPACE_LABEL`, so a stopped Kueue never blocks
  pod creation in other tests' namespaces;
- configuration: the plain-pod integration (``integrations.frameworks: [pod]``) for the namespaces labelled
  :data:`MANAGED_NAMESPACE_LABEL` (``managedJobsNamespaceSelector``), no leader election, no metrics or visibility
  servers, health probes on 127.0.0.1;
- the metrics-certificate wall: with internal cert management off, v0.17 exits at start unless
  ``/etc/kueue/metrics/certs/tls.{crt,key}`` exist (the path is fixed in its main.go), even with metrics off. A
  throwaway certificate is put there when missing, and removed when the last Kueue started this way stops.

Used through the ``kueue`` / ``kueue_namespace`` fixtures (tests/cluster/conftest.py); also
``python tests/support/kueue.py up|down <cluster-name>`` for a cluster started by ``hack/control-plane.sh up``.
Only the standard library is imported at module level.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import kwok_cluster  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
MANAGED_NAMESPACE_LABEL = "training-hub.io/kueue-managed"
KUEUE_NAMESPACE = "kueue-system"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")  # fixed in Kueue v0.17's cmd/kueue/main.go
WEBHOOK_CONFIG_NAMES = {
    "MutatingWebhookConfiguration": "training-hub-kueue-mutating",
    "ValidatingWebhookConfiguration": "training-hub-kueue-validating",
}
GPU_RESOURCE = kwok_cluster.GPU_RESOURCE


class KueueUnavailable(RuntimeError):
    """Kueue is not built, or did not start."""


def find_kueue_dir() -> Path | None:
    """The directory with the kueue binary, its CRDs and webhook manifests; None when not built (never builds)."""
    explicit = os.environ.get("TRAINING_HUB_KUEUE_DIR")
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        result = subprocess.run(
            ["bash", str(kwok_cluster.CONTROL_PLANE_SCRIPT), "kueue-dir"], capture_output=True, text=True, timeout=30
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    for directory in candidates:
        if os.access(directory / "kueue", os.X_OK) and (directory / "webhook-manifests.yaml").is_file():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise KueueUnavailable(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_serving_cert(directory: Path) -> bytes:
    """A CA and a serving certificate for 127.0.0.1 (tls.crt, tls.key in `directory`); returns the CA's PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "tls.key", directory / "tls.csr", directory / "tls.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=training-hub-test-kueue-ca",
             "-keyout", str(ca_key), "-out", str(ca_crt))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(extensions), "-out", str(crt))
    return ca_crt.read_bytes()


def _kueue_pids(binary: Path) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") == str(binary.resolve()):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _ensure_metrics_cert(scratch: Path) -> bool:
    """Puts a throwaway cert where Kueue v0.17 insists on finding one; True when this call created it."""
    if (METRICS_CERT_DIR / "tls.crt").is_file() and (METRICS_CERT_DIR / "tls.key").is_file():
        return False
    make_serving_cert(scratch)
    METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("tls.key", "tls.crt"):  # key first: a reader that sees the cert finds the key too
        tmp = METRICS_CERT_DIR / f".{name}.{os.getpid()}"
        tmp.write_bytes((scratch / name).read_bytes())
        tmp.replace(METRICS_CERT_DIR / name)
    return True


def _webhook_configurations(kueue_dir: Path, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook manifests, reduced to pods and Kueue's own resources, pointed at 127.0.0.1:port."""
    import base64

    import yaml

    bundle = base64.b64encode(ca_bundle).decode()
    configurations = []
    for document in yaml.safe_load_all((kueue_dir / "webhook-manifests.yaml").read_text()):
        if not document:
            continue
        kept = []
        for webhook in document.get("webhooks") or ():
            groups = {group for rule in webhook.get("rules") or () for group in rule.get("apiGroups") or ()}
            resources = {resource for rule in webhook.get("rules") or () for resource in rule.get("resources") or ()}
            if groups == {""} and resources == {"pods"}:
                webhook["namespaceSelector"] = {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}}
            elif groups != {"kueue.x-k8s.io"}:
                continue  # a framework that is not enabled: Kueue does not serve its path
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            webhook["timeoutSeconds"] = 10
            kept.append(webhook)
        document["metadata"] = {"name": WEBHOOK_CONFIG_NAMES[document["kind"]]}
        document["webhooks"] = kept
        configurations.append(document)
    return configurations


def _config(workdir: Path, webhook_port: int, health_port: int) -> str:
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(workdir / "webhook-certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "managedJobsNamespaceSelector": {"matchLabels": {MANAGED_NAMESPACE_LABEL: "true"}},
        "integrations": {"frameworks": ["pod"]},
        # On-demand visibility would serve on :8082 on every interface.
        "featureGates": {"VisibilityOnDemand": False},
        "clientConnection": {"qps": 100, "burst": 200},
    }
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config))
    return str(path)


@dataclass
class Kueue:
    """A running Kueue; see the module docstring."""

    cluster: kwok_cluster.KwokCluster
    kueue_dir: Path
    workdir: Path
    process: subprocess.Popen | None = None
    health_port: int = 0
    created_metrics_cert: bool = False
    started_in_s: float = 0.0
    _log: Any = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "kueue.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    # --- queues ---------------------------------------------------------------------------------------------------
    def create_queues(
        self,
        namespace: str,
        *,
        gpus: int = 16,
        queue: str = "gpu-queue",
        flavor: str = "training-hub-gpu",
        preemption: Mapping[str, Any] | None = None,
    ) -> str:
        """A ResourceFlavor, a ClusterQueue `<namespace>` of `gpus` GPUs (cpu, memory and the GPU resource covered)
        serving only `namespace`, and the LocalQueue `queue` in it. Returns the ClusterQueue's name."""
        cluster_queue = namespace
        objects = [
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor}},
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": cluster_queue},
                "spec": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                            "flavors": [
                                {
                                    "name": flavor,
                                    "resources": [
                                        {"name": "cpu", "nominalQuota": "1000"},
                                        {"name": "memory", "nominalQuota": "100Ti"},
                                        {"name": GPU_RESOURCE, "nominalQuota": gpus},
                                    ],
                                }
                            ],
                        }
                    ],
                    **({"preemption": dict(preemption)} if preemption else {}),
                },
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": queue, "namespace": namespace},
                "spec": {"clusterQueue": cluster_queue},
            },
        ]
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        deadline = time.monotonic() + 60
        while True:
            status = self.cluster.kubectl_json("get", "clusterqueue", cluster_queue).get("status") or {}
            active = [c for c in status.get("conditions") or () if c.get("type") == "Active" and c.get("status") == "True"]
            if active:
                return cluster_queue
            if time.monotonic() > deadline:
                raise KueueUnavailable(f"ClusterQueue {cluster_queue} not Active after 60 s: {status}")
            time.sleep(0.3)

    def gpus_reserved(self, cluster_queue: str) -> int:
        """GPUs of the ClusterQueue's quota held by Workloads (reserved or admitted)."""
        status = self.cluster.kubectl_json("get", "clusterqueue", cluster_queue).get("status") or {}
        total = 0
        for flavor in status.get("flavorsReservation") or ():
            for resource in flavor.get("resources") or ():
                if resource.get("name") == GPU_RESOURCE:
                    total += int(str(resource.get("total") or 0))
        return total

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        return self.cluster.kubectl_json("get", "workloads.kueue.x-k8s.io", "-n", namespace)["items"]

    def delete_queues(self, namespace: str) -> None:
        self.cluster.kubectl("delete", "clusterqueue", namespace, "--wait=false", "--ignore-not-found", check=False)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        # Webhooks first: with Kueue gone they would fail every call in the managed namespaces.
        for kind, name in WEBHOOK_CONFIG_NAMES.items():
            self.cluster.kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self.created_metrics_cert and not _kueue_pids(self.kueue_dir / "kueue"):
            for name in ("tls.crt", "tls.key"):
                (METRICS_CERT_DIR / name).unlink(missing_ok=True)


def start_kueue(cluster: kwok_cluster.KwokCluster, kueue_dir: Path, workdir: Path, timeout: float = 120) -> Kueue:
    """Starts Kueue against `cluster` (CRDs, webhooks, config as in the module docstring); ready when it returns."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    ca_bundle = make_serving_cert(workdir / "webhook-certs")
    kueue = Kueue(cluster=cluster, kueue_dir=kueue_dir, workdir=workdir, health_port=_free_port())
    kueue.created_metrics_cert = _ensure_metrics_cert(workdir / "metrics-certs")
    try:
        cluster.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(kueue_dir / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(kueue_dir / "crds"), timeout=90)
        webhook_port = _free_port()
        config = _config(workdir, webhook_port, kueue.health_port)
        log = open(kueue.log_path, "a")
        kueue.process = subprocess.Popen(
            [str(kueue_dir / "kueue"), "--config", config, "--kubeconfig", cluster.kubeconfig],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=cluster.env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not kueue.ready():
            if kueue.process.poll() is not None:
                raise KueueUnavailable(f"kueue exited with {kueue.process.returncode}:\n{kueue.log_tail()}")
            if time.monotonic() > deadline:
                raise KueueUnavailable(f"kueue not ready after {timeout}s:\n{kueue.log_tail()}")
            time.sleep(0.2)
        # Registered once Kueue serves them, so the API server never calls a dead endpoint.
        configurations = _webhook_configurations(kueue_dir, webhook_port, ca_bundle)
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": configurations}))
    except BaseException:
        kueue.stop()
        raise
    kueue.started_in_s = time.monotonic() - started
    return kueue


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="tests/support/kueue.py", description="real Kueue beside a kwokctl cluster")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("name", nargs="?", default=kwok_cluster.DEFAULT_CLUSTER_NAME)
    args = parser.parse_args(argv)
    kueue_dir = find_kueue_dir()
    bin_dir = kwok_cluster.find_bin_dir()
    if kueue_dir is None or bin_dir is None:
        print("kueue: build it first: hack/control-plane.sh kueue-build", file=sys.stderr)
        return 1
    cluster = kwok_cluster.KwokCluster(
        kubeconfig=str(kwok_cluster.cluster_dir(args.name) / "kubeconfig.yaml"), bin_dir=bin_dir, name=args.name,
        workdir=kwok_cluster.cluster_dir(args.name),
    )
    kueue = start_kueue(cluster, kueue_dir, kwok_cluster.cluster_dir(args.name) / "kueue")
    print(f"kueue: ready in {kueue.started_in_s:.1f} s (pid {kueue.process.pid}); label namespaces "
          f"{MANAGED_NAMESPACE_LABEL}=true; log {kueue.log_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
