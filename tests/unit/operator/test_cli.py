"""`sftjob-operator crd` and `sftjob-operator render`: exact manifests without a cluster, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftjob_operator import api, cli, crd, labels, render
from sftjob_operator.config import OperatorConfig

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
OWN_EXAMPLES = ("sftjob-single-node.yaml", "sftjob-multi-node.yaml")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("example", OWN_EXAMPLES)
def test_examples_render_to_what_render_gang_returns(capsys, monkeypatch, example):
    for variable in [v for v in os.environ if v.startswith("SFTJOB_OPERATOR_")]:
        monkeypatch.delenv(variable)
    code, out, err = run_cli(capsys, "render", "-f", str(EXAMPLES / example), "--attempt", "1", "--uid", "u-1")
    assert code == 0, err
    documents = list(yaml.safe_load_all(out))
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    manifest["metadata"].update(namespace="default", uid="u-1")
    expected = render.render_gang(manifest, attempt=1, rdzv_id=render.new_rdzv_id("u-1", 1), config=OperatorConfig())
    assert documents == expected.objects()


def test_multi_node_example_is_4_by_8_gpus(capsys):
    code, out, _ = run_cli(capsys, "render", "-f", str(EXAMPLES / "sftjob-multi-node.yaml"))
    assert code == 0
    pods = [d for d in yaml.safe_load_all(out) if d["kind"] == "Pod" and "-node-" in d["metadata"]["name"]]
    assert len(pods) == 4
    assert {p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for p in pods} == {8}
    assert {p["metadata"]["labels"][labels.RDZV_ID] for p in pods} == {render.new_rdzv_id(cli.PLACEHOLDER_UID, 0)}


def test_namespace_flag_and_stdin(capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO((EXAMPLES / "sftjob-single-node.yaml").read_text()))
    code, out, _ = run_cli(capsys, "render", "-f", "-", "-n", "ml")
    assert code == 0
    documents = list(yaml.safe_load_all(out))
    assert {d["metadata"]["namespace"] for d in documents} == {"ml"}
    pod = documents[-1]
    endpoint = next(e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == "TRAINING_HUB_RDZV_ENDPOINT")
    assert endpoint == "qwen-sft-single.ml.svc:29500"


def test_operator_environment_is_applied(capsys, monkeypatch):
    monkeypatch.setenv("SFTJOB_OPERATOR_TRAINER_IMAGE", "registry.example/trainer:7")
    code, out, _ = run_cli(capsys, "render", "-f", str(EXAMPLES / "sftjob-single-node.yaml"))
    assert code == 0
    pod = list(yaml.safe_load_all(out))[-1]
    assert pod["spec"]["containers"][0]["image"] == "registry.example/trainer:7"


def test_params_json_is_a_readable_block(capsys):
    code, out, _ = run_cli(capsys, "render", "-f", str(EXAMPLES / "sftjob-single-node.yaml"))
    assert code == 0
    assert "  params.json: |\n    {\n" in out


def test_invalid_manifest_names_every_bad_field_and_exits_1(capsys, tmp_path):
    manifest = yaml.safe_load((EXAMPLES / "sftjob-single-node.yaml").read_text())
    manifest["spec"]["nnodes"] = 0
    manifest["spec"]["training"]["isPretraining"] = True
    manifest["spec"]["training"]["learningRate"] = "fast"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code, out, err = run_cli(capsys, "render", "-f", str(path))
    assert code == 1 and out == ""
    assert "SFTJob 'qwen-sft-single' is invalid" in err
    assert "spec.nnodes:" in err
    assert "spec.training.learningRate:" in err


def test_cross_field_rule_is_reported(capsys, tmp_path):
    manifest = yaml.safe_load((EXAMPLES / "sftjob-single-node.yaml").read_text())
    manifest["spec"]["training"]["maxTokensPerGpu"] = 16
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code, _, err = run_cli(capsys, "render", "-f", str(path))
    assert code == 1
    assert "spec.training.maxTokensPerGpu: maxTokensPerGpu must be >= maxSeqLen" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: Deployment\napiVersion: apps/v1\n", "kind: must be SFTJob"),
        ("a: [unclosed\n", "not valid YAML"),
        ("", "holds no SFTJob"),
    ],
)
def test_unusable_files(capsys, tmp_path, content, message):
    path = tmp_path / "f.yaml"
    path.write_text(content)
    code, out, err = run_cli(capsys, "render", "-f", str(path))
    assert code == 1 and out == "" and message in err


def test_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "render", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1 and "cannot read" in err


def test_bad_attempt_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["render", "-f", "x", "--attempt", "-1"])
    assert caught.value.code == 2
    assert "--attempt: must be an integer >= 0" in capsys.readouterr().err


def test_bad_operator_environment_is_reported(capsys, monkeypatch):
    monkeypatch.setenv("SFTJOB_OPERATOR_IMAGE_PULL_POLICY", "Sometimes")
    code, _, err = run_cli(capsys, "render", "-f", str(EXAMPLES / "sftjob-single-node.yaml"))
    assert code == 1 and "SFTJOB_OPERATOR_IMAGE_PULL_POLICY" in err


def test_several_jobs_in_one_file(capsys, tmp_path):
    first = yaml.safe_load((EXAMPLES / "sftjob-single-node.yaml").read_text())
    second = yaml.safe_load((EXAMPLES / "sftjob-multi-node.yaml").read_text())
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([first, second]))
    code, out, _ = run_cli(capsys, "render", "-f", str(path))
    assert code == 0
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(out) if d["kind"] == "Pod"]
    assert names == ["qwen-sft-single-prepare-0", "qwen-sft-single-node-0", "llama-sft-4x8-prepare-0"] + [
        f"llama-sft-4x8-node-{r}" for r in range(4)]


def test_crd_prints_the_generated_crd(capsys):
    code, out, _ = run_cli(capsys, "crd")
    assert code == 0 and out == crd.render_crd_yaml()


def test_crd_check_detects_a_stale_file(capsys, tmp_path):
    current = tmp_path / "crd.yaml"
    current.write_text(crd.render_crd_yaml())
    assert run_cli(capsys, "crd", "--check", str(current))[0] == 0
    current.write_text(crd.render_crd_yaml().replace("sftjobs", "sftjobz", 1))
    code, _, err = run_cli(capsys, "crd", "--check", str(current))
    assert code == 1 and "out of date" in err


def test_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert caught.value.code == 2


def test_console_script_runs(tmp_path):
    script = Path(sys.executable).parent / "sftjob-operator"
    result = subprocess.run(
        [str(script), "render", "-f", str(EXAMPLES / "sftjob-single-node.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds == ["Service", "ConfigMap", "Pod", "Pod"]  # the prepare pod, then the single node
    assert api.KIND not in kinds
