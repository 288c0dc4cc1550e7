"""Every example is a complete SFTJob the real API server accepts, and the pods the operator renders for it
are admitted where Pod Security enforces `restricted`. The README's run command (hack/demo.sh) works:
it brings the main job (4 nodes x 8 GPUs) up on a fresh cluster, is idempotent, and tears down."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.cluster.deploy_helpers import EXAMPLES_DIR, OPERATOR_CLI, REPO, get_json, install_crd, restricted_namespace
from tests.support import kwok_cluster

pytestmark = pytest.mark.cluster

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def crd(cluster):
    install_crd(cluster)
    return cluster


@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_accepted_and_stored_as_written(crd, namespace, example):
    manifest = yaml.safe_load(example.read_text())
    crd.kubectl("apply", "--server-side", "--validate=strict", "-n", namespace, "-f", str(example))
    stored = get_json(crd, "sftjob", "-n", namespace, manifest["metadata"]["name"])
    # Nothing the example says was pruned or changed (the API server only adds defaults).
    assert missing_or_changed(stored["spec"], manifest["spec"], "spec") == []
    assert stored["metadata"].get("labels", {}) == manifest["metadata"].get("labels", {})


def missing_or_changed(stored, written, path: str) -> list[str]:
    """Where `stored` does not hold everything `written` says (extra defaulted keys are fine)."""
    if isinstance(written, dict):
        if not isinstance(stored, dict):
            return [path]
        return [p for key, value in written.items() for p in missing_or_changed(stored.get(key), value, f"{path}.{key}")]
    if isinstance(written, list):
        if not isinstance(stored, list) or len(stored) != len(written):
            return [path]
        return [p for i, (s, w) in enumerate(zip(stored, written)) for p in missing_or_changed(s, w, f"{path}[{i}]")]
    return [] if stored == written else [f"{path}: {stored!r} != {written!r}"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_pods_pass_restricted_pod_security(crd, example):
    import secrets

    namespace = restricted_namespace(crd, f"psa-{example.stem[:40]}-{secrets.token_hex(2)}")
    try:
        rendered = subprocess.run(
            [str(OPERATOR_CLI), "render", "-f", str(example), "-n", namespace],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        result = crd.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered, check=False)
        assert result.returncode == 0, result.stderr
        assert "PodSecurity" not in result.stderr, result.stderr  # not even a warning
        spec = yaml.safe_load(example.read_text())["spec"]
        prepare_pod = spec.get("mode", "Train") == "Train" and (spec.get("prepare") or {}).get("enabled", True)
        assert result.stdout.count("pod/") == spec.get("nnodes", 1) + prepare_pod  # the gang, and its prepare pod
    finally:
        crd.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_command_runs_the_main_job_and_is_idempotent(k8s_bin_dir, tmp_path):
    name = f"th-demo-{os.getpid()}"
    env = {
        **os.environ,
        "TRAINING_HUB_DEMO_CLUSTER": name,
        # hack/test.sh bootstrapped the venv this test runs in; the demo's own bootstrap step is exercised by CI's run.
        "TRAINING_HUB_DEMO_SKIP_BOOTSTRAP": "1",
        "PATH": f"{k8s_bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("KUBECONFIG", None)

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(REPO / "hack" / "demo.sh"), *args], capture_output=True, text=True,
                              timeout=420, env=env, cwd=REPO)

    try:
        first = demo()
        assert first.returncode == 0, first.stdout + first.stderr
        job = yaml.safe_load((REPO / "examples" / "sftjob-multi-node.yaml").read_text())["metadata"]["name"]
        table = first.stdout
        assert f"sftjob.training-hub.io/{job}" in table and "Running" in table
        pod_lines = [line for line in table.splitlines() if line.startswith(f"pod/{job}-node-")]
        assert len(pod_lines) == 4
        assert len({line.split()[6] for line in pod_lines}) == 4, "one pod per node"  # -o wide: NODE column
        assert f"service/{job}" in table
        assert "bash hack/demo.sh down" in first.stderr

        cluster = kwok_cluster.KwokCluster(
            kubeconfig=str(kwok_cluster.cluster_dir(name) / "kubeconfig.yaml"), bin_dir=k8s_bin_dir, name=name,
            workdir=kwok_cluster.cluster_dir(name))
        uids = {p["metadata"]["uid"] for p in cluster.kubectl_json("get", "pods", "-l", f"training-hub.io/job-name={job}")["items"]}
        second = demo()
        assert second.returncode == 0, second.stdout + second.stderr
        assert "operator already running" in second.stderr
        again = {p["metadata"]["uid"] for p in cluster.kubectl_json("get", "pods", "-l", f"training-hub.io/job-name={job}")["items"]}
        assert again == uids  # the same gang: nothing recreated
    finally:
        down = demo("down")
    assert down.returncode == 0, down.stderr
    assert not kwok_cluster.cluster_dir(name).exists()
