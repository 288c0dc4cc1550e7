"""The Helm chart installs the operator image (hack/images.sh) as a real pod on a real node: its security context
holds in the running container, and it reconciles an SFTJob."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.cluster.operator_harness import apply, free_port, get_job, sftjob, wait_until
from tests.support import real_nodes

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(600)]

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "training-hub-operator"


def _process_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_the_charts_operator_runs_as_a_real_pod_hardened_and_reconciles(real_cluster, real_images):
    namespace = real_cluster.create_namespace(f"chart-operator-{os.getpid()}")
    server = urlparse(yaml.safe_load(Path(real_cluster.kubeconfig).read_text())["clusters"][0]["cluster"]["server"])
    repository, tag = real_images["operator"].rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "rbac": {"scope": "namespaced"},
        "watchNamespaces": [namespace],
        # Real nodes here have no pod network and no kube-proxy: the host network, and the API server's address.
        "hostNetwork": True,
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": server.hostname},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(server.port)},
        ],
        "health": {"port": free_port()},
        "metrics": {"port": free_port()},
        "nodeSelector": {real_nodes.REAL_NODE_LABEL: "real"},
        "trainer": {"image": real_images["trainer"], "imagePullPolicy": "Never"},
    }
    helm = str(real_cluster.bin_dir / "helm")
    kubectl = real_cluster.kubectl
    install = subprocess.run(
        [helm, "upgrade", "--install", "op", str(CHART), "-n", namespace, "--wait", "--timeout", "240s",
         "-f", "-"], input=json.dumps(values), capture_output=True, text=True, timeout=300, env=real_cluster.env,
    )
    pods = real_cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator")["items"]
    assert install.returncode == 0, f"{install.stderr}\n{json.dumps([p.get('status') for p in pods], indent=1)}"
    (pod,) = pods
    assert pod["spec"]["nodeName"] in real_cluster.real_nodes.names()
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["containerID"].startswith("containerd://")
    # The chart's security context, as the kubelet ran it.
    container = pod["spec"]["containers"][0]["securityContext"]
    assert container["readOnlyRootFilesystem"] and container["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    written = kubectl("exec", "-n", namespace, pod["metadata"]["name"], "--", "python", "-c",
                     "open('/written-by-the-test', 'w')", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    uid = kubectl("exec", "-n", namespace, pod["metadata"]["name"], "--", "python", "-c",
                 "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert uid[0] == str(pod["spec"]["securityContext"]["runAsUser"]) != "0"
    node = next(n for n in real_cluster.real_nodes.nodes if n.name == pod["spec"]["nodeName"])
    operator_pids = [p for p in real_nodes._cgroup_pids(real_nodes.node_cgroups(node.cgroup_name))
                     if b"sftjob-operator" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert operator_pids and all(_process_uid(p) != 0 for p in operator_pids)  # seen from the host, too

    # It reconciles: a job for the fake GPU node (kwok plays that node's kubelet) gets its gang and status.
    apply(real_cluster, sftjob("reconciled", namespace, nnodes=1, nproc_per_node=1,
                               nodeSelector={"type": "kwok"}, tolerations=[]))
    job = wait_until(
        lambda: (j := get_job(real_cluster, namespace, "reconciled")) and (j.get("status") or {}).get("phase") == "Running" and j,
        180, "the in-cluster operator to run the job",
        describe=lambda: kubectl("logs", "-n", namespace, pod["metadata"]["name"], "--tail=30", check=False).stdout,
    )
    assert job["status"]["nodes"] == "1/1"
    real_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
