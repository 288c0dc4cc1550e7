"""bench/sftjob_create_cost.py: the CRD copies it measures against the shipped CRD, and the objects it creates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import sftjob_create_cost  # noqa: E402

from tests.cluster.deploy_helpers import CRD_FILE  # noqa: E402


def _shipped() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def test_the_copies_are_crds_of_their_own_group_and_leave_the_shipped_crd_as_it_is():
    shipped = _shipped()
    before = json.dumps(shipped, sort_keys=True)
    for kind, group in sftjob_create_cost.BENCH_GROUPS.items():
        crd = sftjob_create_cost.bench_crd(shipped, kind)
        assert crd["spec"]["group"] == group
        assert crd["metadata"]["name"] == f"sftjobs.{group}"
        assert crd["spec"]["names"]["kind"] == "SFTJob"
    assert json.dumps(shipped, sort_keys=True) == before


def test_without_cel_keeps_the_schema_and_drops_every_rule():
    shipped = _shipped()
    crd = sftjob_create_cost.bench_crd(shipped, "sftjob-no-cel")
    assert "x-kubernetes-validations" in json.dumps(shipped)
    assert "x-kubernetes-validations" not in json.dumps(crd)
    for version, original in zip(crd["spec"]["versions"], shipped["spec"]["versions"]):
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert set(spec["properties"]) == set(original["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def test_without_schema_leaves_the_spec_unchecked_and_the_status_as_shipped():
    shipped = _shipped()
    crd = sftjob_create_cost.bench_crd(shipped, "sftjob-no-schema")
    for version, original in zip(crd["spec"]["versions"], shipped["spec"]["versions"]):
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["properties"]["spec"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        assert "x-kubernetes-validations" not in schema  # the root rules read spec fields
        assert schema["properties"]["status"] == original["schema"]["openAPIV3Schema"]["properties"]["status"]


def test_each_kind_is_created_in_its_own_group_with_the_same_spec():
    path, objects = sftjob_create_cost.bodies("sftjob-no-cel", "ns", ["a", "b"])
    assert path == "/apis/nocel.bench.training-hub.io/v1alpha1/namespaces/ns/sftjobs"
    assert [o["apiVersion"] for o in objects] == ["nocel.bench.training-hub.io/v1alpha1"] * 2
    shipped_path, shipped_objects = sftjob_create_cost.bodies("sftjob", "ns", ["a", "b"])
    assert shipped_path == "/apis/training-hub.io/v1alpha1/namespaces/ns/sftjobs"
    assert [o["spec"] for o in objects] == [o["spec"] for o in shipped_objects]
    path, configmaps = sftjob_create_cost.bodies("configmap", "ns", ["a"])
    assert path == "/api/v1/namespaces/ns/configmaps"
    assert json.loads(configmaps[0]["data"]["spec"]) == shipped_objects[0]["spec"]
