"""Every validation rule of sft()/SFTAlgorithm.train(), with the message a user sees.

The calls go through `SFTAlgorithm.validate` (what `train()` runs first), with the real backend's
TrainingArgs field names, so nothing here trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_hub import InstructLabTrainingSFTBackend, SFTAlgorithm
from training_hub.backends.training_args_fields import TRAINING_ARGS_FIELDS
from training_hub.params import (
    HOST_PORT_MESSAGE,
    RESERVED_BACKEND_ARGS,
    SFT_FIELDS,
    ParameterError,
    SFTParams,
    local_path_problems,
    parse_train_kwargs,
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    model = tmp_path / "model"
    model.mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    return {"model_path": str(model), "data_path": str(data), "ckpt_output_dir": str(tmp_path / "ckpt")}


@pytest.fixture
def valid(files: dict[str, str]) -> dict:
    return {**files, "num_epochs": 2, "effective_batch_size": 8, "learning_rate": 1e-5, "max_seq_len": 512}


def problems_of(**kwargs) -> list[str]:
    with pytest.raises(ParameterError) as caught:
        SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(kwargs)
    assert isinstance(caught.value, ValueError)
    return caught.value.problems


def only_problem(**kwargs) -> str:
    problems = problems_of(**kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def test_valid_call_gives_a_request(valid):
    request = SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(valid)
    assert request.params.num_epochs == 2 and request.params.max_tokens_per_gpu is None
    assert request.distributed.nnodes == 1 and request.distributed.nproc_per_node is None


@pytest.mark.parametrize("missing", ["num_epochs", "effective_batch_size", "learning_rate", "max_seq_len"])
def test_required_parameter_missing(valid, missing):
    del valid[missing]
    assert only_problem(**valid).startswith(f"{missing}: required (")


def test_required_paths_missing_reported_together():
    problems = problems_of(num_epochs=1, effective_batch_size=1, learning_rate=0.1, max_seq_len=10)
    assert [p.split(":")[0] for p in problems] == ["model_path", "data_path", "ckpt_output_dir"]
    assert all(": required (" in p for p in problems)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_epochs", 0, "num_epochs: must be greater than or equal to 1 (got 0)"),
        ("effective_batch_size", 0, "effective_batch_size: must be greater than or equal to 1 (got 0)"),
        ("learning_rate", 0, "learning_rate: must be greater than 0 (got 0)"),
        ("learning_rate", -1e-5, "learning_rate: must be greater than 0 (got -1e-05)"),
        ("max_seq_len", 0, "max_seq_len: must be greater than or equal to 1 (got 0)"),
        ("warmup_steps", -1, "warmup_steps: must be greater than or equal to 0 (got -1)"),
        ("save_samples", -5, "save_samples: must be greater than or equal to 0 (got -5)"),
        ("max_tokens_per_gpu", 0, "max_tokens_per_gpu: must be greater than or equal to 1 (got 0)"),
        ("nnodes", 0, "nnodes: must be greater than or equal to 1 (got 0)"),
        ("node_rank", -1, "node_rank: must be greater than or equal to 0 (got -1)"),
        ("nproc_per_node", 0, "nproc_per_node: must be greater than or equal to 1 (got 0)"),
        ("num_epochs", "three", "num_epochs: must be a valid integer (got 'three')"),
        ("is_pretraining", "maybe", "is_pretraining: must be a valid boolean (got 'maybe')"),
    ],
)
def test_range_and_type_rules(valid, field, value, message):
    assert only_problem(**{**valid, field: value}) == message


def test_max_tokens_per_gpu_must_hold_one_sequence(valid):
    assert only_problem(**{**valid, "max_tokens_per_gpu": 511}) == (
        "max_tokens_per_gpu: must be >= max_seq_len: one sample of max_seq_len tokens must fit on a GPU"
    )
    SFTAlgorithm(InstructLabTrainingSFTBackend()).validate({**valid, "max_tokens_per_gpu": 512})


def test_pretraining_needs_block_size(valid):
    assert only_problem(**{**valid, "is_pretraining": True}) == (
        "block_size: is required when is_pretraining is true (recommended start: 2048)"
    )
    documents = Path(valid["data_path"]).with_name("documents.jsonl")
    documents.write_text('{"document": "raw text"}\n')
    request = SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(
        {**valid, "data_path": str(documents), "is_pretraining": True, "block_size": 64})
    assert request.params.block_size == 64 and request.params.document_column_name == "document"


def test_checkpointing_cannot_be_switched_off_entirely(valid):
    assert only_problem(**{**valid, "checkpoint_at_epoch": False}) == (
        "save_samples: must be > 0 when checkpoint_at_epoch is false, otherwise no checkpoint is ever saved"
    )
    assert only_problem(**{**valid, "checkpoint_at_epoch": False, "save_samples": 0}).startswith("save_samples: must be > 0")
    SFTAlgorithm(InstructLabTrainingSFTBackend()).validate({**valid, "checkpoint_at_epoch": False, "save_samples": 64})


def test_node_rank_below_nnodes(valid):
    multi = {**valid, "nnodes": 2, "rdzv_id": "job-1", "rdzv_endpoint": "head:29500"}
    assert only_problem(**{**multi, "node_rank": 2}) == "node_rank: must be < nnodes (ranks are 0..nnodes-1)"


def test_multi_node_needs_endpoint_and_id(valid):
    assert sorted(problems_of(**{**valid, "nnodes": 2})) == [
        "rdzv_endpoint: rdzv_endpoint (host:port of node rank 0) is required when nnodes > 1",
        "rdzv_id: is required when nnodes > 1: every node must use the same id, a random default would differ",
    ]


@pytest.mark.parametrize("endpoint", ["head", "head:", ":29500", "head:0", "head:70000", "http://head:29500", "a b:1",
                                      "h_1:29500", "-head:1", "head:\uff12\uff19\uff15\uff10\uff10", "256.1.1.1:1",
                                      "[head]:1"])
def test_rdzv_endpoint_must_be_host_port(valid, endpoint):
    assert only_problem(**{**valid, "rdzv_endpoint": endpoint}) == (
        f'rdzv_endpoint: {HOST_PORT_MESSAGE} (got {endpoint!r})'
    )


def test_unbracketed_ipv6_endpoint_gets_the_bracketed_form(valid):
    assert only_problem(**{**valid, "rdzv_endpoint": "::1:29500"}) == (
        f"rdzv_endpoint: {HOST_PORT_MESSAGE}; write an IPv6 address in brackets: [::1]:29500 (got '::1:29500')"
    )


@pytest.mark.parametrize("endpoint", ["0.0.0.0:29500", "job-node-0.job.ns.svc:29500", "[fd00::1]:1", "[::1]:29500",
                                      "localhost:65535"])
def test_rdzv_endpoint_accepted(valid, endpoint):
    assert SFTAlgorithm(InstructLabTrainingSFTBackend()).validate({**valid, "rdzv_endpoint": endpoint})


def test_unknown_keyword_gets_did_you_mean(valid):
    assert only_problem(**{**valid, "lerning_rate": 1e-4}) == (
        "lerning_rate: unknown parameter; did you mean 'learning_rate'? "
        "(neither an SFT parameter nor a field of the backend's TrainingArgs)"
    )
    # the hint also covers TrainingArgs fields
    assert "did you mean 'adamw_weight_decay'?" in only_problem(**{**valid, "adamw_weight_decy": 0.1})
    assert only_problem(**{**valid, "zzz": 1}) == (
        "zzz: unknown parameter (neither an SFT parameter nor a field of the backend's TrainingArgs)"
    )


def test_real_training_args_fields_pass_to_the_backend(valid):
    request = SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(
        {**valid, "adamw_weight_decay": 0.1, "random_seed": 7, "extra_args": {"disable_flash_attn": True}}
    )
    assert request.params.extra_args == {"disable_flash_attn": True, "adamw_weight_decay": 0.1, "random_seed": 7}


def test_extra_args_checked_against_training_args(valid):
    assert only_problem(**{**valid, "extra_args": {"random_sed": 1}}) == (
        "extra_args.random_sed: not a field of the backend's TrainingArgs; did you mean 'random_seed'?"
    )
    assert only_problem(**{**valid, "extra_args": [1, 2]}) == (
        "extra_args: must be a mapping of TrainingArgs field names to values (got [1, 2])"
    )


@pytest.mark.parametrize("name", sorted(RESERVED_BACKEND_ARGS))
def test_backend_fields_set_by_sft_parameters_are_refused(valid, name):
    assert only_problem(**{**valid, name: 1}) == f"{name}: set through {RESERVED_BACKEND_ARGS[name]}, not directly"


def test_every_problem_is_reported_at_once(valid, tmp_path):
    problems = problems_of(
        **{**valid, "data_path": str(tmp_path / "missing.jsonl"), "num_epochs": 0, "learning_rate": -1,
           "max_tokens_per_gpu": 10, "nnodes": 2, "node_rank": 5, "rdzv_endpoint": "nohost", "lerning_rate": 1}
    )
    fields = sorted(p.split(":")[0] for p in problems)
    assert fields == sorted(
        ["lerning_rate", "num_epochs", "learning_rate", "max_tokens_per_gpu", "rdzv_endpoint", "node_rank", "rdzv_id",
         "data_path"]
    )
    assert str(ParameterError(problems)).startswith("invalid SFT parameters:\n  - ")


def test_camel_case_names_accepted(valid):
    camel = {"modelPath": valid["model_path"], "dataPath": valid["data_path"], "ckptOutputDir": valid["ckpt_output_dir"],
             "numEpochs": 1, "effectiveBatchSize": 4, "learningRate": 1e-4, "maxSeqLen": 64, "maxTokensPerGpu": 128,
             "nprocPerNode": 2}
    request = SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(camel)
    assert request.params.max_tokens_per_gpu == 128 and request.distributed.nproc_per_node == 2


# --- local paths -----------------------------------------------------------------------------------


def test_missing_data_path_is_a_clear_error(valid, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert only_problem(**{**valid, "data_path": "org/dataset"}) == (
        f"data_path: no such file 'org/dataset' (resolved to {tmp_path / 'org/dataset'}); it must be a local JSONL "
        "file, dataset names from the Hugging Face Hub are not supported"
    )


def test_data_path_directory_refused(valid, tmp_path):
    assert only_problem(**{**valid, "data_path": str(tmp_path)}) == (
        f"data_path: {str(tmp_path)!r} is a directory; expected a JSONL file"
    )


def test_model_path_local_or_hub_id(valid, tmp_path):
    assert only_problem(**{**valid, "model_path": str(tmp_path / "nope")}) == (
        f"model_path: no such directory {str(tmp_path / 'nope')!r} (resolved to {tmp_path / 'nope'}), and not a "
        "Hugging Face model id of the form 'org/name'"
    )
    assert only_problem(**{**valid, "model_path": valid["data_path"]}) == (
        f"model_path: {valid['data_path']!r} is a file; expected a Hugging Face model directory"
    )
    # a Hub id is fine: instructlab downloads it
    assert SFTAlgorithm(InstructLabTrainingSFTBackend()).validate({**valid, "model_path": "Qwen/Qwen2.5-0.5B-Instruct"})


def test_output_dirs_must_be_creatable(valid):
    data_file = valid["data_path"]
    assert only_problem(**{**valid, "ckpt_output_dir": data_file}) == (
        f"ckpt_output_dir: {data_file!r} exists and is not a directory"
    )
    assert only_problem(**{**valid, "data_output_dir": data_file + "/sub"}) == (
        f"data_output_dir: cannot create {data_file + '/sub'!r}: {data_file!r} is not a directory"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_ckpt_dir(valid, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert only_problem(**{**valid, "ckpt_output_dir": str(locked / "ckpt")}) == (
        f"ckpt_output_dir: cannot create {str(locked / 'ckpt')!r}: {str(locked)!r} is not writable"
    )


def test_path_problems_never_need_the_model():
    assert local_path_problems({"dataPath": "/definitely/not/here.jsonl"})[0].startswith("data_path: no such file")
    assert local_path_problems({"data_path": 3}) == []  # type errors are the field validation's job


@pytest.mark.timeout(120)
def test_bad_call_fails_before_anything_heavy(tmp_path):
    """A wrong data path is reported in milliseconds: neither torch nor instructlab get imported."""
    code = (
        "import sys, training_hub\n"
        "try:\n"
        f"    training_hub.sft(model_path={str(tmp_path)!r}, data_path='missing.jsonl', ckpt_output_dir={str(tmp_path)!r},"
        " num_epochs=1, effective_batch_size=1, learning_rate=1e-5, max_seq_len=64)\n"
        "except ValueError as exc:\n"
        "    print(str(exc).splitlines()[1])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'instructlab') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["  - data_path: no such file 'missing.jsonl' (resolved to "
                                       f"{tmp_path / 'missing.jsonl'}); it must be a local JSONL file, dataset names "
                                       "from the Hugging Face Hub are not supported", "[]"]


# --- the model behind it ---------------------------------------------------------------------------


def test_crd_schema_carries_the_checkpoint_rule():
    rules = SFTParams.model_json_schema(by_alias=True)["x-kubernetes-validations"]
    rule = next(r for r in rules if r["fieldPath"] == ".saveSamples")
    assert "checkpointAtEpoch" in rule["rule"] and rule["message"].startswith("saveSamples must be > 0")


def test_training_args_reachable_by_name():
    """Every TrainingArgs field is either set by an SFT parameter, reserved for one, or passable by name."""
    from training_hub.backends.instructlab import training_args_field_names

    names = training_args_field_names()
    assert {"adamw_weight_decay", "random_seed", "disable_flash_attn", "distributed_backend"} <= names
    passable = names - SFT_FIELDS - set(RESERVED_BACKEND_ARGS)
    assert passable and not (passable & SFT_FIELDS)
    from instructlab.training import TrainingArgs

    defaults = {name: TrainingArgs.model_fields[name].get_default(call_default_factory=True) for name in passable}
    given = {name: value for name, value in defaults.items() if value is not None}
    assert len(given) > 20
    for name, value in given.items():  # each one's own default passes the check of its type
        assert parse_train_kwargs(
            {"model_path": "m", "data_path": "d", "ckpt_output_dir": "c", "num_epochs": 1, "effective_batch_size": 1,
             "learning_rate": 1.0, "max_seq_len": 8, name: value}, TRAINING_ARGS_FIELDS
        ).params.extra_args == {name: value}


def test_extra_args_cannot_override_sft_parameters(valid):
    assert only_problem(**{**valid, "extra_args": {"num_epochs": 5}}) == (
        "extra_args.num_epochs: is a parameter of its own; set num_epochs directly"
    )
    assert only_problem(**{**valid, "extraArgs": {"nodeRank": 1}}) == (
        "extra_args.nodeRank: is a parameter of its own; set node_rank directly"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("extra", "problem"), [
    ("adamw_wieght_decay=0.1", "adamw_wieght_decay: unknown parameter; did you mean 'adamw_weight_decay'?"),
    ("max_tokens_per_gpu=True", "max_tokens_per_gpu: must be a valid integer (got True)"),
    ("random_seed='7'", "random_seed: must be a valid integer (got '7')"),
    ("numEpochs=5", "num_epochs and numEpochs: two spellings of one parameter; give it once"),
])
def test_every_configuration_error_comes_before_anything_heavy(tmp_path, extra, problem):
    """Unknown keywords and bad backend values too: no instructlab import to learn TrainingArgs' fields."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    code = (
        "import sys, training_hub\n"
        "try:\n"
        f"    training_hub.sft({str(tmp_path)!r}, {str(data)!r}, {str(tmp_path / 'ckpt')!r}, num_epochs=1,"
        f" effective_batch_size=1, learning_rate=1e-5, max_seq_len=64, {extra})\n"
        "except ValueError as exc:\n"
        "    print(str(exc).splitlines()[1])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'instructlab') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("  - " + problem) and out.stdout.splitlines()[1] == "[]"


def test_hints_are_spelled_as_the_name_was_and_never_absurd(valid):
    assert problems_of(**{**valid, "lr": 1e-4})[0].startswith("lr: unknown parameter; did you mean 'learning_rate'?")
    assert "did you mean 'maxSeqLen'?" in problems_of(**{**valid, "maxSeqLength": 8})[0]
    assert problems_of(**{**valid, "adam_beta1": 0.9}) == [
        "adam_beta1: unknown parameter; did you mean 'adamw_betas=(beta1, beta2)'? (neither an SFT parameter nor a "
        "field of the backend's TrainingArgs)"]
    assert "did you mean 'adamw_weight_decay'?" in problems_of(**{**valid, "weight_decay": 0.1})[0]
    assert "did you" not in problems_of(**{**valid, "lo": 1})[0]  # too short to guess (not "lora")


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("num_epochs", True, "num_epochs: must be a valid integer (got True)"),
    ("learning_rate", True, "learning_rate: must be a valid number (got True)"),
    ("learning_rate", float("inf"), "learning_rate: must be a finite number (got inf)"),
    ("learning_rate", "1e-5", "learning_rate: must be a valid number (got '1e-5')"),
    ("checkpoint_at_epoch", "yes", "checkpoint_at_epoch: must be a valid boolean (got 'yes')"),
    ("max_seq_len", "512", "max_seq_len: must be a valid integer (got '512')"),
    ("data_path", b"train.jsonl", "data_path: must be a valid string (got b'train.jsonl')"),
    ("nnodes", 1.0, "nnodes: must be a valid integer (got 1.0)"),
])
def test_no_lax_coercions(valid, name, value, problem):
    assert only_problem(**{**valid, name: value}) == problem


def test_paths_may_be_pathlike(valid):
    request = SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(
        {**valid, **{name: Path(valid[name]) for name in ("model_path", "data_path", "ckpt_output_dir")}})
    assert request.params.data_path == valid["data_path"] and isinstance(request.params.data_path, str)


def test_over_long_paths_are_configuration_errors(valid):
    long = "/tmp/" + "x" * 300 + "/ckpt"
    assert only_problem(**{**valid, "ckpt_output_dir": long}) == (
        "ckpt_output_dir: each part of the path between slashes must be at most 255 characters (bytes in UTF-8); "
        f"one has 300 (got {long!r})")
    assert only_problem(**{**valid, "ckpt_output_dir": "/tmp/" + "\u00e9" * 200}).startswith(
        "ckpt_output_dir: each part of the path between slashes must be at most 255 characters (bytes in UTF-8); "
        "one has 400")


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs /sys")
def test_writability_is_tried_not_guessed(valid):
    """Root passes os.access() for /sys, yet nothing can be created there."""
    problem = only_problem(**{**valid, "ckpt_output_dir": "/sys/ckpt"})
    assert problem.startswith("ckpt_output_dir: cannot create '/sys/ckpt': '/sys' is not writable (")


def test_library_honours_the_launcher_environment(valid):
    request = SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(
        valid, environ={"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_RDZV_ENDPOINT": "10.0.0.1:29500"})
    assert (request.distributed.nnodes, request.distributed.node_rank) == (2, 1)
    assert request.distributed.rdzv_endpoint == "10.0.0.1:29500" and request.distributed.rdzv_id == "10.0.0.1:29500"
    explicit = SFTAlgorithm(InstructLabTrainingSFTBackend()).validate(
        {**valid, "nnodes": 1, "node_rank": 0}, environ={"PET_NNODES": "2", "PET_NODE_RANK": "1"})
    assert (explicit.distributed.nnodes, explicit.distributed.node_rank) == (1, 0)  # the call wins


def test_algorithm_keyword_defaults_are_checked_at_once():
    with pytest.raises(ParameterError, match="lerning_rate: unknown parameter; did you mean 'learning_rate'"):
        SFTAlgorithm(InstructLabTrainingSFTBackend(), lerning_rate=1e-5)
