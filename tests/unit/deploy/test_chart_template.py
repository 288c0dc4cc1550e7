"""The chart as Helm renders it (helm lint / helm template; no cluster): least-privilege RBAC in both
scopes, a hardened Deployment, optional HA/ServiceMonitor, and bad value combinations failing with a
message that says how to fix them. tests/cluster/test_helm.py installs it on the real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "training-hub-operator"
NAMESPACED = ["--set", "rbac.scope=namespaced", "--set", "watchNamespaces={team-a,team-b}"]
HA = ["--set", "ha.enabled=true", "--set", "replicaCount=2"]
CLUSTER_SCOPED_KINDS = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


@pytest.fixture(scope="module")
def helm_binary(k8s_bin_dir) -> str:
    return str(k8s_bin_dir / "helm")


def helm(helm_binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm_binary, *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {result.stderr}")
    return result


def render(helm_binary: str, *values: str, hooks: bool = True) -> list[dict]:
    args = ["template", "rel", str(CHART), "--namespace", "ops", *values]
    if not hooks:
        args.append("--no-hooks")
    return [doc for doc in yaml.safe_load_all(helm(helm_binary, *args).stdout) if doc]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def rule_set(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


# The namespaced permissions, each one a call in sftjob_operator/kube.py or a kopf watch.
JOB_RULES = {
    ("training-hub.io", "sftjobs", "get"), ("training-hub.io", "sftjobs", "list"),
    ("training-hub.io", "sftjobs", "watch"), ("training-hub.io", "sftjobs", "delete"),
    ("training-hub.io", "sftjobs/status", "patch"), ("training-hub.io", "sftjobs/finalizers", "update"),
    ("", "pods", "create"), ("", "pods", "delete"), ("", "pods", "list"), ("", "pods", "watch"),
    ("", "pods/log", "get"),
    ("", "services", "create"), ("", "services", "get"),
    ("", "configmaps", "create"), ("", "configmaps", "get"), ("", "configmaps", "patch"),
    ("", "events", "create"),
    ("kueue.x-k8s.io", "workloads", "get"), ("kueue.x-k8s.io", "workloads", "delete"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("values", [[], NAMESPACED, NAMESPACED + HA, HA + ["--set", "metrics.serviceMonitor.enabled=true"]],
                         ids=["cluster", "namespaced", "namespaced-ha", "cluster-ha-servicemonitor"])
def test_helm_lint_strict_is_clean(helm_binary, values):
    result = helm(helm_binary, "lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.timeout(60)
def test_cluster_scope_grants_the_job_rules_cluster_wide_and_nothing_else(helm_binary):
    objects = render(helm_binary)
    (role,) = by_kind(objects, "ClusterRole")
    assert rule_set(role) == JOB_RULES | {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
    (binding,) = by_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-training-hub-operator", "namespace": "ops"}]
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")


@pytest.mark.timeout(60)
def test_namespaced_scope_has_one_role_per_watched_namespace_and_nothing_cluster_wide(helm_binary):
    objects = render(helm_binary, *NAMESPACED)
    assert not [o for o in objects if o["kind"] in CLUSTER_SCOPED_KINDS]
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rule_set(role) == JOB_RULES
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    (deployment,) = by_kind(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


@pytest.mark.timeout(60)
@pytest.mark.parametrize("values", [[], NAMESPACED + HA], ids=["cluster", "namespaced-ha"])
def test_no_rule_touches_secrets_or_uses_wildcards(helm_binary, values):
    for role in by_kind(render(helm_binary, *values), "Role") + by_kind(render(helm_binary, *values), "ClusterRole"):
        for group, resource, verb in rule_set(role):
            assert "secret" not in resource
            assert "*" not in (group, resource, verb)
            assert verb not in ("escalate", "bind", "impersonate", "deletecollection")
            assert not resource.startswith(("pods/exec", "pods/attach", "pods/portforward", "serviceaccounts"))


@pytest.mark.timeout(60)
def test_deployment_is_hardened_and_probed(helm_binary):
    (deployment,) = by_kind(render(helm_binary), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert f"--health-port={ports['healthz']}" in container["args"]
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two standalone operators at once
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SFTJOB_OPERATOR_TRAINER_IMAGE"] == "training-hub-trainer:0.1.0"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # The leader election identity starts with the pod's name (no passwd lookup, replicas differ).
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # Without HA: no leader election, no Lease permissions, no PodDisruptionBudget (one replica acts as always).
    assert not [a for a in container["args"] if a.startswith("--leader-elect")]
    assert "affinity" not in pod


@pytest.mark.timeout(60)
def test_host_network_is_off_by_default_and_keeps_cluster_dns_when_on(helm_binary):
    (default,) = by_kind(render(helm_binary), "Deployment")
    assert "hostNetwork" not in default["spec"]["template"]["spec"]
    (deployment,) = by_kind(render(helm_binary, "--set", "hostNetwork=true"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True  # still hardened
    refused = helm(helm_binary, "template", "rel", str(CHART), "--set", "hostNetwork=yes", check=False)
    assert refused.returncode != 0 and "hostNetwork" in refused.stderr


@pytest.mark.timeout(60)
def test_trainer_resources_reach_the_operator_config(helm_binary):
    """values.yaml trainer.resources -> SFTJOB_OPERATOR_DEFAULT_TRAINER_RESOURCES -> OperatorConfig, as the
    operator reads it at start (the default: no defaults, only what each job sets)."""
    from sftjob_operator.config import OperatorConfig

    def operator_config(*values: str) -> OperatorConfig:
        (deployment,) = by_kind(render(helm_binary, *values), "Deployment")
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return OperatorConfig.from_env({k: v for k, v in env.items() if v is not None})

    assert operator_config().default_trainer_resources == ((), ())
    configured = operator_config(
        "--set", "trainer.resources.requests.cpu=0.5", "--set", "trainer.resources.requests.memory=64Gi",
        "--set", "trainer.resources.limits.memory=128Gi",
    )
    assert configured.default_trainer_resources == ((("cpu", "0.5"), ("memory", "64Gi")), (("memory", "128Gi"),))



@pytest.mark.timeout(60)
def test_prepare_resources_reach_the_operator_config(helm_binary):
    """values.yaml prepare.resources -> SFTJOB_OPERATOR_DEFAULT_PREPARE_RESOURCES -> OperatorConfig (default: a
    modest CPU request, no GPU ever)."""
    from sftjob_operator.config import OperatorConfig

    def operator_config(*values: str) -> OperatorConfig:
        (deployment,) = by_kind(render(helm_binary, *values), "Deployment")
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return OperatorConfig.from_env({k: v for k, v in env.items() if v is not None})

    assert operator_config().default_prepare_resources == ((("cpu", "2"), ("memory", "4Gi")), ())
    configured = operator_config("--set", "prepare.resources.requests.cpu=16", "--set", "prepare.resources.limits.memory=64Gi")
    assert configured.default_prepare_resources == ((("cpu", "16"), ("memory", "4Gi")), (("memory", "64Gi"),))


@pytest.mark.timeout(60)
def test_metrics_service_targets_the_metrics_port_and_servicemonitor_is_optional(helm_binary):
    objects = render(helm_binary)
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert not by_kind(objects, "ServiceMonitor")
    (monitor,) = by_kind(render(helm_binary, "--set", "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    disabled = render(helm_binary, "--set", "metrics.enabled=false")
    assert not by_kind(disabled, "Service")
    assert "--metrics-port=0" in by_kind(disabled, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]


LEASE_RULES = {("coordination.k8s.io", "leases", "create")} | {
    ("coordination.k8s.io", "leases", verb) for verb in ("get", "update", "list", "watch")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("values", [[], NAMESPACED], ids=["cluster", "namespaced"])
def test_ha_wires_leader_election_on_a_lease_in_the_release_namespace(helm_binary, values):
    objects = render(helm_binary, *values, *HA)
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--leader-elect"):][:6] == [
        "--leader-elect", "--leader-elect-lease-name=rel-training-hub-operator", "--leader-elect-namespace=ops",
        "--leader-elect-lease-duration=15", "--leader-elect-renew-deadline=10", "--leader-elect-retry-period=2"]
    # The Lease's Role: in the operator's namespace whatever the scope; create, then only the one named Lease.
    (lease_role,) = [r for r in by_kind(objects, "Role") if r["metadata"]["namespace"] == "ops"]
    assert rule_set(lease_role) == LEASE_RULES
    named = [rule for rule in lease_role["rules"] if "create" not in rule["verbs"]]
    assert named[0]["resourceNames"] == ["rel-training-hub-operator"]
    (binding,) = [b for b in by_kind(objects, "RoleBinding") if b["metadata"]["namespace"] == "ops"]
    assert binding["roleRef"]["name"] == lease_role["metadata"]["name"]
    # The job permissions are unchanged by HA (no peering objects any more, nothing else cluster-wide).
    job_roles = by_kind(objects, "ClusterRole") or [r for r in by_kind(objects, "Role") if r is not lease_role]
    assert all(not ({rule for rule in rule_set(role)} & LEASE_RULES) for role in job_roles)
    assert not by_kind(objects, "CustomResourceDefinition")
    assert {o["kind"] for o in objects if "kopf" in o.get("apiVersion", "")} == set()
    # A drain keeps one replica; replicas prefer different nodes.
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.timeout(60)
def test_ha_timings_anti_affinity_and_budget_are_configurable(helm_binary):
    objects = render(helm_binary, *HA, "--set", "ha.leaseDuration=30", "--set", "ha.renewDeadline=20",
                     "--set", "ha.retryPeriod=4", "--set", "ha.leaseName=my-lease", "--set", "ha.antiAffinity=hard",
                     "--set", "ha.podDisruptionBudget.enabled=false")
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert {"--leader-elect-lease-name=my-lease", "--leader-elect-lease-duration=30", "--leader-elect-renew-deadline=20",
            "--leader-elect-retry-period=4"} <= set(args)
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert not by_kind(objects, "PodDisruptionBudget")
    # The chart's flags parse into valid settings of the operator.
    from sftjob_operator.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert (parsed.leader_elect, parsed.lease_duration, parsed.renew_deadline, parsed.retry_period) == (True, 30, 20, 4)
    # A user's own affinity wins; a single HA replica gets no budget (it would block every drain).
    custom = render(helm_binary, *HA, "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                    ".nodeSelectorTerms[0].matchExpressions[0].key=pool", "--set", "affinity.nodeAffinity."
                    "requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists")
    assert "podAntiAffinity" not in by_kind(custom, "Deployment")[0]["spec"]["template"]["spec"]["affinity"]
    assert not by_kind(render(helm_binary, "--set", "ha.enabled=true"), "PodDisruptionBudget")


@pytest.mark.timeout(60)
def test_replica_count_zero_installs_rbac_only(helm_binary):
    objects = render(helm_binary, "--set", "replicaCount=0")
    assert by_kind(objects, "Deployment")[0]["spec"]["replicas"] == 0
    assert by_kind(objects, "ClusterRole") and by_kind(objects, "ServiceAccount")


BAD_COMBINATIONS = [
    (["--set", "rbac.scope=namespaced"], "watchNamespaces: list at least one namespace when rbac.scope is \"namespaced\""),
    (["--set", "watchNamespaces={team-a}"], "watchNamespaces: only used with rbac.scope=namespaced"),
    (["--set", "replicaCount=3"], "replicaCount: 3 replicas without ha.enabled=true would run SFTJobs twice"),
    (HA + ["--set", "ha.renewDeadline=15"], "ha.renewDeadline (15) must be less than ha.leaseDuration (15)"),
    (HA + ["--set", "ha.retryPeriod=9"], "ha.renewDeadline (10) must be greater than 1.2 x ha.retryPeriod (9)"),
    (HA + ["--set", "ha.antiAffinity=always"], "at '/ha/antiAffinity'"),
    (HA + ["--set", "ha.peeringName=x"], "additional properties 'peeringName' not allowed"),
    (["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
     "metrics.serviceMonitor.enabled: needs metrics.enabled=true"),
    (["--set", "rbac.scope=everywhere"], "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
    (["--set", "trainer.image="], "at '/trainer/image'"),
    (["--set", "rbca.create=true"], "additional properties 'rbca' not allowed"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name is required when serviceAccount.create is false"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("values, message", BAD_COMBINATIONS, ids=[m.split(":")[0].split("'")[-1] for _, m in BAD_COMBINATIONS])
def test_bad_values_fail_with_a_message(helm_binary, values, message):
    result = helm(helm_binary, "template", "rel", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.timeout(60)
def test_readme_install_command_renders(helm_binary):
    """The platform team's `helm install` in README.md, run as `helm template`: its --set values exist and pass."""
    import re
    import shlex

    readme = (CHART.parents[2] / "README.md").read_text()
    command = re.search(r"^helm install (.+?)(?<!\\)$", readme, flags=re.M | re.S).group(0)
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:2] == ["helm", "install"]
    release, chart, *flags = words[2:]
    assert (CHART.parents[2] / chart).resolve() == CHART
    objects = render(helm_binary, *[f for f in flags if f != "--create-namespace"])
    (deployment,) = by_kind(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("registry.example.com/ml/training-hub-operator:")
