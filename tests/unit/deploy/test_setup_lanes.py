"""hack/test.sh's set-up: the real nodes' image store seeded from the I/O lane, and the Go module prefetch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import real_nodes

REPO = Path(__file__).resolve().parents[3]


def test_seeding_names_every_missing_tool_and_builds_nothing(monkeypatch):
    monkeypatch.setattr(real_nodes.shutil, "which", lambda tool: None if tool in ("ctr", "runc") else f"/usr/bin/{tool}")
    monkeypatch.setattr(real_nodes, "project_image_archive", lambda name: pytest.fail("built an image anyway"))
    with pytest.raises(real_nodes.RealNodesUnavailable) as error:
        real_nodes.seed_project_images()
    assert "ctr (apt-get install containerd)" in str(error.value)
    assert "runc (apt-get install runc)" in str(error.value)


def test_seeding_stops_at_the_first_image_that_cannot_be_had(monkeypatch, tmp_path):
    monkeypatch.setattr(real_nodes.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(real_nodes.os, "geteuid", lambda: 0)
    monkeypatch.setattr(real_nodes, "project_image_archive",
                        lambda name: (None, f"the {name} image (bash hack/images.sh archive {name} failed: boom)"))
    monkeypatch.setattr(real_nodes, "seed_image_store", lambda archives: pytest.fail("imported without archives"))
    with pytest.raises(real_nodes.RealNodesUnavailable, match="the operator image .*boom"):
        real_nodes.seed_project_images()


def test_seed_command_line_says_its_usage():
    result = subprocess.run([sys.executable, str(REPO / "tests/support/real_nodes.py"), "seed"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "usage: python3 tests/support/real_nodes.py seed-images" in result.stderr


def test_prefetch_is_a_documented_command_and_does_nothing_when_every_binary_is_cached(tmp_path):
    help_text = subprocess.run(["bash", str(REPO / "hack/control-plane.sh"), "help"], capture_output=True, text=True,
                               timeout=60).stderr
    assert "hack/control-plane.sh prefetch" in help_text
    assert "TRAINING_HUB_CACHE" in help_text  # the whole header, env included, is printed
    # Every binary present in a fake cache: nothing to download, so no Go process and no network.
    script = (REPO / "hack/control-plane.sh").read_text()
    version = lambda name: script.split(f"\n{name}=", 1)[1].split("\n", 1)[0]  # noqa: E731
    bins = tmp_path / "bin"
    wanted = {
        f"etcd-{version('ETCD_VERSION')}": ["etcd"], f"kwok-{version('KWOK_VERSION')}": ["kwok", "kwokctl"],
        f"helm-{version('HELM_VERSION')}-k8s{version('HELM_K8S_MAJOR')}.{version('HELM_K8S_MINOR')}": ["helm"],
        f"kueue-{version('KUEUE_VERSION')}": ["kueue"], f"coredns-{version('COREDNS_VERSION')}": ["coredns"],
        f"training-operator-{version('PEER_VERSION')}": ["training-operator"],
    }
    for folder, names in wanted.items():
        for name in names:
            path = bins / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
    kueue = bins / f"kueue-{version('KUEUE_VERSION')}"
    (kueue / "webhook-manifests.yaml").write_text("")
    (kueue / "crds").mkdir()
    (kueue / "crds" / "kueue.x-k8s.io_workloads.yaml").write_text("")
    peer = bins / f"training-operator-{version('PEER_VERSION')}"
    (peer / "crds").mkdir()
    (peer / "crds" / "kubeflow.org_pytorchjobs.yaml").write_text("")
    result = subprocess.run(["bash", str(REPO / "hack/control-plane.sh"), "prefetch"], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/local/go/bin:/usr/bin:/bin", "HOME": str(tmp_path),
                                             "TRAINING_HUB_CACHE": str(tmp_path), "GOFLAGS": "-mod=mod",
                                             "GOPROXY": "off"})
    assert result.returncode == 0, result.stderr
    assert "module prefetch: nothing to download" in result.stderr
    assert "failed" not in result.stderr
