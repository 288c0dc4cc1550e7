"""The Argo CD health check (deploy/argocd/.../health.lua) against SFTJob status samples.

Argo CD evaluates health scripts with gopher-lua (Lua 5.1): the script sees the object as the
global `obj` and returns a table {status, message}. lupa's Lua 5.1 runtime does the same here.
"""

from pathlib import Path

import pytest
import yaml

lupa_lua51 = pytest.importorskip("lupa.lua51")

REPO = Path(__file__).resolve().parents[3]
CHECK_DIR = REPO / "deploy" / "argocd" / "training-hub.io" / "SFTJob"
HEALTH_LUA = CHECK_DIR / "health.lua"
CASES = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def to_lua(lua, value):
    """Python (from YAML) -> Lua tables, lists 1-indexed as Argo CD's converter makes them."""
    if isinstance(value, dict):
        return lua.table_from({key: to_lua(lua, item) for key, item in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, item) for item in value])
    return value


def evaluate_health(obj: dict, script: str | None = None) -> dict:
    lua = lupa_lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_of_status_sample(case):
    obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
    assert evaluate_health(obj) == case["healthStatus"]


def test_every_sample_is_covered_by_a_case():
    samples = {p.name for p in (CHECK_DIR / "testdata").glob("*.yaml")}
    assert samples == {Path(c["inputPath"]).name for c in CASES}


def test_cases_cover_every_verdict_an_sftjob_can_get():
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_conditions_win_over_a_contradicting_phase():
    # kstatus readers (Flux) go by conditions; the check must agree with them, not with phase.
    obj = yaml.safe_load((CHECK_DIR / "testdata" / "running.yaml").read_text())
    obj["status"]["conditions"].append(
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "3 restarts"}
    )
    obj["status"]["conditions"] = [c for c in obj["status"]["conditions"] if not (c["type"] == "Failed" and c["status"] == "False")]
    assert evaluate_health(obj) == {"status": "Degraded", "message": "3 restarts"}


def test_status_without_generation_fields_still_gets_a_verdict():
    obj = {"metadata": {"name": "x"}, "status": {"phase": "Running", "nodesReady": 2, "nodesTotal": 2}}
    health = evaluate_health(obj)
    assert health["status"] in ARGO_STATUSES
    assert health == {"status": "Progressing", "message": "Running, nodes ready 2/2"}


def test_configmap_patch_embeds_the_same_script():
    patch = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml").read_text())
    embedded = patch["data"]["resource.customizations.health.training-hub.io_SFTJob"]
    assert embedded == HEALTH_LUA.read_text()
