"""`training-hub sft` configuration handling: files, env, flags, and the INVALID_CONFIG contract."""

from __future__ import annotations

import json
import os
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
        "num_epochs: must be greater than or equal to 1 (got 0)",
        "learning_rate: must be greater than 0 (got -1)",
        "max_tokens_per_gpu: must be >= max_seq_len",
        "lerningRate: unknown parameter; did you mean 'learningRate'?",  # spelled as the config spells
        "rdzv_endpoint",
    ):
        assert expected in message


def test_backend_arguments_are_checked_here_too(tmp_path):
    params = cli.merge_settings(valid_params(tmp_path), {"adamwWeightDecay": 0.01, "extra_args": {"random_seed": 7}})
    request = cli.check_train_kwargs(params)
    assert request.params.extra_args == {"adamw_weight_decay": 0.01, "random_seed": 7}
    with pytest.raises(ParameterError) as caught:
        cli.check_train_kwargs(cli.merge_settings(valid_params(tmp_path), {"extra_args": {"random_sed": 7,
                                                                                          "adamw_eps": "tiny"}}))
    assert caught.value.problems == [
        "extra_args.random_sed: not a field of the backend's TrainingArgs; did you mean 'random_seed'?",
        "adamw_eps: must be a valid number (got 'tiny')",
    ]


def test_one_layer_with_both_spellings_is_an_error_naming_both():
    with pytest.raises(ParameterError) as caught:
        cli.merge_settings({"numEpochs": 5, "num_epochs": 1, "maxSeqLen": 8})
    assert caught.value.problems == ["num_epochs and numEpochs: two spellings of one parameter; give it once"]
    assert cli.merge_settings({"numEpochs": 5}, {"num_epochs": 1}) == {"num_epochs": 1}  # later layers still win


def test_yaml_numbers_are_yaml_1_2(tmp_path):
    (tmp_path / "p.yaml").write_text("learningRate: 1e-5\nwarmup: 2E3\nname: 1e\nversion: 1.2.3\n")
    assert cli.load_config_file(str(tmp_path / "p.yaml")) == {
        "learningRate": 1e-5, "warmup": 2000.0, "name": "1e", "version": "1.2.3"}


def test_missing_data_path_is_a_config_error(tmp_path):
    params = {**valid_params(tmp_path), "dataPath": str(tmp_path / "nope.jsonl")}
    with pytest.raises(ParameterError, match=r"data_path: no such file '.*nope.jsonl' \(resolved to"):
        cli.check_train_kwargs(cli.merge_settings(params))
    # reported together with the other problems, not one round later
    with pytest.raises(ParameterError) as caught:
        cli.check_train_kwargs(cli.merge_settings({**params, "numEpochs": 0}))
    assert [p.split(":")[0] for p in caught.value.problems] == ["num_epochs", "data_path"]


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
    assert "num_epochs: must be greater than or equal to 1 (got 0)" in done.stderr
    assert "block_size: must be a valid integer" in done.stderr
    summary = read_summary(tmp_path / "termination-log")
    assert summary["outcome"] == "invalid_config"
    assert "num_epochs" in summary["message"] and "block_size" in summary["message"]


@pytest.mark.timeout(60)
def test_missing_data_path_exits_78(tmp_path):
    config = write_params(tmp_path / "params.json", **{**valid_params(tmp_path), "dataPath": "/data/missing.jsonl"})
    done = run_cli(["sft", "--config", str(config)], env=_env(tmp_path), trainer="launch_fakes:must_not_run")
    assert done.returncode == 78
    summary = read_summary(tmp_path / "termination-log")
    assert summary == {"outcome": "invalid_config", "message": "invalid SFT parameters:\n  - data_path: no such file "
                       "'/data/missing.jsonl' (resolved to /data/missing.jsonl); it must be a local JSONL file, dataset "
                       "names from the Hugging Face Hub are not supported"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--config", "{dir}/absent.yaml"], {}, "absent.yaml: cannot read the file"),
        (["--num-epochs", "many"], {}, "argument --num-epochs: must be a whole number (got 'many')"),
        (["--learning-rate", "inf"], {}, "argument --learning-rate: must be a finite number (got 'inf')"),
        (["--nproc-per-node", "\uff18"], {}, "argument --nproc-per-node: must be a whole number (got '\uff18')"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--extra", "novalue"], {}, "--extra: expected NAME=VALUE"),
        ([], {"TRAINING_HUB_NODE_RANK": "first"}, "TRAINING_HUB_NODE_RANK: must be a whole number in ASCII digits"),
        ([], {"PET_NNODES": "1:4"}, "PET_NNODES: elastic node ranges"),
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
    assert kwargs["num_epochs"] == 2  # flag beat the file, typed by the flag
    assert kwargs["nproc_per_node"] == 2 and kwargs["nnodes"] == 1  # flag beat env; env filled in
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
    assert "model_path: required" in done.stderr and "num_epochs: must be greater than or equal to 1" in done.stderr


@pytest.mark.timeout(60)
def test_bad_data_exits_78_naming_file_and_line(tmp_path):
    params = valid_params(tmp_path)
    with open(params["dataPath"], "a") as data:
        data.write('{"text": "a line without messages"}\n')
    config = write_params(tmp_path / "params.json", **params)
    done = run_cli(["sft", "--config", str(config)], env=_env(tmp_path), trainer="launch_fakes:must_not_run")
    assert done.returncode == 78, done.stderr
    assert read_summary(tmp_path / "termination-log") == {"outcome": "invalid_config", "message": (
        f"invalid training data:\n  - data_path: {params['dataPath']} line 2: has no 'messages' field (keys: ['text']); "
        "chat data needs a list of messages")}


@pytest.mark.timeout(60)
def test_more_processes_than_gpus_exit_78_with_both_numbers(tmp_path):
    config = write_params(tmp_path / "params.json", **valid_params(tmp_path))
    env = _env(tmp_path, CUDA_VISIBLE_DEVICES="0,1")
    done = run_cli(["sft", "--config", str(config), "--nproc-per-node", "1000"], env=env,
                   trainer="launch_fakes:must_not_run")
    from training_hub.backends.instructlab import nvidia_device_count

    if nvidia_device_count() is None:  # no NVIDIA driver on this machine: nothing to count, training decides
        pytest.skip("no NVIDIA driver visible here")
    assert done.returncode == 78 and "nproc_per_node: 1000 processes asked for" in done.stderr


def _default_log_state():
    path = "/dev/termination-log"
    return (os.stat(path).st_mtime_ns, open(path, "rb").read()) if os.path.exists(path) else None


@pytest.mark.timeout(60)
def test_outside_a_pod_no_termination_log_is_written_unless_asked(tmp_path):
    env = {k: v for k, v in clean_env().items() if k != "KUBERNETES_SERVICE_HOST"}
    before = _default_log_state()
    for argv in (["sft", "--num-epochs", "0"], ["sft", "--no-such-flag"], []):
        done = run_cli(argv, env=env)
        assert done.returncode in (78, 2)
        assert "could not write the termination summary" not in done.stderr
    assert _default_log_state() == before


def test_inside_a_pod_the_default_path_is_the_kubelet_s():
    assert cli._termination_log(None, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == "/dev/termination-log"
    assert cli._termination_log(None, {}) is None
    assert cli._termination_log(None, {"TRAINING_HUB_TERMINATION_LOG": "/tmp/s"}) == "/tmp/s"


@pytest.mark.timeout(60)
def test_a_bare_command_prints_the_help_and_writes_nothing(tmp_path):
    done = run_cli([], env=clean_env())
    assert done.returncode == 2 and done.stderr == ""
    assert "COMMAND" in done.stdout and "78   invalid_config" in done.stdout
    version = run_cli(["--version"])
    from training_hub import __version__

    assert version.returncode == 0 and version.stdout.strip() == f"training-hub {__version__}"


@pytest.mark.timeout(60)
def test_help_shows_types_defaults_required_markers_and_exit_codes():
    text = " ".join(run_cli(["sft", "--help"]).stdout.split())
    for expected in ("--num-epochs INT", "--learning-rate FLOAT", "--model-path PATH", "--rdzv-endpoint HOST:PORT",
                     "Number of training epochs to run. Typical values: 1-10. (required, here or in --config)",
                     "(default: 'document')", "[TRAINING_HUB_NODE_RANK]", "PET_NNODES", "143 preempted",
                     "78 invalid_config"):
        assert expected in text, expected
    assert "docs/" not in text  # the help says it all: no pointer to files that are not installed


def test_version_names_the_installed_library(capsys):
    import training_hub

    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"training-hub {training_hub.__version__}"
