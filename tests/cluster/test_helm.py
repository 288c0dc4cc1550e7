"""The Helm chart on the real control plane: installs in both RBAC scopes into namespaces that enforce the
`restricted` Pod Security standard; the operator, authenticated as the chart's ServiceAccount, runs an
SFTJob end to end (so the chart's RBAC suffices); a `kubectl auth can-i` matrix and a rules review show it
grants nothing beyond that (no secrets; nothing cluster-wide or outside watchNamespaces in namespaced scope).

The module starts a cluster of its own, so the chart's crds/ is what installs the CRD (no test before it
applied one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.cluster.deploy_helpers import (
    CHART,
    can_i,
    get_json,
    helm,
    job_pods,
    operator_process,
    permission_denials,
    restricted_namespace,
    rules_granted,
    run_gang_to_success,
    service_account_kubeconfig,
    sftjob_manifest,
    wait_for,
)
from tests.support import kwok_cluster

pytestmark = pytest.mark.cluster

CLUSTER_RELEASE, CLUSTER_RELEASE_NS, CLUSTER_JOBS_NS = "th-cluster", "th-op-cluster", "jobs-cluster"
NS_RELEASE, NS_RELEASE_NS = "th-ns", "th-op-ns"
WATCHED, UNWATCHED = ("jobs-ns-1", "jobs-ns-2"), "jobs-other"
LEASE = f"{NS_RELEASE}-training-hub-operator"  # the HA release's leader election Lease (in NS_RELEASE_NS)


def sa_user(release: str, release_namespace: str) -> str:
    return f"system:serviceaccount:{release_namespace}:{release}-training-hub-operator"


@pytest.fixture(scope="module")
def helm_cluster(k8s_bin_dir, request):
    if os.environ.get("TRAINING_HUB_KUBECONFIG"):  # a cluster given from outside: use it as it is
        yield request.getfixturevalue("cluster")
        return
    name = f"th-helm-{os.getpid()}"
    try:
        started = kwok_cluster.start_cluster(name, k8s_bin_dir)
    except kwok_cluster.ControlPlaneUnavailable as error:
        pytest.fail(f"the cluster for the helm tests did not start: {error}")
    try:
        yield started
    finally:
        kwok_cluster.stop_cluster(name, k8s_bin_dir)


@pytest.fixture(scope="module")
def releases(helm_cluster):
    """Two releases: cluster scope (default values), and namespaced scope with HA (2 replicas, leader election)."""
    c = helm_cluster
    for namespace in (CLUSTER_RELEASE_NS, NS_RELEASE_NS, CLUSTER_JOBS_NS, *WATCHED, UNWATCHED):
        if get_json(c, "namespace", namespace) is None:
            restricted_namespace(c, namespace)
    helm(c, "upgrade", "--install", CLUSTER_RELEASE, str(CHART), "-n", CLUSTER_RELEASE_NS, "--wait", "--timeout", "180s")
    helm(
        c, "upgrade", "--install", NS_RELEASE, str(CHART), "-n", NS_RELEASE_NS, "--wait", "--timeout", "180s",
        "--set", "rbac.scope=namespaced", "--set", "watchNamespaces={" + ",".join(WATCHED) + "}",
        "--set", "ha.enabled=true", "--set", "replicaCount=2",
    )
    return c


def release_kinds(c, release: str, namespace: str) -> list[tuple[str, str, str]]:
    manifest = helm(c, "get", "manifest", release, "-n", namespace).stdout
    return sorted(
        (doc["kind"], doc["metadata"].get("namespace", "-"), doc["metadata"]["name"])
        for doc in yaml.safe_load_all(manifest) if doc
    )


@pytest.mark.timeout(400)
def test_cluster_scope_release_installs_its_crd_and_a_ready_operator(releases):
    c = releases
    crd = get_json(c, "crd", "sftjobs.training-hub.io")
    assert crd and any(cond["type"] == "Established" and cond["status"] == "True" for cond in crd["status"]["conditions"])
    kinds = release_kinds(c, CLUSTER_RELEASE, CLUSTER_RELEASE_NS)
    assert {k for k, _, _ in kinds} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"}
    deployment = get_json(c, "deployment", "-n", CLUSTER_RELEASE_NS, f"{CLUSTER_RELEASE}-training-hub-operator")
    # Admitted and ready in a namespace enforcing `restricted` Pod Security.
    assert deployment["status"].get("readyReplicas") == 1
    service = get_json(c, "service", "-n", CLUSTER_RELEASE_NS, f"{CLUSTER_RELEASE}-training-hub-operator-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


@pytest.mark.timeout(400)
def test_namespaced_scope_ha_release_creates_nothing_cluster_wide(releases):
    c = releases
    kinds = release_kinds(c, NS_RELEASE, NS_RELEASE_NS)
    assert not [k for k, _, _ in kinds if k.startswith("Cluster") or k == "CustomResourceDefinition"]
    # A Role per watched namespace for the jobs, and one in the release namespace for the leader election Lease.
    assert sorted(ns for k, ns, _ in kinds if k == "Role") == sorted([*WATCHED, NS_RELEASE_NS])
    assert sorted(ns for k, ns, _ in kinds if k == "RoleBinding") == sorted([*WATCHED, NS_RELEASE_NS])
    assert get_json(c, "role", "-n", UNWATCHED, f"{NS_RELEASE}-training-hub-operator") is None
    deployment = get_json(c, "deployment", "-n", NS_RELEASE_NS, f"{NS_RELEASE}-training-hub-operator")
    assert deployment["status"].get("readyReplicas") == 2
    budget = get_json(c, "poddisruptionbudget", "-n", NS_RELEASE_NS, f"{NS_RELEASE}-training-hub-operator")
    assert budget["spec"]["minAvailable"] == 1
    # Admitted by the API server with the PDB: one replica may be disrupted at a time.
    assert wait_for("the PodDisruptionBudget's status", lambda: get_json(
        c, "poddisruptionbudget", "-n", NS_RELEASE_NS, f"{NS_RELEASE}-training-hub-operator")["status"].get(
        "disruptionsAllowed") == 1, timeout=60)


BAD_INSTALLS = [
    (["--set", "rbac.scope=everywhere"], "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
    (["--set", "rbac.scope=namespaced"], "watchNamespaces: list at least one namespace"),
    (["--set", "replicaCount=2"], "replicaCount: 2 replicas without ha.enabled=true"),
    (["--set", "trainer.shmSizeLimit=lots"], "at '/trainer/shmSizeLimit'"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("values, message", BAD_INSTALLS, ids=["scope", "namespaces", "replicas", "shm"])
def test_bad_values_are_refused_at_install_with_a_message(releases, values, message):
    result = helm(releases, "install", "th-bad", str(CHART), "-n", NS_RELEASE_NS, *values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "th-bad" not in helm(releases, "list", "-A", "-q").stdout


# (verb, resource, namespace or None for cluster-wide) -> allowed?  The operator's needs, and what it must not have.
JOB_PERMISSIONS = [
    ("get", "sftjobs.training-hub.io"), ("list", "sftjobs.training-hub.io"), ("watch", "sftjobs.training-hub.io"),
    ("delete", "sftjobs.training-hub.io"), ("patch", "sftjobs.training-hub.io/status"),
    ("create", "pods"), ("delete", "pods"), ("list", "pods"), ("watch", "pods"), ("get", "pods/log"),
    ("create", "services"), ("get", "services"), ("create", "configmaps"), ("get", "configmaps"),
    ("patch", "configmaps"), ("create", "events"),
]
NEVER = [
    ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "secrets"),
    ("create", "sftjobs.training-hub.io"), ("update", "sftjobs.training-hub.io"), ("patch", "sftjobs.training-hub.io"),
    ("update", "pods"), ("patch", "pods"), ("create", "pods/exec"), ("create", "pods/attach"),
    ("create", "pods/eviction"), ("delete", "services"), ("delete", "configmaps"), ("update", "configmaps"),
    ("create", "deployments.apps"), ("create", "jobs.batch"), ("create", "serviceaccounts/token"),
    ("create", "rolebindings.rbac.authorization.k8s.io"), ("escalate", "roles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"), ("create", "persistentvolumeclaims"), ("delete", "events"),
]
CLUSTER_WIDE_NEVER = [
    ("list", "nodes"), ("patch", "nodes"), ("list", "namespaces"), ("create", "namespaces"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"), ("list", "secrets"),
]


def matrix_mismatches(c, user: str, expectations: list[tuple[str, str, str | None, bool]]) -> list[str]:
    return [
        f"can-i {verb} {resource} in {namespace or 'all namespaces'}: expected {'yes' if allowed else 'no'}"
        for verb, resource, namespace, allowed in expectations
        if can_i(c, user, verb, resource, namespace) != allowed
    ]


@pytest.mark.timeout(300)
def test_can_i_matrix_cluster_scope(releases):
    user = sa_user(CLUSTER_RELEASE, CLUSTER_RELEASE_NS)
    expectations = [(v, r, ns, True) for v, r in JOB_PERMISSIONS for ns in (CLUSTER_JOBS_NS, UNWATCHED)]
    expectations += [("list", "sftjobs.training-hub.io", None, True), ("watch", "pods", None, True),
                     ("list", "customresourcedefinitions.apiextensions.k8s.io", None, True)]
    expectations += [(v, r, CLUSTER_JOBS_NS, False) for v, r in NEVER]
    expectations += [(v, r, None, False) for v, r in CLUSTER_WIDE_NEVER]
    expectations += [("create", "leases.coordination.k8s.io", CLUSTER_RELEASE_NS, False)]  # no HA in this release
    assert matrix_mismatches(releases, user, expectations) == [], "\n".join(matrix_mismatches(releases, user, expectations))


@pytest.mark.timeout(300)
def test_can_i_matrix_namespaced_scope(releases):
    user = sa_user(NS_RELEASE, NS_RELEASE_NS)
    expectations = [(v, r, ns, True) for v, r in JOB_PERMISSIONS for ns in WATCHED]
    # Nothing outside the watched namespaces: not elsewhere, not in its own namespace, not cluster-wide.
    for namespace in (UNWATCHED, NS_RELEASE_NS, "kube-system", "default"):
        expectations += [(v, r, namespace, False) for v, r in JOB_PERMISSIONS]
    expectations += [(v, r, None, False) for v, r in JOB_PERMISSIONS]
    expectations += [(v, r, ns, False) for v, r in NEVER for ns in WATCHED]
    expectations += [(v, r, None, False) for v, r in CLUSTER_WIDE_NEVER]
    expectations += [("list", "customresourcedefinitions.apiextensions.k8s.io", None, False)]
    # Leader election: create a Lease in the release namespace, then touch only the one named Lease.
    expectations += [("create", "leases.coordination.k8s.io", NS_RELEASE_NS, True),
                     ("update", "leases.coordination.k8s.io", NS_RELEASE_NS, False),
                     ("create", "leases.coordination.k8s.io", WATCHED[0], False),
                     ("list", "leases.coordination.k8s.io", None, False)]
    assert matrix_mismatches(releases, user, expectations) == [], "\n".join(matrix_mismatches(releases, user, expectations))
    lease = "leases.coordination.k8s.io"
    assert all(can_i(releases, user, verb, lease, NS_RELEASE_NS, name=LEASE) for verb in ("get", "update", "watch"))
    assert not can_i(releases, user, "update", lease, NS_RELEASE_NS, name="kube-scheduler")
    assert not can_i(releases, user, "delete", lease, NS_RELEASE_NS, name=LEASE)


@pytest.mark.timeout(300)
def test_rules_review_shows_exactly_the_chart_rules(releases, tmp_path):
    """Everything the ServiceAccount may do in a namespace, minus what any authenticated account may do."""
    c = releases
    c.kubectl("create", "serviceaccount", "nobody", "-n", NS_RELEASE_NS, check=False)
    baseline_config = service_account_kubeconfig(c, NS_RELEASE_NS, "nobody", tmp_path / "nobody.kubeconfig")
    namespaced_config = service_account_kubeconfig(
        c, NS_RELEASE_NS, f"{NS_RELEASE}-training-hub-operator", tmp_path / "ns.kubeconfig")
    cluster_config = service_account_kubeconfig(
        c, CLUSTER_RELEASE_NS, f"{CLUSTER_RELEASE}-training-hub-operator", tmp_path / "cluster.kubeconfig")

    def extra(config: Path, namespace: str) -> set[tuple[str, str, str]]:
        return rules_granted(c, config, namespace) - rules_granted(c, baseline_config, namespace)

    job_rules = {
        ("training-hub.io", "sftjobs", v) for v in ("get", "list", "watch", "delete")
    } | {
        ("training-hub.io", "sftjobs/status", "patch"), ("training-hub.io", "sftjobs/finalizers", "update"),
        ("", "pods/log", "get"), ("", "events", "create"),
    } | {("", "pods", v) for v in ("create", "delete", "list", "watch")} | {
        ("", "services", v) for v in ("create", "get")} | {("", "configmaps", v) for v in ("create", "get", "patch")} | {
        ("kueue.x-k8s.io", "workloads", v) for v in ("get", "delete")}  # a queued gang's reason; release an unbound group
    leases = {("coordination.k8s.io", "leases", v) for v in ("create", "get", "update", "list", "watch")}
    crds = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}

    assert extra(namespaced_config, WATCHED[0]) == job_rules
    assert extra(namespaced_config, UNWATCHED) == set()
    assert extra(namespaced_config, NS_RELEASE_NS) == leases  # get/update/list/watch: only the one named Lease
    assert extra(cluster_config, CLUSTER_JOBS_NS) == job_rules | crds


@pytest.mark.timeout(400)
def test_operator_as_cluster_scope_service_account_runs_a_job_end_to_end(releases, tmp_path):
    c = releases
    kubeconfig = service_account_kubeconfig(
        c, CLUSTER_RELEASE_NS, f"{CLUSTER_RELEASE}-training-hub-operator", tmp_path / "sa.kubeconfig")
    log = tmp_path / "operator.log"
    c.kubectl("apply", "-n", CLUSTER_JOBS_NS, "-f", "-", input=yaml.safe_dump(sftjob_manifest("rbac-cluster", nnodes=2)))
    with operator_process(kubeconfig, log):
        job = run_gang_to_success(c, CLUSTER_JOBS_NS, "rbac-cluster", 2, log)
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["observedGeneration"] == job["metadata"]["generation"]
    assert permission_denials(log) == []


@pytest.mark.timeout(400)
def test_operator_as_namespaced_service_account_with_leader_election_runs_only_watched_jobs(releases, tmp_path):
    c = releases
    kubeconfig = service_account_kubeconfig(
        c, NS_RELEASE_NS, f"{NS_RELEASE}-training-hub-operator", tmp_path / "sa.kubeconfig")
    log = tmp_path / "operator.log"
    c.kubectl("apply", "-n", WATCHED[1], "-f", "-", input=yaml.safe_dump(sftjob_manifest("rbac-ns", nnodes=2)))
    c.kubectl("apply", "-n", UNWATCHED, "-f", "-", input=yaml.safe_dump(sftjob_manifest("not-mine", nnodes=1)))
    # As the chart runs it with ha.enabled (the chart's own replicas are kwok pods: they run nothing).
    election = {"SFTJOB_OPERATOR_LEADER_ELECT": "true", "SFTJOB_OPERATOR_LEADER_ELECT_LEASE_NAMESPACE": NS_RELEASE_NS,
                "SFTJOB_OPERATOR_LEADER_ELECT_LEASE_NAME": LEASE, "POD_NAME": "sa-test"}
    with operator_process(kubeconfig, log, namespaces=WATCHED, extra_env=election):
        job = run_gang_to_success(c, WATCHED[1], "rbac-ns", 2, log)
        # The Lease names this process (leader election works with the chart's Role).
        holder = wait_for("this operator holding the Lease", lambda: ((get_json(
            c, "lease", "-n", NS_RELEASE_NS, LEASE) or {}).get("spec") or {}).get("holderIdentity"), timeout=30,
            log_path=log)
    assert job["status"]["phase"] == "Succeeded"
    assert holder.startswith("sa-test_")
    # Stopped with SIGTERM: the Lease was handed back (its holder emptied) with the chart's RBAC.
    assert not get_json(c, "lease", "-n", NS_RELEASE_NS, LEASE)["spec"].get("holderIdentity")
    assert "released lease" in log.read_text()
    assert job_pods(c, UNWATCHED, "not-mine") == []
    assert (get_json(c, "sftjob", "-n", UNWATCHED, "not-mine") or {}).get("status") is None
    assert permission_denials(log) == []


@pytest.mark.timeout(300)
def test_uninstall_removes_rbac_and_keeps_the_crd_and_jobs(releases):
    c = releases
    helm(c, "uninstall", CLUSTER_RELEASE, "-n", CLUSTER_RELEASE_NS, "--wait")
    helm(c, "uninstall", NS_RELEASE, "-n", NS_RELEASE_NS, "--wait")
    assert c.kubectl("get", "clusterrolebinding", f"{CLUSTER_RELEASE_NS}-{CLUSTER_RELEASE}-training-hub-operator",
                     check=False).returncode != 0
    assert get_json(c, "role", "-n", WATCHED[0], f"{NS_RELEASE}-training-hub-operator") is None
    # Helm never deletes crds/: deleting the CRD would delete every SFTJob with it.
    assert get_json(c, "crd", "sftjobs.training-hub.io") is not None
    assert get_json(c, "sftjob", "-n", CLUSTER_JOBS_NS, "rbac-cluster") is not None
