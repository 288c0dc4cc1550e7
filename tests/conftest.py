"""Shared fixtures: the real Kubernetes control plane (see tests/support/kwok_cluster.py).

- ``cluster`` (session): a :class:`tests.support.kwok_cluster.KwokCluster` with 4 x 8-GPU fake nodes.
- ``namespace`` (function): a fresh namespace name, deleted after the test.
- ``k8s_bin_dir`` (session): the directory with kube-apiserver, kubectl, kwokctl, helm, ...
- ``audited_cluster`` (session): a cluster of its own whose API server writes an audit log (``.audit_log``;
  tests/support/audit_log.py counts requests in it), started on first use. The session cluster writes none.
- ``kueue`` (session): real Kueue beside the session cluster (tests/support/kueue.py), started on first use;
  ``kueue_namespace`` (function, tests/cluster/conftest.py): a namespace Kueue manages, with a LocalQueue
  ``gpu-queue`` on a ClusterQueue of 16 GPUs of its own. Tests using them carry ``@pytest.mark.kueue`` (skipped
  without a Kueue build, failed in CI).

Tests marked ``cluster`` are skipped when no binaries can be had (build them with
``hack/control-plane.sh build``; ``hack/test.sh`` does), and fail instead when
``TRAINING_HUB_REQUIRE_CLUSTER=1`` (CI). ``pytest -m "not cluster"`` never needs them.
``TRAINING_HUB_KUBECONFIG=<path>`` reuses a running cluster (e.g. ``hack/control-plane.sh up``).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import images, kwok_cluster, real_nodes  # noqa: E402
from tests.support import kueue as kueue_support  # noqa: E402


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


def _real_nodes_required() -> bool:
    return os.environ.get("TRAINING_HUB_REQUIRE_REAL_NODES", "").strip().lower() not in ("", "0", "false", "no")


_real_node_lookup: list[str] | None = None


def _missing_for_real_nodes() -> list[str]:
    global _real_node_lookup
    if _real_node_lookup is None:
        _real_node_lookup = real_nodes.missing_prerequisites()
    return _real_node_lookup


def _real_nodes_unavailable(reason: str):
    if _real_nodes_required():
        pytest.fail(f"TRAINING_HUB_REQUIRE_REAL_NODES is set, but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Covers cluster tests that start their own clusters and never ask for the `cluster` fixture.
    if item.get_closest_marker("cluster") is not None or item.get_closest_marker("realnode") is not None \
            or item.get_closest_marker("kueue") is not None:
        bin_dir, reason = _lookup_bin_dir()
        if bin_dir is None:
            _unavailable(reason)
    if item.get_closest_marker("realnode") is not None:
        missing = _missing_for_real_nodes()
        if missing:
            _real_nodes_unavailable("real nodes need " + "; ".join(missing))
    if item.get_closest_marker("kueue") is not None and kueue_support.find_kueue_dir() is None:
        _unavailable("Kueue is not built: run `hack/control-plane.sh kueue-build` (hack/test.sh does), or set TRAINING_HUB_KUEUE_DIR")


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    bin_dir, reason = _lookup_bin_dir()
    if bin_dir is None:
        _unavailable(reason)
    return bin_dir


SESSION_CLUSTER_PREFIX = "th-test-"
REAL_CLUSTER_PREFIX = "th-real-"
# Clusters named <prefix><pid> by test sessions and tests; those of dead processes are removed.
LEFTOVER_CLUSTER_PREFIXES = (
    SESSION_CLUSTER_PREFIX, "th-down-", "th-lost-", "th-broken-", "th-sigterm-", "th-helm-", "th-demo-", "th-outage-",
    REAL_CLUSTER_PREFIX, "th-rdown-", "th-faults-", "th-audit-",
)


def _stop_on_sigterm() -> None:
    # `timeout` and CI stop runs with SIGTERM, which would skip pytest's teardown and leave the
    # cluster running; as KeyboardInterrupt, pytest still runs pytest_sessionfinish.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


class _SessionCluster:
    """Started before the first test runs (so no test's timeout pays for it), stopped at session end."""

    cluster: kwok_cluster.KwokCluster | None = None
    error: str | None = None
    owned_name: str | None = None

    @classmethod
    def start(cls) -> None:
        if cls.cluster is not None or cls.error is not None:
            return
        bin_dir, reason = _lookup_bin_dir()
        if bin_dir is None:
            cls.error = reason
            return
        external = os.environ.get("TRAINING_HUB_KUBECONFIG")
        try:
            if external:
                cls.cluster = kwok_cluster.attach_cluster(external, bin_dir)
                cls.cluster.create_gpu_nodes()
            else:
                for prefix in LEFTOVER_CLUSTER_PREFIXES:
                    kwok_cluster.stop_clusters_of_dead_processes(prefix)
                cls.owned_name = f"{SESSION_CLUSTER_PREFIX}{os.getpid()}"
                _stop_on_sigterm()
                cls.cluster = _start_with_one_retry(cls.owned_name, bin_dir)
        except (kwok_cluster.ControlPlaneUnavailable, OSError, subprocess.SubprocessError) as error:
            cls.cluster, cls.error = None, f"the test cluster did not start: {error}"

    @classmethod
    def stop(cls) -> None:
        if cls.owned_name is not None:
            kwok_cluster.stop_cluster(cls.owned_name, _lookup_bin_dir()[0])
            cls.owned_name = cls.cluster = None


def _start_with_one_retry(name: str, bin_dir: Path, **options) -> kwok_cluster.KwokCluster:
    # On a loaded 2-core machine a start has been seen to miss its deadline once and pass at once
    # on the next try; a second failure is real and is reported with the component logs.
    try:
        return kwok_cluster.start_cluster(name, bin_dir, **options)
    except kwok_cluster.ControlPlaneUnavailable as first:
        print(f"\ntest cluster: first start failed, retrying once: {first}", file=sys.stderr)
        return kwok_cluster.start_cluster(name, bin_dir, **options)


def pytest_runtestloop(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("images") is not None for item in session.items):
        images.SessionImages.build()
    if any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        _SessionCluster.start()
    # Real nodes and the images they run, before the first test too: a cold trainer build and its first import
    # into the nodes' image store take minutes that no test's timeout should pay.
    if any("real_cluster" in getattr(item, "fixturenames", ()) for item in session.items) and not _missing_for_real_nodes():
        images.SessionImages.build()
        bin_dir, _ = _lookup_bin_dir()
        if bin_dir is not None:
            _RealCluster.start(bin_dir)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _SessionCluster.stop()
    _RealCluster.stop()


class _RealCluster:
    """A cluster of its own with 2 real kubelet nodes beside 1 fake node (tests marked ``realnode``): real pods
    must never land among the session cluster's fake-node tests. Started on first use, stopped at session end."""

    cluster: kwok_cluster.KwokCluster | None = None
    error: str | None = None
    owned_name: str | None = None
    missing_images: dict[str, str] = {}
    images: dict[str, str] = {}  # operator/trainer -> the image name its archive carries
    REAL_NODES = 2

    @classmethod
    def start(cls, bin_dir: Path) -> None:
        if cls.cluster is not None or cls.error is not None:
            return
        kwok_cluster.stop_clusters_of_dead_processes(REAL_CLUSTER_PREFIX)
        cls.owned_name = f"{REAL_CLUSTER_PREFIX}{os.getpid()}"
        _stop_on_sigterm()
        # The project's images go into the nodes' shared image store once (tests needing a missing one skip or,
        # in CI, fail naming it).
        archives = []
        for image in real_nodes.PROJECT_IMAGES:
            archive, why_not = real_nodes.project_image_archive(image)
            if archive is None:
                cls.missing_images[image] = why_not
            else:
                archives.append(archive)
                cls.images[image] = real_nodes.archive_image_ref(archive)
        try:
            cluster = _start_with_one_retry(cls.owned_name, bin_dir, nodes=1)
            cluster.add_real_nodes(cls.REAL_NODES, archives=archives)
            cls.cluster = cluster
        except (kwok_cluster.ControlPlaneUnavailable, real_nodes.RealNodesUnavailable, OSError,
                subprocess.SubprocessError) as error:
            cls.error = f"the real-node cluster did not start: {error}"
            cls.stop()

    @classmethod
    def stop(cls) -> None:
        if cls.owned_name is not None:
            kwok_cluster.stop_cluster(cls.owned_name, _lookup_bin_dir()[0])
            cls.owned_name = cls.cluster = None


@pytest.fixture(scope="session")
def real_cluster(k8s_bin_dir: Path) -> kwok_cluster.KwokCluster:
    """A cluster with 2 real nodes (``.real_nodes``: names, images, ctr) and 1 fake GPU node; see real_nodes.py."""
    missing = _missing_for_real_nodes()
    if missing:
        _real_nodes_unavailable("real nodes need " + "; ".join(missing))
    _RealCluster.start(k8s_bin_dir)
    if _RealCluster.cluster is None:
        _real_nodes_unavailable(_RealCluster.error or "the real-node cluster did not start")
    return _RealCluster.cluster


@pytest.fixture(scope="session")
def real_images(real_cluster) -> dict[str, str]:
    """The project's operator and trainer image names, present on every real node (hack/images.sh builds them)."""
    if _RealCluster.missing_images:
        reason = "real-node tests need " + "; ".join(_RealCluster.missing_images.values())
        if not (Path(__file__).resolve().parent.parent / "hack" / "images.sh").exists():
            pytest.skip(reason)  # no way to build images in this checkout: nothing CI could require
        _real_nodes_unavailable(reason)
    return dict(_RealCluster.images)


@pytest.fixture(scope="session")
def cluster(k8s_bin_dir: Path) -> kwok_cluster.KwokCluster:
    _SessionCluster.start()  # normally done already, before the first test
    if _SessionCluster.cluster is None:
        _unavailable(_SessionCluster.error or "the test cluster did not start")
    return _SessionCluster.cluster


@pytest.fixture(scope="session")
def audited_cluster(k8s_bin_dir: Path):
    """A cluster whose API server writes an audit log: for tests that count API requests (tests/support/audit_log.py).
    Its own, not the session's: every request on the shared one would pay for the log line."""
    name = f"th-audit-{os.getpid()}"
    try:
        own = _start_with_one_retry(name, k8s_bin_dir, audit=True)
    except kwok_cluster.ControlPlaneUnavailable as error:
        _unavailable(f"the audited cluster did not start: {error}")
    try:
        yield own
    finally:
        kwok_cluster.stop_cluster(name, k8s_bin_dir)


@pytest.fixture
def namespace(cluster: kwok_cluster.KwokCluster, request: pytest.FixtureRequest):
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    name = cluster.create_namespace(f"{slug}-{secrets.token_hex(3)}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def kueue(cluster: kwok_cluster.KwokCluster, tmp_path_factory: pytest.TempPathFactory):
    kueue_dir = kueue_support.find_kueue_dir()
    if kueue_dir is None:
        _unavailable("Kueue is not built: run `hack/control-plane.sh kueue-build`")
    # Under the cluster's folder: stopping the cluster also ends a Kueue left by a killed session.
    workdir = (cluster.workdir / "kueue") if cluster.workdir else tmp_path_factory.mktemp("kueue")
    try:
        running = kueue_support.start_kueue(cluster, kueue_dir, workdir)
    except (kueue_support.KueueUnavailable, subprocess.SubprocessError) as error:
        _unavailable(f"Kueue did not start: {error}")
    print(f"\nkueue: ready in {running.started_in_s:.1f} s", file=sys.stderr)
    yield running
    running.stop()
