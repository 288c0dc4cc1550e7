"""GitOps on the real control plane: what Git holds (an SFTJob, the chart's manifests) can be applied again
and again with no drift, because the operator writes only the status subresource; the status follows the
kstatus conventions (observedGeneration, metav1.Condition); and the shipped Argo CD health check reads the
status the operator really writes."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.cluster.deploy_helpers import (
    CHART,
    argocd_health,
    condition,
    get_json,
    helm,
    install_crd,
    job_pods,
    operator_process,
    restricted_namespace,
    sftjob_manifest,
    wait_for,
)

pytestmark = pytest.mark.cluster

FIELD_MANAGER = "gitops-controller"  # stands in for Argo CD / Flux, which apply server-side under their own name


@pytest.fixture
def gitops_namespace(cluster, request):
    import secrets

    name = restricted_namespace(cluster, f"gitops-{secrets.token_hex(3)}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def operator(cluster, gitops_namespace, tmp_path):
    install_crd(cluster)
    log = tmp_path / "operator.log"
    with operator_process(cluster.kubeconfig, log, namespaces=[gitops_namespace]):
        yield log


def apply_server_side(cluster, namespace: str, manifest: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-n", namespace, "-f", "-",
                           input=manifest)


def diff_server_side(cluster, namespace: str, manifest: str) -> subprocess.CompletedProcess[str]:
    # kubectl diff exits 0 when nothing differs, 1 when something does, >1 on errors.
    return cluster.kubectl("diff", "--server-side", f"--field-manager={FIELD_MANAGER}", "-n", namespace, "-f", "-",
                           input=manifest, check=False)


def reconciled(cluster, namespace: str, name: str):
    job = get_json(cluster, "sftjob", "-n", namespace, name)
    status = (job or {}).get("status") or {}
    return job if status.get("phase") and status.get("observedGeneration") == job["metadata"]["generation"] else None


def kstatus_verdict(job: dict) -> tuple[str, str]:
    """The one True condition of Ready/Reconciling/Stalled and its reason (what kstatus, hence Flux, reads)."""
    trio = {t: condition(job, t) or {} for t in ("Ready", "Reconciling", "Stalled")}
    true = [t for t, c in trio.items() if c.get("status") == "True"]
    assert len(true) == 1 and all(trio.values()), trio
    assert job["status"]["observedGeneration"] == job["metadata"]["generation"]
    return true[0], trio[true[0]]["reason"]


@pytest.mark.timeout(300)
def test_sftjob_reapplied_shows_no_drift_and_the_operator_owns_only_status(cluster, gitops_namespace, operator):
    manifest = yaml.safe_dump(sftjob_manifest("gitops-job", nnodes=2))
    apply_server_side(cluster, gitops_namespace, manifest)
    apply_server_side(cluster, gitops_namespace, manifest)
    job = wait_for("the operator's status", lambda: reconciled(cluster, gitops_namespace, "gitops-job")
                   and len(job_pods(cluster, gitops_namespace, "gitops-job")) == 2
                   and reconciled(cluster, gitops_namespace, "gitops-job"), timeout=120, log_path=operator)
    assert job["metadata"]["generation"] == 1

    diff = diff_server_side(cluster, gitops_namespace, manifest)
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr
    apply_server_side(cluster, gitops_namespace, manifest)
    after = get_json(cluster, "sftjob", "-n", gitops_namespace, "gitops-job", "--show-managed-fields")
    assert after["metadata"]["generation"] == 1
    assert after["spec"] == job["spec"]

    # Field ownership: the GitOps manager owns spec; every other manager (the operator) only the status subresource.
    managers = after["metadata"]["managedFields"]
    assert {e["manager"] for e in managers if e.get("subresource") == "status"}, "the operator wrote no status"
    for entry in managers:
        fields = entry.get("fieldsV1", {})
        if entry["manager"] == FIELD_MANAGER:
            assert "f:spec" in fields and entry.get("subresource") is None
        else:
            assert entry.get("subresource") == "status", entry
            assert "f:spec" not in fields


@pytest.mark.timeout(300)
def test_status_follows_kstatus_conventions_across_a_spec_change(cluster, gitops_namespace, operator):
    manifest = sftjob_manifest("kstatus-job", nnodes=1)
    apply_server_side(cluster, gitops_namespace, yaml.safe_dump(manifest))
    job = wait_for("the operator's status", lambda: reconciled(cluster, gitops_namespace, "kstatus-job"),
                   timeout=120, log_path=operator)

    def check_conditions(job: dict) -> None:
        generation = job["metadata"]["generation"]
        conditions = job["status"]["conditions"]
        assert conditions and len({c["type"] for c in conditions}) == len(conditions)
        for c in conditions:
            assert c["status"] in ("True", "False", "Unknown")
            assert c["reason"][:1].isupper() and " " not in c["reason"]
            assert c["lastTransitionTime"].endswith("Z")
            assert c["observedGeneration"] <= generation

    check_conditions(job)
    assert argocd_health(job)["status"] == "Progressing"

    manifest["spec"]["backoffLimit"] = 5  # a field that may change while the job runs
    apply_server_side(cluster, gitops_namespace, yaml.safe_dump(manifest))
    edited = get_json(cluster, "sftjob", "-n", gitops_namespace, "kstatus-job")
    assert edited["metadata"]["generation"] == 2
    job = wait_for("status of generation 2", lambda: reconciled(cluster, gitops_namespace, "kstatus-job"),
                   timeout=120, log_path=operator)
    assert job["status"]["observedGeneration"] == 2
    check_conditions(job)


@pytest.mark.timeout(300)
def test_argocd_health_of_the_live_status_through_a_run(cluster, gitops_namespace, operator):
    name = "argo-job"
    apply_server_side(cluster, gitops_namespace, yaml.safe_dump(sftjob_manifest(name, nnodes=2)))
    running = wait_for("Running", lambda: (j := get_json(cluster, "sftjob", "-n", gitops_namespace, name))
                       and (j.get("status") or {}).get("phase") == "Running" and j, timeout=120, log_path=operator)
    health = argocd_health(running)
    assert health["status"] == "Progressing" and "nodes ready 2/2" in health["message"]
    assert kstatus_verdict(running) == ("Ready", "GangRunning")  # kstatus: Current, as for a running batch/v1 Job

    for pod in job_pods(cluster, gitops_namespace, name):
        cluster.set_pod_terminated(gitops_namespace, pod["metadata"]["name"], 0)
    done = wait_for("Succeeded", lambda: (j := get_json(cluster, "sftjob", "-n", gitops_namespace, name))
                    and (condition(j, "Succeeded") or {}).get("status") == "True" and j, timeout=120, log_path=operator)
    assert argocd_health(done)["status"] == "Healthy"
    assert kstatus_verdict(done) == ("Ready", "Succeeded")


@pytest.mark.timeout(300)
def test_failed_job_is_stalled_for_kstatus_and_degraded_for_argocd(cluster, gitops_namespace, operator):
    name = "stalled-job"
    apply_server_side(cluster, gitops_namespace, yaml.safe_dump(sftjob_manifest(name, nnodes=1)))
    wait_for("Running", lambda: (j := get_json(cluster, "sftjob", "-n", gitops_namespace, name))
             and (j.get("status") or {}).get("phase") == "Running", timeout=120, log_path=operator)
    summary = {"outcome": "invalid_config", "message": "maxTokensPerGpu must be >= maxSeqLen"}
    cluster.set_pod_terminated(gitops_namespace, f"{name}-node-0", 78, message=json.dumps(summary))
    failed = wait_for("Failed", lambda: (j := reconciled(cluster, gitops_namespace, name))
                      and j["status"]["phase"] == "Failed" and j, timeout=120, log_path=operator)
    assert kstatus_verdict(failed) == ("Stalled", "InvalidConfig")
    assert condition(failed, "Stalled")["message"] == "maxTokensPerGpu must be >= maxSeqLen"
    assert argocd_health(failed)["status"] == "Degraded"


@pytest.mark.timeout(300)
def test_suspended_job_is_suspended_for_argocd(cluster, gitops_namespace, operator):
    name = "argo-suspended"
    apply_server_side(cluster, gitops_namespace, yaml.safe_dump(sftjob_manifest(name, nnodes=2, suspend=True)))
    job = wait_for("Suspended", lambda: (j := reconciled(cluster, gitops_namespace, name))
                   and j["status"]["phase"] == "Suspended" and j, timeout=120, log_path=operator)
    assert job_pods(cluster, gitops_namespace, name) == []
    assert argocd_health(job)["status"] == "Suspended"
    assert kstatus_verdict(job) == ("Ready", "Suspended")


@pytest.mark.timeout(300)
def test_chart_manifests_reapply_without_drift(cluster, gitops_namespace):
    """What Argo CD does with a chart: `helm template` (CRDs included), then server-side apply, repeatedly."""
    rendered = helm(cluster, "template", "gitops", str(CHART), "--namespace", gitops_namespace, "--include-crds",
                    "--set", "rbac.scope=namespaced", "--set", "watchNamespaces={" + gitops_namespace + "}").stdout
    apply_server_side(cluster, gitops_namespace, rendered)
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    refs = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects]

    def versions() -> dict:
        found = {}
        for kind, name, namespace in refs:
            scope = ["-n", namespace] if namespace else []
            found[(kind, name)] = get_json(cluster, kind, name, *scope)["metadata"]["resourceVersion"]
        return found

    before = versions()
    apply_server_side(cluster, gitops_namespace, rendered)
    assert versions() == before  # a no-op: nothing rewritten
    diff = diff_server_side(cluster, gitops_namespace, rendered)
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr
