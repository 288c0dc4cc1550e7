"""The chart ships the very CRD `sftjob-operator crd` generates: a byte-identical copy in its crds/."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
GENERATED = REPO / "deploy" / "crds" / "training-hub.io_sftjobs.yaml"
CHART_COPY = REPO / "deploy" / "helm" / "training-hub-operator" / "crds" / "training-hub.io_sftjobs.yaml"
SYNC = REPO / "hack" / "sync-crd.sh"


def test_chart_crd_is_a_byte_identical_copy_of_the_generated_one():
    assert CHART_COPY.read_bytes() == GENERATED.read_bytes(), "run hack/sync-crd.sh"


def test_chart_crds_folder_holds_only_the_sftjob_crd():
    # Helm installs everything in crds/ unconditionally: only the SFTJob CRD belongs there.
    assert sorted(p.name for p in CHART_COPY.parent.iterdir()) == [CHART_COPY.name]


@pytest.mark.timeout(120)
def test_sync_script_check_mode_passes_on_the_committed_files():
    result = subprocess.run(["bash", str(SYNC), "--check"], capture_output=True, text=True, timeout=110, cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(120)
def test_sync_script_repairs_a_stale_chart_copy(tmp_path):
    # Run the script on a copy of the repository files it touches, with the chart's copy edited.
    work = tmp_path / "repo"
    for relative in ("hack/sync-crd.sh", "deploy/crds", "deploy/helm/training-hub-operator/crds"):
        source = REPO / relative
        target = work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    (work / ".venv").symlink_to(REPO / ".venv")
    stale = work / "deploy/helm/training-hub-operator/crds/training-hub.io_sftjobs.yaml"
    stale.write_text(stale.read_text().replace("description:", "description: (stale)", 1))

    check = subprocess.run(["bash", "hack/sync-crd.sh", "--check"], capture_output=True, text=True, timeout=110, cwd=work)
    assert check.returncode == 1
    assert "training-hub-operator/crds/training-hub.io_sftjobs.yaml is not what" in check.stderr

    subprocess.run(["bash", "hack/sync-crd.sh"], check=True, capture_output=True, text=True, timeout=110, cwd=work)
    assert stale.read_bytes() == GENERATED.read_bytes()
