"""values.schema.json: the chart's defaults pass, bad values fail with a message naming the value.

Helm checks the same schema at `helm install/upgrade/template/lint` (test_chart_template.py and
tests/cluster/test_helm.py run helm itself); here the schema is checked on its own with the JSON Schema
reference implementation. Rules across several values (namespaced scope needs watchNamespaces, replicas
need HA) are `fail` calls in templates/_helpers.tpl, whose messages say how to fix them.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "training-hub-operator"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def merged(overrides: dict) -> dict:
    values = copy.deepcopy(DEFAULTS)

    def merge(into: dict, extra: dict) -> None:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(values, overrides)
    return values


def problems(values: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    found = []
    for error in validator.iter_errors(values):
        path = ".".join(str(p) for p in error.absolute_path) or "(top)"
        found.append(f"{path}: {error.message}")
        for sub in error.context or ():
            found.append(".".join(str(p) for p in sub.absolute_path) + ": " + sub.message)
    return found


def test_schema_is_valid_draft7():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_default_values_pass():
    assert problems(DEFAULTS) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]},
        {"replicaCount": 3, "ha": {"enabled": True}},
        {"metrics": {"serviceMonitor": {"enabled": True, "interval": "1m30s"}}},
        {"trainer": {"image": "registry.example.com/ml/trainer@sha256:" + "a" * 64, "shmSizeLimit": "64Gi"}},
        {"resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": 2}}},
        {"logLevel": "debug", "extraEnv": [{"name": "SFTJOB_OPERATOR_CLUSTER_DOMAIN", "value": "cluster.local"}]},
        {"trainer": {"resources": {"requests": {"cpu": 0.5, "memory": "64Gi", "rdma/ib": 1}, "limits": {"memory": "128Gi"}}}},
    ],
    ids=["namespaced", "ha", "servicemonitor", "trainer-digest", "resources", "debug-env", "trainer-resources"],
)
def test_sensible_settings_pass(overrides):
    assert problems(merged(overrides)) == []


BAD_VALUES = [
    ({"rbac": {"scope": "namespace"}}, "rbac.scope", "'cluster', 'namespaced'"),
    ({"rbac": {"scope": "namespaced"}, "watchNamespaces": ["Team_A"]}, "watchNamespaces.0", "does not match"),
    ({"replicaCount": -1}, "replicaCount", "less than the minimum of 0"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy", "is not one of"),
    ({"trainer": {"image": ""}}, "trainer.image", "should be non-empty"),
    ({"trainer": {"shmSizeLimit": "lots"}}, "trainer.shmSizeLimit", "does not match"),
    ({"trainer": {"rdzvTimeoutSeconds": 0}}, "trainer.rdzvTimeoutSeconds", "less than or equal to the minimum"),
    ({"metrics": {"port": 70000}}, "metrics.port", "greater than the maximum"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "metrics.serviceMonitor.interval", "does not match"),
    ({"resources": {"limits": {"memory": "1 GB"}}}, "resources.limits.memory", "is not valid"),
    ({"logLevel": "loud"}, "logLevel", "is not one of"),
    ({"rbca": {"create": True}}, "(top)", "'rbca' was unexpected"),
    ({"trainer": {"imagee": "x"}}, "trainer", "'imagee' was unexpected"),
    ({"trainer": {"resources": {"requests": {"memory": "lots"}}}}, "trainer.resources.requests.memory", "is not valid"),
    ({"trainer": {"resources": {"limits": {"cpu": -1}}}}, "trainer.resources.limits.cpu", "is not valid"),
    ({"trainer": {"resources": {"limits": {"memory": "-1Gi"}}}}, "trainer.resources.limits.memory", "is not valid"),
    ({"trainer": {"resources": {"request": {"cpu": 1}}}}, "trainer.resources", "'request' was unexpected"),
]


@pytest.mark.parametrize("overrides, field, words", BAD_VALUES, ids=[field for _, field, _ in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(overrides, field, words):
    found = problems(merged(overrides))
    assert any(p.startswith(field + ":") and words in p for p in found), found
