"""Shared fixtures: the real Kubernetes control plane (see tests/support/kwok_cluster.py).

- ``cluster`` (session): a :class:`tests.support.kwok_cluster.KwokCluster` with 4 x 8-GPU fake nodes.
- ``namespace`` (function): a fresh namespace name, deleted after the test.
- ``k8s_bin_dir`` (session): the directory with kube-apiserver, kubectl, kwokctl, helm, ...

Tests marked ``cluster`` are skipped when no binaries can be had (build them with
``hack/control-plane.sh build``; ``hack/test.sh`` does), and fail instead when
``TRAINING_HUB_REQUIRE_CLUSTER=1`` (CI). ``pytest -m "not cluster"`` never needs them.
``TRAINING_HUB_KUBECONFIG=<path>`` reuses a running cluster (e.g. ``hack/control-plane.sh up``).
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import kwok_cluster  # noqa: E402


def _cluster_required() -> bool:
    return os.environ.get("TRAINING_HUB_REQUIRE_CLUSTER", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str):
    if _cluster_required():
        pytest.fail(f"TRAINING_HUB_REQUIRE_CLUSTER is set, but {reason}", pytrace=False)
    pytest.skip(reason)


_bin_dir_lookup: tuple[Path | None, str] | None = None


def _lookup_bin_dir() -> tuple[Path | None, str]:
    global _bin_dir_lookup
    if _bin_dir_lookup is None:
        try:
            found = kwok_cluster.find_bin_dir()
            reason = "" if found else (
                "no Kubernetes control-plane binaries: run `hack/control-plane.sh build` "
                "(or `eval \"$(hack/control-plane.sh env)\"`), or set TRAINING_HUB_K8S_BIN"
            )
        except kwok_cluster.ControlPlaneUnavailable as error:
            found, reason = None, str(error)
        _bin_dir_lookup = (found, reason)
    return _bin_dir_lookup


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Covers cluster tests that start their own clusters and never ask for the `cluster` fixture.
    if item.get_closest_marker("cluster") is not None:
        bin_dir, reason = _lookup_bin_dir()
        if bin_dir is None:
            _unavailable(reason)


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    bin_dir, reason = _lookup_bin_dir()
    if bin_dir is None:
        _unavailable(reason)
    return bin_dir


@pytest.fixture(scope="session")
def cluster(k8s_bin_dir: Path):
    external = os.environ.get("TRAINING_HUB_KUBECONFIG")
    if external:
        try:
            attached = kwok_cluster.attach_cluster(external, k8s_bin_dir)
            attached.create_gpu_nodes()
        except kwok_cluster.ControlPlaneUnavailable as error:
            _unavailable(str(error))
        yield attached
        return
    name = f"th-test-{os.getpid()}"
    try:
        started = kwok_cluster.start_cluster(name, k8s_bin_dir)
    except kwok_cluster.ControlPlaneUnavailable as error:
        _unavailable(f"the test cluster did not start: {error}")
    try:
        yield started
    finally:
        kwok_cluster.stop_cluster(name, k8s_bin_dir)


@pytest.fixture
def namespace(cluster: kwok_cluster.KwokCluster, request: pytest.FixtureRequest):
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    name = cluster.create_namespace(f"{slug}-{secrets.token_hex(3)}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
