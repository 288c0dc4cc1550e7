"""Fixtures shared by the operator's cluster tests."""

from __future__ import annotations

import json
import re
import secrets

import pytest

from tests.cluster.deploy_helpers import install_crd
from tests.cluster.operator_harness import KubeletEndsDeletedPods, create_pool, wait_until
from tests.support import kueue as kueue_support


@pytest.fixture(scope="module")
def operator_pool(cluster):
    """The CRD installed and the operator tests' own tainted pool of fake GPU nodes (idempotent)."""
    install_crd(cluster)
    create_pool(cluster)
    return cluster


@pytest.fixture
def kueue_namespace(kueue: kueue_support.Kueue, cluster, request: pytest.FixtureRequest):
    """A namespace Kueue manages, with the LocalQueue `gpu-queue` on a ClusterQueue (named after the namespace) of 16
    GPUs that serves only it. At the end its pods are ended as their kubelets would (Kueue's finalizer keeps a deleted
    pod until then), so none keeps GPUs of the shared node pool."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    name = cluster.create_namespace(f"{slug}-{secrets.token_hex(3)}", labels={kueue_support.MANAGED_NAMESPACE_LABEL: "true"})
    kueue.create_queues(name)
    yield name
    with KubeletEndsDeletedPods(cluster, name):
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

        def pods_left():
            result = cluster.kubectl("get", "pods", "-n", name, "-o", "json", check=False)
            return json.loads(result.stdout)["items"] if result.returncode == 0 else []

        try:
            wait_until(lambda: not pods_left(), 60, f"pods of {name} gone")
        except AssertionError:  # reported by the test that left them; free the pool for the next ones
            for pod in pods_left():
                cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", name, "--type=merge",
                                "-p", '{"metadata":{"finalizers":null}}', check=False)
    kueue.delete_queues(name)

