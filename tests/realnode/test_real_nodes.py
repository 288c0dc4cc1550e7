"""The harness's real kubelet nodes: they join beside kwok's fake nodes, run host-network pods for real (logs, exit
codes, termination messages come from the kubelet), give pods cluster DNS, and leave nothing behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support import kwok_cluster, real_nodes

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(600)]


def _pod(name: str, node: str, command: str, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": real_nodes.BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/busybox", "sh", "-c", command],
            }],
            **spec,
        },
    }


def _apply(cluster, namespace: str, *objects: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def _finished(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


@pytest.fixture
def real_namespace(real_cluster, request):
    name = real_cluster.create_namespace(f"rn-{request.node.name[:20].lower().replace('_', '-')}-{os.getpid() % 1000}")
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_real_nodes_join_beside_the_fake_ones_with_gpu_capacity(real_cluster):
    nodes = {n["metadata"]["name"]: n for n in real_cluster.kubectl_json("get", "nodes")["items"]}
    real = real_cluster.real_nodes.names()
    assert len(real) == 2
    for name in real:
        node = nodes[name]
        assert node["metadata"]["labels"][real_nodes.REAL_NODE_LABEL] == "real"
        assert kwok_cluster.FAKE_NODE_ANNOTATION not in (node["metadata"].get("annotations") or {})  # kwok's hands off
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        assert node["status"]["allocatable"][real_nodes.GPU_RESOURCE] == "8"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", ready
    fake = [n for n in nodes.values() if (n["metadata"].get("annotations") or {}).get(kwok_cluster.FAKE_NODE_ANNOTATION) == "fake"]
    assert fake and all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]) for n in fake)


def test_a_host_network_pod_really_runs_and_the_kubelet_reports_its_end(real_cluster, real_namespace):
    node = real_cluster.real_nodes.names()[0]
    script = "echo hello from $(hostname); echo 'the summary' > /dev/termination-log; exit 3"
    _apply(real_cluster, real_namespace, _pod("ends", node, script))
    pod = real_cluster.wait_for_pod(real_namespace, "ends", _finished, timeout=120)
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["message"].strip() == "the summary"
    assert terminated["containerID"].startswith("containerd://")
    assert pod["status"]["podIP"] == real_nodes.host_ip()  # the host's network, not a pod network
    logs = real_cluster.kubectl("logs", "-n", real_namespace, "ends").stdout
    assert logs.startswith("hello from ")


def test_a_pod_on_one_node_reaches_a_pod_on_the_other_through_a_headless_service(real_cluster, real_namespace):
    first, second = real_cluster.real_nodes.names()
    port = 31000 + os.getpid() % 1000
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "server"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "server"},
                 "ports": [{"port": port}]},
    }
    server = _pod("server", first, f"echo pong from the server | nc -l -p {port}")
    name = f"server.{real_namespace}.svc"
    client = _pod(
        "client", second,
        # busybox's nslookup takes the name as given; nc resolves through the search path, as torchrun does.
        f"for i in $(seq 60); do nslookup {name}.cluster.local && break; sleep 1; done; "
        f"for i in $(seq 30); do nc {name} {port} </dev/null && exit 0; sleep 1; done; exit 1",
    )
    _apply(real_cluster, real_namespace, service, server)
    real_cluster.wait_for_pod(real_namespace, "server", lambda p: p["status"].get("phase") == "Running", timeout=120)
    _apply(real_cluster, real_namespace, client)
    pod = real_cluster.wait_for_pod(real_namespace, "client", _finished, timeout=180)
    logs = real_cluster.kubectl("logs", "-n", real_namespace, "client").stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    assert "pong from the server" in logs
    assert f"Address: {real_nodes.host_ip()}" in logs  # the headless Service's A record: the server pod's IP
    assert pod["spec"]["nodeName"] != real_cluster.wait_for_pod(real_namespace, "server", _finished)["spec"]["nodeName"]


def test_tear_down_leaves_no_process_mount_or_cgroup(k8s_bin_dir, tmp_path):
    """Its own cluster with one real node and a running pod, then `stop_cluster`: nothing of the node remains."""
    name = f"th-rdown-{os.getpid()}"
    started = time.monotonic()
    cluster = kwok_cluster.start_cluster(name, k8s_bin_dir, nodes=0)
    try:
        cluster_up = time.monotonic() - started
        (node,) = cluster.add_real_nodes(1)
        nodes_up = time.monotonic() - started - cluster_up
        print(f"\ncluster up in {cluster_up:.1f} s; 1 real node Ready (images imported) in {nodes_up:.1f} s")
        cluster.create_namespace("td")
        _apply(cluster, "td", _pod("sleeper", node, "sleep 3600"))
        cluster.wait_for_pod("td", "sleeper", lambda p: p["status"].get("phase") == "Running", timeout=120)
        directory = cluster.real_nodes.directory
        real = cluster.real_nodes.nodes[0]
        cgroups = real_nodes.node_cgroups(real.cgroup_name)
        assert any("kubepods" in str(g) for g in cgroups)  # the pod's cgroups exist while it runs
        processes = real_nodes._pids_mentioning(directory)
        assert processes  # containerd, kubelet, shim, CoreDNS
    finally:
        kwok_cluster.stop_cluster(name, k8s_bin_dir)
    assert not any(real_nodes._alive(p) for p in processes)
    assert real_nodes.node_cgroups(real.cgroup_name) == []
    assert real_nodes.node_mounts(directory) == []
    assert not Path(directory).exists()
    assert not any((real_nodes._slot_dir()).glob("[0-9]*")) or all(
        Path(c.read_text().strip()) != cluster.workdir for c in real_nodes._slot_dir().glob("[0-9]*")
    )
