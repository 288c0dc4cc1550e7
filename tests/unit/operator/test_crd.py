"""The generated CRD: structural schema, descriptions everywhere, CEL rules, printer columns, committed copy current."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pydantic import BaseModel, Field
from pydantic.alias_generators import to_camel

from sftjob_operator import api, crd
from training_hub.params import SFT_RULES, SFTParams

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "deploy" / "crds" / "training-hub.io_sftjobs.yaml"


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return yaml.safe_load(crd.render_crd_yaml())


@pytest.fixture(scope="module")
def schema(generated) -> dict[str, Any]:
    return generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], path + "[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], path + ".*")


def test_committed_crd_is_the_generated_one():
    assert COMMITTED.read_text() == crd.render_crd_yaml(), (
        "deploy/crds/training-hub.io_sftjobs.yaml is stale: run `sftjob-operator crd > deploy/crds/"
        "training-hub.io_sftjobs.yaml` (and hack/sync-crd.sh)"
    )


def test_generation_is_deterministic():
    assert crd.render_crd_yaml() == crd.render_crd_yaml()


def test_identity_names_scope_and_status_subresource(generated):
    assert generated["apiVersion"] == "apiextensions.k8s.io/v1"
    assert generated["metadata"]["name"] == "sftjobs.training-hub.io"
    spec = generated["spec"]
    assert spec["group"] == "training-hub.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "SFTJob", "listKind": "SFTJobList", "plural": "sftjobs", "singular": "sftjob", "shortNames": ["sft"]
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_schema_is_structural(schema):
    for path, node in walk(schema):
        assert "$ref" not in node and "$defs" not in node, path
        assert "title" not in node, path
        assert "oneOf" not in node and "allOf" not in node and "not" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        if node.get("type") == "object":
            # properties and additionalProperties are exclusive; an object without either keeps its fields on purpose
            assert not ("properties" in node and "additionalProperties" in node), path
            if "properties" not in node and "additionalProperties" not in node and path != ".metadata":
                assert node.get("x-kubernetes-preserve-unknown-fields") is True, path
        assert not isinstance(node.get("additionalProperties"), bool), path
        assert node.get("default", "unset") is not None, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True and ("minimum" in node or "maximum" in node), path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path
        for name in node.get("required", []):
            assert name in node["properties"], f"{path}: required {name} is not a property"


def test_every_property_has_a_description(schema):
    missing = [
        f"{path}.{name}"
        for path, node in walk(schema)
        for name, child in (node.get("properties") or {}).items()
        if not (child.get("description") or "").strip() and f"{path}.{name}" != ".metadata"  # API server forbids it
    ]
    assert not missing


def test_preserve_unknown_fields_only_where_free_form(schema):
    preserved = sorted(path for path, node in walk(schema) if node.get("x-kubernetes-preserve-unknown-fields"))
    assert preserved == [
        # the terms are free-form; their list is typed, so CEL/schema can require at least one term
        ".spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[*]",
        ".spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[*]",
        ".spec.affinity.podAffinity",
        ".spec.affinity.podAntiAffinity",
        ".spec.training.extraArgs",
    ]


def test_training_schema_is_generated_from_sft_params(schema):
    training = schema["properties"]["spec"]["properties"]["training"]
    expected = {info.alias or to_camel(name) for name, info in SFTParams.model_fields.items()}
    assert set(training["properties"]) == expected
    assert set(training["required"]) == {
        to_camel(name) for name, info in SFTParams.model_fields.items() if info.is_required()
    }
    for name, info in SFTParams.model_fields.items():
        assert training["properties"][to_camel(name)]["description"] == info.description
    rules = {rule["rule"] for rule in training["x-kubernetes-validations"]}
    assert {rule.cel for rule in SFT_RULES} <= rules
    learning_rate = training["properties"]["learningRate"]
    assert learning_rate == {**learning_rate, "type": "number", "minimum": 0, "exclusiveMinimum": True}


def test_crd_defaults_are_the_model_defaults(schema):
    spec_schema = schema["properties"]["spec"]
    checked = 0
    for name, info in api.SFTJobSpec.model_fields.items():
        node = spec_schema["properties"][to_camel(name)]
        if info.is_required():
            assert name in ("training",) and to_camel(name) in spec_schema["required"]
        elif info.default is None:
            assert "default" not in node, name
        else:
            default = info.default.value if hasattr(info.default, "value") else info.default
            assert node["default"] == default, name
            checked += 1
    assert checked >= 7  # nnodes, nprocPerNode, gpuResourceName, rdzvPort, backoffLimit, suspend, cleanPodPolicy
    assert spec_schema["properties"]["cleanPodPolicy"]["enum"] == ["All", "Running", "None"]


def test_bounds_and_list_semantics_reach_the_schema(schema):
    spec_schema = schema["properties"]["spec"]["properties"]
    assert (spec_schema["nnodes"]["minimum"], spec_schema["nnodes"]["maximum"]) == (1, api.MAX_NNODES)
    assert (spec_schema["rdzvPort"]["minimum"], spec_schema["rdzvPort"]["maximum"]) == (1024, 65535)
    assert spec_schema["volumes"]["x-kubernetes-list-type"] == "map"
    assert spec_schema["volumes"]["x-kubernetes-list-map-keys"] == ["name"]
    assert spec_schema["volumes"]["maxItems"] == api.MAX_VOLUMES
    assert spec_schema["env"]["x-kubernetes-list-map-keys"] == ["name"]
    quantity = spec_schema["resources"]["properties"]["limits"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True and quantity["pattern"].startswith("^")
    status = schema["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["phase"]["enum"] == [p.value for p in api.Phase]
    assert status["startTime"]["format"] == "date-time"


def test_status_schema_has_every_contract_field(schema):
    status = schema["properties"]["status"]["properties"]
    assert set(status) == {
        "phase", "conditions", "observedGeneration", "attempt", "restarts", "rdzvId", "nodesReady", "nodesTotal",
        "nodes", "gpusPerNode", "progress", "progressText", "startTime", "completionTime", "summary", "lastFailure",
        "unschedulableSince",
    }
    assert set(status["progress"]["properties"]) == {"epoch", "step", "loss", "samplesSeen", "updatedAt"}
    assert {"finalCheckpoint", "epoch", "step", "loss", "resumedFromEpoch"} <= set(status["summary"]["properties"])
    assert set(status["lastFailure"]["properties"]) == {"rank", "exitCode", "reason", "message"}


def test_object_level_rules_name_and_immutability(schema):
    rules = schema["x-kubernetes-validations"]
    assert "self.metadata.name" in rules[0]["rule"] and rules[0]["message"].startswith("metadata.name")
    transition = {rule["fieldPath"]: rule for rule in rules if "oldSelf" in rule["rule"]}
    assert set(transition) == {f".spec.{field}" for field in crd.IMMUTABLE_WHILE_RUNNING}
    for field_path, rule in transition.items():
        assert f"self{field_path} == oldSelf{field_path}" in rule["rule"]
        assert "'Suspended'" in rule["rule"]
        assert rule["reason"] == "FieldValueForbidden"
        assert field_path.removeprefix(".") in rule["message"]


def test_printer_columns_point_at_status_fields(generated, schema):
    columns = generated["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Phase", "Reason", "Nodes", "GPUs/Node", "Restarts", "Progress", "Age"
    ]
    status = schema["properties"]["status"]["properties"]
    for column in columns:
        path = column["jsonPath"].removeprefix(".status.")
        if path.startswith("conditions[?(@.type==\"Ready\")]."):
            # Ready is always set and carries the shared kstatus reason and message.
            field = path.rsplit(".", 1)[1]
            assert field in status["conditions"]["items"]["properties"] and column["type"] == "string", column
        elif column["jsonPath"].startswith(".status."):
            assert column["type"] == status[path]["type"], column
    assert columns[6] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


class _Example(BaseModel):
    """An example."""

    count: int | None = Field(default=None, gt=0, description="A count.")
    ratio: float = Field(default=0.5, lt=1, description="A ratio.")
    mode: str = Field(default="a", description="A mode.")


def test_converter_makes_optional_fields_plain_and_bounds_openapi3():
    converted = crd.structural_schema(_Example.model_json_schema(by_alias=True))
    assert converted["properties"]["count"] == {
        "type": "integer", "minimum": 0, "exclusiveMinimum": True, "description": "A count."
    }
    assert converted["properties"]["ratio"]["maximum"] == 1 and converted["properties"]["ratio"]["exclusiveMaximum"]
    assert "title" not in converted and converted["description"] == "An example."


class _Union(BaseModel):
    """Not expressible structurally."""

    value: int | bool = Field(description="Either.")


def test_converter_refuses_unions_it_cannot_express():
    with pytest.raises(crd.SchemaConversionError, match=".value"):
        crd.structural_schema(_Union.model_json_schema())
