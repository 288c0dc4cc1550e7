"""`training-hub sft` configuration handling: files, env, flags, and the INVALID_CONFIG contract."""

from __future__ import annotations

import json
import signal
import sys

import pytest
from launch_helpers import clean_env, read_summary, run_cli, valid_params, write_params

from training_hub.launch import cli
from training_hub.launch.exit_codes import Outcome
from training_hub.launch.supervisor import ChildExit
from training_hub.params import ParameterError


# ------------------------------------------------------------------ pure pieces


def test_config_file_json_and_yaml(tmp_path):
    (tmp_path / "p.json").write_text('{"numEpochs": 2}')
    (tmp_path / "p.yaml").write_text("numEpochs: 2\nlearning_rate: 1.0e-5\n")
    assert cli.load_config_file(str(tmp_path / "p.json")) == {"numEpochs": 2}
    assert cli.load_config_file(str(tmp_path / "p.yaml")) == {"numEpochs": 2, "learning_rate": 1e-5}


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.yaml", "a: [1, 2", "not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping of parameter names to values (got list)"),
        ("missing.json", None, "cannot read the file"),
    ],
)
def test_config_file_problems_name_the_file(tmp_path, name, content, problem):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(cli.ConfigError) as caught:
        cli.load_config_file(str(tmp_path / name))
    assert f"--config {tmp_path / name}" in str(caught.value) and problem in str(caught.value)


def test_later_layers_win_whatever_the_spelling():
    merged = cli.merge_settings(
        {"numEpochs": 1, "nnodes": 1, "extraArgs": {"random_seed": 1}, "adamw_weight_decay": 0.1},
        {"nnodes": 4, "node_rank": 2},  # environment
        {"num_epochs": "3", "nodeRank": "1"},  # flags
    )
    assert merged == {"num_epochs": "3", "nnodes": 4, "extra_args": {"random_seed": 1}, "adamw_weight_decay": 0.1, "node_rank": "1"}


def test_check_collects_every_problem_and_names_each_field(tmp_path):
    params = valid_params(tmp_path)
    params.update(numEpochs=0, learningRate=-1, maxTokensPerGpu=16, lerningRate=3)
    with pytest.raises(ParameterError) as caught:
        cli.check_train_kwargs(cli.merge_settings(params, {"nnodes": 2}))
    message = str(caught.value)
    for expected in (
        "num_epochs: input should be greater than or equal to 1 (got 0)",
        "learning_rate: input should be greater than 0 (got -1)",
        "max_tokens_per_gpu: must be >= max_seq_len",
        "lerningRate: unknown parameter; did you mean 'learning_rate'?",
        "rdzv_endpoint",
    ):
        assert expected in message


def test_backend_argument_names_are_left_for_the_trainer(tmp_path):
    params = cli.merge_settings(valid_params(tmp_path), {"adamw_weight_decay": 0.01, "extra_args": {"random_seed": 7}})
    request = cli.check_train_kwargs(params)
    assert request.params.extra_args == {"adamw_weight_decay": 0.01, "random_seed": 7}


def test_missing_data_path_is_a_config_error(tmp_path):
    params = {**valid_params(tmp_path), "dataPath": str(tmp_path / "nope.jsonl")}
    with pytest.raises(ParameterError, match=r"data_path: no such file or directory: '.*nope.jsonl'"):
        cli.check_train_kwargs(cli.merge_settings(params))
    # reported together with the other problems, not one round later
    with pytest.raises(ParameterError) as caught:
        cli.check_train_kwargs(cli.merge_settings({**params, "numEpochs": 0}))
    assert [p.split(":")[0] for p in caught.value.problems] == ["num_epochs", "data_path"]


@pytest.mark.slow
def test_no_backend_training_argument_is_mistaken_for_a_typo():
    """The eager typo check must never reject a real TrainingArgs field of the installed instructlab."""
    from instructlab.training import TrainingArgs

    from training_hub.params import DISTRIBUTED_FIELDS, SFT_FIELDS

    near_misses = [name for name in TrainingArgs.model_fields if name not in SFT_FIELDS | DISTRIBUTED_FIELDS and cli.looks_like_typo(name)]
    assert near_misses == []


def test_progress_comes_from_local_rank_0_of_this_node():
    assert cli.progress_global_rank(0, None) == 0
    assert cli.progress_global_rank(2, 8) == 16
    assert cli.progress_global_rank(1, None) is None  # unknown GPU count: no file to follow


@pytest.mark.parametrize(
    ("child", "report", "expected"),
    [
        (ChildExit(0, None, False), {"status": "succeeded", "message": "training finished"}, (Outcome.SUCCEEDED, 0)),
        (ChildExit(1, None, False), {"status": "failed", "message": "RuntimeError: x"}, (Outcome.FAILED, 1)),
        (ChildExit(78, None, False), {"status": "invalid_config", "message": "ParameterError"}, (Outcome.INVALID_CONFIG, 78)),
        (ChildExit(-9, None, False), None, (Outcome.FAILED, 137)),
        (ChildExit(0, None, False), None, (Outcome.FAILED, 1)),  # exited 0 without a result: not a success
        # SIGTERM while training: preempted, even when the trainer then exits 0 (on-demand checkpointing)
        (ChildExit(0, signal.SIGTERM, False), {"status": "succeeded"}, (Outcome.PREEMPTED, 143)),
        (ChildExit(1, signal.SIGTERM, False), {"status": "failed", "message": "interrupted"}, (Outcome.PREEMPTED, 143)),
        (ChildExit(-15, signal.SIGTERM, False), None, (Outcome.PREEMPTED, 143)),
        (ChildExit(130, signal.SIGINT, False), None, (Outcome.PREEMPTED, 130)),
        # the signal came after training had returned: it did finish
        (ChildExit(0, signal.SIGTERM, True), {"status": "succeeded"}, (Outcome.SUCCEEDED, 0)),
    ],
)
def test_outcome_decision(child, report, expected):
    outcome, code, message = cli.decide_training_outcome(child, report)
    assert (outcome, code) == expected
    assert message


def test_summary_prefers_the_result_and_falls_back_to_the_last_progress_line():
    report = {"status": "succeeded", "result": {
        "final_checkpoint": "/c/hf_format/samples_64", "resumed_from_epoch": 0,
        "last_metrics": {"epoch": 1, "step": 40, "avg_loss": 1.23, "lr": 1e-5, "samples_seen": 64},
    }}
    summary = cli.training_summary(Outcome.SUCCEEDED, "ok", report, {"epoch": 0, "step": 3, "loss": 9.0})
    assert summary == {"outcome": "succeeded", "message": "ok", "final_checkpoint": "/c/hf_format/samples_64",
                       "epoch": 1, "step": 40, "loss": 1.23, "resumed_from_epoch": 0}
    failed = cli.training_summary(Outcome.FAILED, "boom", None, {"event": "progress", "epoch": 0, "step": 3, "loss": 9.0})
    assert failed == {"outcome": "failed", "message": "boom", "epoch": 0, "step": 3, "loss": 9.0}


# ------------------------------------------------------------------ the real command, in a real process


def _env(tmp_path, **extra):
    return clean_env(TRAINING_HUB_TERMINATION_LOG=str(tmp_path / "termination-log"), **extra)


@pytest.mark.timeout(60)
def test_invalid_config_exits_78_names_the_fields_and_writes_the_summary(tmp_path):
    config = write_params(tmp_path / "params.json", **{**valid_params(tmp_path), "numEpochs": 0, "blockSize": "big"})
    done = run_cli(["sft", "--config", str(config)], env=_env(tmp_path), trainer="launch_fakes:must_not_run")
    assert done.returncode == 78
    assert "num_epochs: input should be greater than or equal to 1 (got 0)" in done.stderr
    assert "block_size: input should be a valid integer" in done.stderr
    summary = read_summary(tmp_path / "termination-log")
    assert summary["outcome"] == "invalid_config"
    assert "num_epochs" in summary["message"] and "block_size" in summary["message"]


@pytest.mark.timeout(60)
def test_missing_data_path_exits_78(tmp_path):
    config = write_params(tmp_path / "params.json", **{**valid_params(tmp_path), "dataPath": "/data/missing.jsonl"})
    done = run_cli(["sft", "--config", str(config)], env=_env(tmp_path), trainer="launch_fakes:must_not_run")
    assert done.returncode == 78
    summary = read_summary(tmp_path / "termination-log")
    assert summary == {"outcome": "invalid_config", "message": "invalid SFT parameters:\n  - data_path: no such file or directory: '/data/missing.jsonl' (a JSONL file or a directory of them)"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--config", "{dir}/absent.yaml"], {}, "absent.yaml: cannot read the file"),
        (["--num-epochs", "many"], {}, "num_epochs: input should be a valid integer"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--extra", "novalue"], {}, "--extra: expected NAME=VALUE"),
        ([], {"TRAINING_HUB_NODE_RANK": "first"}, "TRAINING_HUB_NODE_RANK: must be an integer"),
        ([], {"TRAINING_HUB_NNODES": "2", "TRAINING_HUB_NODE_RANK": "2", "TRAINING_HUB_RDZV_ENDPOINT": "h:1", "TRAINING_HUB_RDZV_ID": "x"}, "node_rank: must be < nnodes"),
        ([], {"TRAINING_HUB_NNODES": "2", "TRAINING_HUB_RDZV_ENDPOINT": "h:1", "TRAINING_HUB_RDZV_ID": "x", "TRAINING_HUB_RDZV_TIMEOUT": "0"}, "TRAINING_HUB_RDZV_TIMEOUT: must be a number"),
        ([], {"TRAINING_HUB_RDZV_ENDPOINT": "no-port"}, "rdzv_endpoint: must be \"host:port\""),
    ],
)
def test_bad_flags_and_environment_exit_78(tmp_path, args, env, named):
    config = write_params(tmp_path / "params.json", **valid_params(tmp_path))
    argv = ["sft", "--config", str(config), *[a.format(dir=tmp_path) for a in args]]
    done = run_cli(argv, env=_env(tmp_path, **env), trainer="launch_fakes:must_not_run")
    assert done.returncode == 78, done.stderr
    assert named in done.stderr
    summary = read_summary(tmp_path / "termination-log")
    assert summary["outcome"] == "invalid_config" and named in summary["message"]


@pytest.mark.timeout(60)
def test_unwritable_termination_log_still_exits_78(tmp_path):
    config = write_params(tmp_path / "params.json", **{**valid_params(tmp_path), "numEpochs": 0})
    env = clean_env(TRAINING_HUB_TERMINATION_LOG=str(tmp_path / "no-dir" / "log"))
    done = run_cli(["sft", "--config", str(config)], env=env, trainer="launch_fakes:must_not_run")
    assert done.returncode == 78
    assert "could not write the termination summary" in done.stderr


@pytest.mark.timeout(60)
def test_flags_win_over_file_and_environment_and_reach_the_trainer(tmp_path):
    params = {**valid_params(tmp_path), "numEpochs": 5, "extraArgs": {"random_seed": 1}}
    config = tmp_path / "params.yaml"
    config.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in params.items()))
    kwargs_out = tmp_path / "kwargs.json"
    env = _env(tmp_path, TRAINING_HUB_NPROC_PER_NODE="4", TRAINING_HUB_NNODES="1", FAKE_KWARGS_OUT=str(kwargs_out), FAKE_STEPS="1")
    done = run_cli(
        ["sft", "--config", str(config), "--num-epochs", "2", "--nproc-per-node", "2", "--no-checkpoint-at-epoch", "--save-samples", "16",
         "--extra", "adamw_weight_decay=0.01", "--extra", "disable_flash_attn=true"],
        env=env, trainer="launch_fakes:succeed",
    )
    assert done.returncode == 0, done.stderr
    kwargs = json.loads(kwargs_out.read_text())
    assert kwargs["num_epochs"] == "2"  # flag beat the file (the library validates "2" as 2)
    assert kwargs["nproc_per_node"] == "2" and kwargs["nnodes"] == 1  # flag beat env; env filled in
    assert kwargs["checkpoint_at_epoch"] is False
    assert kwargs["extra_args"] == {"random_seed": 1, "adamw_weight_decay": 0.01, "disable_flash_attn": True}
    assert kwargs["model_path"] == params["modelPath"]  # camelCase file keys arrive snake_case


@pytest.mark.timeout(60)
def test_params_reference_lists_every_field():
    done = run_cli(["params"])
    assert done.returncode == 0
    from training_hub.params import DistributedParams, SFTParams

    for name in [*SFTParams.model_fields, *DistributedParams.model_fields]:
        assert f"  {name} (" in done.stdout


def test_importing_the_cli_stays_light():
    import subprocess

    code = "import sys, training_hub.launch.cli; print(sorted(m for m in ('torch', 'transformers', 'instructlab', 'kopf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.timeout(60)
def test_console_script_is_installed_and_runs(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    script = shutil.which("training-hub") or str(Path(sys.executable).parent / "training-hub")
    done = subprocess.run([script, "sft", "--num-epochs", "0"], capture_output=True, text=True, timeout=60,
                          env=clean_env(TRAINING_HUB_TERMINATION_LOG=str(tmp_path / "log")))
    assert done.returncode == 78
    assert "model_path: required" in done.stderr and "num_epochs: input should be greater than or equal to 1" in done.stderr


def test_version_names_the_installed_library(capsys):
    import training_hub

    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"training-hub {training_hub.__version__}"
