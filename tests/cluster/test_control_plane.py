"""The control plane the other cluster tests rely on: real API server, scheduler, controllers,
kwok-simulated GPU nodes, and the helpers that drive pods (tests/support/kwok_cluster.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import kwok_cluster
from tests.support.kwok_cluster import GPU_RESOURCE, KwokCluster

REPO_ROOT = Path(__file__).resolve().parents[2]

def _pinned_versions() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "control-plane.sh"), "versions"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


def _pod(name: str, gpus: int = 0, node: str | None = None, owner: dict | None = None, containers=("trainer",)) -> str:
    spec: dict = {
        "containers": [
            {
                "name": c,
                "image": "registry.invalid/training-hub:test",
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}} if gpus else {},
            }
            for c in containers
        ],
        "restartPolicy": "Never",
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    metadata: dict = {"name": name}
    if owner:
        metadata["ownerReferences"] = [owner]
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})


def _is_running(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") == "Running"


def _condition(pod: dict, kind: str) -> dict:
    return next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def _wait_gone(cluster: KwokCluster, *args: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while cluster.kubectl("get", *args, "--ignore-not-found", "-o", "name").stdout.strip():
        assert time.monotonic() < deadline, f"{' '.join(args)} still exists after {timeout}s"
        time.sleep(0.5)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_api_server_and_kubectl_report_the_pinned_kubernetes_version(cluster: KwokCluster):
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    pinned = _pinned_versions()["kubernetes"]
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_scheduler_and_controller_manager_are_running(cluster: KwokCluster):
    # Both hold their leader leases while alive.
    leases = cluster.kubectl_json("get", "leases", "-n", "kube-system")["items"]
    names = {lease["metadata"]["name"] for lease in leases}
    assert {"kube-scheduler", "kube-controller-manager"} <= names


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_default_nodes_are_ready_with_eight_gpus_each(cluster: KwokCluster):
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    for i in range(kwok_cluster.DEFAULT_NODE_COUNT):
        node = nodes[f"gpu-node-{i}"]
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["status"]["capacity"][GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == kwok_cluster.DEFAULT_GPU_PRODUCT
        assert _condition(node, "Ready").get("status") == "True"


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_scheduler_places_pods_by_gpu_limits(cluster: KwokCluster, namespace: str):
    # A node of this test's own, so pods of other tests can't take its GPUs.
    [node] = cluster.create_gpu_nodes(count=1, prefix=f"sched-{secrets.token_hex(3)}")
    try:
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("fits", gpus=8, node=node))
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("too-big", gpus=9))
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("no-room-left", gpus=1, node=node))

        fits = cluster.wait_for_pod(namespace, "fits", _is_running)
        assert fits["spec"]["nodeName"] == node

        for name in ("too-big", "no-room-left"):
            pending = cluster.wait_for_pod(namespace, name, lambda p: _condition(p, "PodScheduled").get("status") == "False")
            scheduled = _condition(pending, "PodScheduled")
            assert scheduled["reason"] == "Unschedulable"
            assert f"Insufficient {GPU_RESOURCE}" in scheduled["message"]
            assert pending["status"]["phase"] == "Pending"
            assert not pending["spec"].get("nodeName")
    finally:
        cluster.kubectl("delete", "node", node, "--wait=false")


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_garbage_collector_deletes_pods_of_a_deleted_owner(cluster: KwokCluster, namespace: str):
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "blockOwnerDeletion": True}
    for name in ("owned-0", "owned-1"):
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod(name, owner=owner))
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("unowned"))
    cluster.wait_for_pod(namespace, "owned-0", _is_running)

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    _wait_gone(cluster, "pod", "owned-0", "owned-1", "-n", namespace)
    assert cluster.kubectl("get", "pod", "unowned", "-n", namespace, "-o", "name").stdout.strip() == "pod/unowned"


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_namespace_deletion_removes_its_pods(cluster: KwokCluster):
    name = cluster.create_namespace(f"doomed-{secrets.token_hex(3)}")
    cluster.kubectl("create", "-n", name, "-f", "-", input=_pod("victim", gpus=1))
    cluster.wait_for_pod(name, "victim", _is_running)

    cluster.kubectl("delete", "namespace", name, "--wait=false")

    _wait_gone(cluster, "namespace", name, timeout=120)


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.training-hub.io"},
    "spec": {
        "group": "test.training-hub.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["gpus"],
                                "properties": {"gpus": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_crd_applied_with_kubectl_is_served_and_validated(cluster: KwokCluster, namespace: str):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.test.training-hub.io")

    def widget(gpus) -> str:
        return json.dumps(
            {"apiVersion": "test.training-hub.io/v1", "kind": "Widget", "metadata": {"name": f"w{gpus}"}, "spec": {"gpus": gpus}}
        )

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget(8))
    served = cluster.kubectl_json("get", "widgets.test.training-hub.io", "w8", "-n", namespace)
    assert served["spec"] == {"gpus": 8}

    rejected = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget(0), check=False)
    assert rejected.returncode != 0
    assert "spec.gpus" in rejected.stderr


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_set_pod_terminated_is_seen_through_the_api_and_sticks(cluster: KwokCluster, namespace: str):
    from kubernetes import client

    cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("oom", gpus=1))
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("done", gpus=1, containers=("trainer", "sidecar")))
    cluster.wait_for_pod(namespace, "oom", _is_running)
    cluster.wait_for_pod(namespace, "done", _is_running)

    cluster.set_pod_terminated(namespace, "oom", 137, reason="OOMKilled", message="rank 0 ran out of memory")
    cluster.set_pod_terminated(namespace, "done", 0, message='{"outcome": "succeeded"}')  # a success summary
    time.sleep(3)  # give kwok's stages a chance to fight the patch

    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        oom = core.read_namespaced_pod("oom", namespace)
        done = core.read_namespaced_pod("done", namespace)
    assert oom.status.phase == "Failed"
    [state] = [s.state.terminated for s in oom.status.container_statuses]
    assert (state.exit_code, state.reason, state.message) == (137, "OOMKilled", "rank 0 ran out of memory")
    assert done.status.phase == "Succeeded"
    assert sorted((s.name, s.state.terminated.exit_code, s.state.terminated.message) for s in done.status.container_statuses) == [
        ("sidecar", 0, '{"outcome": "succeeded"}'),
        ("trainer", 0, '{"outcome": "succeeded"}'),
    ]


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_set_pod_terminated_with_one_failing_container_fails_the_pod(cluster: KwokCluster, namespace: str):
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("mixed", containers=("trainer", "sidecar")))
    cluster.wait_for_pod(namespace, "mixed", _is_running)

    cluster.set_pod_terminated(namespace, "mixed", {"trainer": 1}, message="loss is NaN")

    pod = cluster.kubectl_json("get", "pod", "mixed", "-n", namespace)
    assert pod["status"]["phase"] == "Failed"
    terminated = {s["name"]: s["state"]["terminated"] for s in pod["status"]["containerStatuses"]}
    assert terminated["trainer"]["exitCode"] == 1
    assert terminated["trainer"]["reason"] == "Error"
    assert terminated["trainer"]["message"] == "loss is NaN"
    assert terminated["sidecar"]["exitCode"] == 0
    assert "message" not in terminated["sidecar"]  # not named in exit_code: it wrote nothing
    with pytest.raises(ValueError, match="nope"):
        cluster.set_pod_terminated(namespace, "mixed", {"nope": 1})


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_set_pod_running_marks_containers_ready_and_terminated_pods_stay_terminated(
    cluster: KwokCluster, namespace: str
):
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("flip"))
    cluster.wait_for_pod(namespace, "flip", _is_running)

    cluster.set_pod_running(namespace, "flip")
    pod = cluster.kubectl_json("get", "pod", "flip", "-n", namespace)
    assert pod["status"]["phase"] == "Running"
    [status] = pod["status"]["containerStatuses"]
    assert status["containerID"] == "kwok://flip-trainer"  # ours, not kwok's
    assert status["ready"] is True and "running" in status["state"]
    assert _condition(pod, "Ready")["status"] == "True"

    # As with a real kubelet, the API server refuses to bring a terminated container back.
    cluster.set_pod_terminated(namespace, "flip", 2)
    with pytest.raises(kwok_cluster.KubectlError, match="may not be transitioned to non-terminated state"):
        cluster.set_pod_running(namespace, "flip")


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_set_pod_log_is_served_by_the_api_server(cluster: KwokCluster, namespace: str):
    from kubernetes import client

    cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("talker", containers=("trainer", "sidecar")))
    cluster.wait_for_pod(namespace, "talker", _is_running)

    cluster.set_pod_log(namespace, "talker", "step 1/10 loss=2.5\nstep 2/10 loss=2.1\n")
    cluster.set_pod_log(namespace, "talker", "sidecar says hi\n", container="sidecar")

    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        assert core.read_namespaced_pod_log("talker", namespace, container="trainer") == (
            "step 1/10 loss=2.5\nstep 2/10 loss=2.1\n"
        )
        assert core.read_namespaced_pod_log("talker", namespace, container="sidecar") == "sidecar says hi\n"

        cluster.set_pod_log(namespace, "talker", "step 10/10 loss=0.9\n")  # the log moves on
        assert core.read_namespaced_pod_log("talker", namespace, container="trainer") == "step 10/10 loss=0.9\n"
        assert core.read_namespaced_pod_log("talker", namespace, container="trainer", tail_lines=1) == (
            "step 10/10 loss=0.9\n"
        )
    assert cluster.kubectl("logs", "-n", namespace, "talker", "-c", "sidecar").stdout == "sidecar says hi\n"


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_delete_pod_node_removes_the_node(cluster: KwokCluster, namespace: str):
    [node] = cluster.create_gpu_nodes(count=1, prefix=f"doomed-{secrets.token_hex(3)}")
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod("stranded", gpus=8, node=node))
    cluster.wait_for_pod(namespace, "stranded", _is_running)

    assert cluster.delete_pod_node(namespace, "stranded") == node

    _wait_gone(cluster, "node", node)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_helm_of_the_pinned_version_installs_a_chart(cluster: KwokCluster, namespace: str, tmp_path: Path):
    helm = str(cluster.bin_dir / "helm")
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith(_pinned_versions()["helm"])
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  greeting: {{ .Values.greeting }}\n"
    )

    subprocess.run(
        [helm, "install", "demo", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait", "--timeout", "60s"],
        capture_output=True, text=True, check=True, env=cluster.env, timeout=120,
    )

    assert cluster.kubectl("get", "configmap", "demo-cm", "-n", namespace, "-o", "jsonpath={.data.greeting}").stdout == "hi"


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_down_leaves_no_process_behind(k8s_bin_dir: Path):
    name = f"th-down-{os.getpid()}"
    second = kwok_cluster.start_cluster(name, k8s_bin_dir, nodes=1)
    try:
        pids = second.pids()
        # etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
        assert len(pids) >= 5, pids
        assert second.kubectl("get", "node", "gpu-node-0", "-o", "name").stdout.strip() == "node/gpu-node-0"
    finally:
        kwok_cluster.stop_cluster(name, k8s_bin_dir)
    assert not [pid for pid in pids if kwok_cluster._alive(pid)]
    assert not second.workdir.exists()


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_down_ends_every_process_even_when_kwokctl_lost_track_of_them(k8s_bin_dir: Path):
    name = f"th-lost-{os.getpid()}"
    second = kwok_cluster.start_cluster(name, k8s_bin_dir, nodes=0)
    pids = second.pids()
    try:
        assert len(pids) >= 5, pids
        shutil.rmtree(second.workdir / "pids")  # as after a crash mid-way
    finally:
        kwok_cluster.stop_cluster(name, k8s_bin_dir)
    assert not [pid for pid in pids if kwok_cluster._alive(pid)]


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_failed_start_raises_and_leaves_no_process_behind(k8s_bin_dir: Path, tmp_path: Path):
    broken = tmp_path / "bin"
    broken.mkdir()
    for binary in kwok_cluster.REQUIRED_BINARIES:
        (broken / binary).symlink_to((k8s_bin_dir / binary).resolve())
    (broken / "kube-apiserver").unlink()
    (broken / "kube-apiserver").write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo "Kubernetes v1.34.4" && exit 0\necho "no apiserver today" >&2\nexit 1\n'
    )
    (broken / "kube-apiserver").chmod(0o755)
    name = f"th-broken-{os.getpid()}"

    with pytest.raises(kwok_cluster.ControlPlaneUnavailable, match=f"kwokctl create cluster {name} failed"):
        kwok_cluster.start_cluster(name, broken, nodes=0, timeout=10, failed_logs_dir=tmp_path / "logs")

    assert "no apiserver today" in (tmp_path / "logs" / "kube-apiserver.log").read_text()
    assert not kwok_cluster._pids_mentioning(kwok_cluster.cluster_dir(name))
    assert not kwok_cluster.cluster_dir(name).exists()


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_sigterm_to_a_test_session_still_deletes_its_cluster(k8s_bin_dir: Path, tmp_path: Path):
    (tmp_path / "test_sleepy.py").write_text(
        "import time\n\ndef test_sleepy(cluster):\n    print('READY', cluster.name, flush=True)\n    time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRAINING_HUB_KUBECONFIG", "PYTEST_ADDOPTS")}
    env["TRAINING_HUB_K8S_BIN"] = str(k8s_bin_dir)
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-s", "-q",
         str(tmp_path / "test_sleepy.py")],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        for line in session.stdout:
            lines.append(line)
            if line.startswith("READY"):
                break
        assert lines and lines[-1].startswith("READY"), "".join(lines)
        name = lines[-1].split()[1]
        workdir = kwok_cluster.cluster_dir(name)
        pids = kwok_cluster._pids_mentioning(workdir)
        assert len(pids) >= 5, pids

        session.send_signal(signal.SIGTERM)
        session.wait(timeout=120)
    finally:
        if session.poll() is None:
            session.kill()

    assert not [pid for pid in pids if kwok_cluster._alive(pid)]
    assert not workdir.exists()


def test_cri_log_lines_keep_text_and_drop_only_the_final_newline():
    lines = kwok_cluster._cri_log_lines("a\n\nb c\n").splitlines()
    assert [line.split(" ", 3)[1:] for line in lines] == [["stdout", "F", "a"], ["stdout", "F", ""], ["stdout", "F", "b c"]]
