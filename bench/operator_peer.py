"""The peer: Kubeflow training-operator (v1.8.1, PyTorchJob controller only), built from its Go module by
`hack/control-plane.sh peer-build` (cached under ~/.cache/training-hub/bin) and run beside the control plane as a
process with the cluster's kubeconfig, as the operator is. bench/operator_anchors.py holds the operator's figures
against it.

The equivalent of an SFTJob of N nodes is a PyTorchJob of 1 master + N-1 workers whose pods ask for what the
operator's pods ask for (GPU limits, node selector, tolerations, image: taken from the operator's own rendering).
Not deployed as in production: its validating webhook is registered with rules that match nothing (the API server
could not reach it out of cluster), so the peer's PyTorchJob POSTs skip one admission call a real installation makes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from operator_common import REPO_ROOT, free_port

from tests.cluster.deploy_helpers import wait_established

PEER_USER_AGENT = "training-operator/"  # client-go's default: the binary's name
PEER_SYSTEM_NAMESPACE = "th-bench-peer-system"  # where its (unused) webhook certificate Secret lives


def peer_dir(build: bool = False) -> Path | None:
    """The peer's directory (binary + CRD), None when not built; `build`: build it first (cold: minutes)."""
    result = subprocess.run(["bash", str(REPO_ROOT / "hack/control-plane.sh"), "peer-build" if build else "peer-dir"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if build:
            raise RuntimeError(f"hack/control-plane.sh peer-build failed:\n{result.stderr[-2000:]}")
        return None
    return Path(result.stdout.strip().splitlines()[-1])


def install(cluster, directory: Path) -> None:
    """The PyTorchJob CRD (server-side: too big for kubectl's last-applied annotation), and the namespace and
    Secret the peer's certificate rotator insists on."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory / "crds"))
    wait_established(cluster, "pytorchjobs.kubeflow.org")
    if cluster.kubectl("get", "namespace", PEER_SYSTEM_NAMESPACE, check=False).returncode != 0:
        cluster.create_namespace(PEER_SYSTEM_NAMESPACE)
    cluster.kubectl("create", "secret", "generic", "training-operator-webhook-cert", "-n", PEER_SYSTEM_NAMESPACE,
                    check=False)
    # It is not ready until it has put its CA into this configuration; the rules match nothing, so the API server
    # never calls it (it could not reach the webhook server out of cluster anyway).
    webhook = {
        "name": "validator.training-operator.kubeflow.org", "sideEffects": "None", "failurePolicy": "Ignore",
        "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://127.0.0.1:9/unused"},
        "rules": [{"apiGroups": ["th-bench.invalid"], "apiVersions": ["v1"], "operations": ["CREATE"],
                   "resources": ["none"]}],
    }
    apply_objects = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                     "metadata": {"name": "validator.training-operator.kubeflow.org"}, "webhooks": [webhook]}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(apply_objects))


class PeerProcess:
    def __init__(self, process: subprocess.Popen, log_path: Path, probe_port: int) -> None:
        self.process = process
        self.pid = process.pid
        self.log_path = log_path
        self.probe_port = probe_port

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_peer(cluster, namespace: str, log_dir: Path, directory: Path) -> Iterator[PeerProcess]:
    """training-operator watching `namespace`, PyTorchJob controller only, no leader election."""
    probe_port = free_port()
    log_path = log_dir / f"peer-{namespace}.log"
    command = [
        str(directory / "training-operator"), "--enable-scheme=pytorchjob", f"--namespace={namespace}",
        f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--health-probe-bind-address=127.0.0.1:{probe_port}",
        f"--webhook-server-port={free_port()}", "--leader-elect=false",
    ]
    env = {**cluster.env, "MY_POD_NAMESPACE": PEER_SYSTEM_NAMESPACE}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    peer = PeerProcess(process, log_path, probe_port)
    try:
        deadline = time.monotonic() + 120
        while not peer.ready():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the peer did not become ready:\n{peer.log_tail()}")
            _mount_certificate(cluster)
            time.sleep(0.2)
        # Ready says the certificates are; the controller starts right after and lists its PyTorchJobs.
        deadline = time.monotonic() + 60
        while "Starting workers" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the peer's controller did not start:\n{peer.log_tail()}")
            time.sleep(0.2)
        yield peer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # fixed in training-operator's pkg/cert


def _mount_certificate(cluster) -> None:
    """What the kubelet does in cluster: puts the webhook certificate Secret (written by the peer's rotator) where the
    peer reads it. The peer is not ready before it finds the files."""
    if (CERT_DIR / "tls.crt").exists():
        return
    result = cluster.kubectl("get", "secret", "training-operator-webhook-cert", "-n", PEER_SYSTEM_NAMESPACE,
                             "-o", "json", check=False)
    data = json.loads(result.stdout).get("data") or {} if result.returncode == 0 else {}
    if not {"tls.crt", "tls.key"} <= set(data):
        return
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    for key in ("tls.key", "tls.crt"):  # the certificate last: its presence is what the peer waits for
        partial = CERT_DIR / f".{key}.{os.getpid()}"
        partial.write_bytes(base64.b64decode(data[key]))
        partial.replace(CERT_DIR / key)


def pytorchjob(name: str, namespace: str, nnodes: int, rendered_pod: dict[str, Any]) -> dict[str, Any]:
    """1 master + `nnodes - 1` workers whose pods ask for what `rendered_pod` (the operator's pod for the same job)
    asks for: image, GPU limits, node selector, tolerations."""
    spec = rendered_pod["spec"]
    container = spec["containers"][0]
    template = {
        "spec": {
            "containers": [{
                "name": "pytorch",  # the container the PyTorchJob controller looks for
                "image": container["image"],
                "resources": container.get("resources", {}),
            }],
            "nodeSelector": spec.get("nodeSelector", {}),
            "tolerations": spec.get("tolerations", []),
        },
    }
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if nnodes > 1:
        replicas["Worker"] = {"replicas": nnodes - 1, "restartPolicy": "OnFailure", "template": template}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name, "namespace": namespace},
            "spec": {"pytorchReplicaSpecs": replicas}}


def pod_names(name: str, nnodes: int) -> list[str]:
    return [f"{name}-master-0", *(f"{name}-worker-{i}" for i in range(nnodes - 1))]
