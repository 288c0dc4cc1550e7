"""sft() end to end on CPU through the real instructlab-training `run_training`.

What runs for real: validation, the mapping, instructlab's data processing on a tiny local model
(chat data and pretraining documents), `run_training` and its launch of `torchrun`. Training itself
needs CUDA, so a stand-in `torchrun` (first on PATH) plays the launcher's possible outcomes: a
failure with an exit status, a "success" that saved nothing, a launch that cannot start, and a
run that leaves a checkpoint and metrics behind. The real trainer is proven on a GPU elsewhere.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from training_hub import TrainingFailedError, TrainingResult, sft
from training_hub.testing import EOS_TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# The exit status appears only in instructlab's own log record, not in the launcher's output.
# What a worker on a node without a GPU prints before torchrun gives up.
FAIL_WITH_3 = textwrap.dedent(
    """
    print("[rank0]: Traceback (most recent call last):", flush=True)
    print('[rank0]:   File "main_ds.py", line 880, in <module>', flush=True)
    print("[rank0]: RuntimeError: Found no NVIDIA driver on your system.", flush=True)
    print("worker failed", flush=True)
    raise SystemExit(3)
    """
)
SUCCEED_SILENTLY = "raise SystemExit(0)\n"

# Does what a finished instructlab run leaves behind: an hf_format checkpoint and the metrics file.
SUCCEED_WITH_CHECKPOINT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    out, model = Path(args["output_dir"]), Path(args["model_name_or_path"])
    for samples in (40, 80):
        shutil.copytree(model, out / "hf_format" / f"samples_{samples}", copy_function=shutil.copyfile)
    with open(out / "training_params_and_metrics_global0.jsonl", "w") as metrics:
        metrics.write(json.dumps({"num_epochs": int(args["num_epochs"])}) + "\\n")
        for step in (1, 2):
            metrics.write(json.dumps({"epoch": 1, "step": step, "avg_loss": 2.0 / step, "lr": 1e-4,
                                      "samples_seen": 40 * step}) + "\\n")
    print("trained", flush=True)
    """
)


def common(model, data, ckpt, **extra):
    return dict(model_path=str(model), data_path=str(data), ckpt_output_dir=str(ckpt), num_epochs=2,
                effective_batch_size=8, learning_rate=1e-4, max_seq_len=256, nproc_per_node=1,
                data_process_num_cpu_procs=1, **extra)


@contextmanager
def launcher_on_path(directory: Path, body: str, interpreter: str = sys.executable):
    """A `torchrun` with this script body first on PATH, for the duration of the block."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "torchrun"
    script.write_text(f"#!{interpreter}\n{body}")
    script.chmod(0o755)
    environ = os.environ  # datasets' multi-process map swaps os.environ for a copy: put the real one back
    # The only torchrun on PATH: a launch that fails on this one must not find another further on (an activated
    # virtualenv's), as exec's PATH search goes on after a missing interpreter.
    others = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if not (Path(entry) / "torchrun").exists()]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("PATH", os.pathsep.join([str(directory), *others]))
        try:
            yield script
        finally:
            os.environ = environ


@pytest.fixture(scope="module")
def chat_run(tiny_model, chat_data, tmp_path_factory):
    """sft() on chat data; the launcher fails with exit status 3 after real data processing."""
    root = tmp_path_factory.mktemp("chat_run")
    with launcher_on_path(root / "bin", FAIL_WITH_3):
        with pytest.raises(TrainingFailedError) as caught:
            sft(**common(tiny_model, chat_data, root / "ckpt"))
    return caught.value, root / "ckpt"


@pytest.fixture(scope="module")
def pretraining_run(tiny_model, pretraining_data, tmp_path_factory):
    """sft() in pretraining mode; the launcher exits 0 without training (as instructlab's swallowed errors do)."""
    root = tmp_path_factory.mktemp("pretraining_run")
    with launcher_on_path(root / "bin", SUCCEED_SILENTLY):
        with pytest.raises(RuntimeError) as caught:
            sft(**common(tiny_model, pretraining_data, root / "ckpt", is_pretraining=True, block_size=64))
    return caught.value, root / "ckpt"


def test_training_failure_carries_exit_status_and_log(chat_run):
    error, ckpt = chat_run
    log_path = ckpt / "full_logs_global0.log"
    assert isinstance(error, RuntimeError)
    assert error.exit_status == 3 and error.log_path == log_path and error.node_rank == 0
    message = str(error)
    assert message == (
        "training failed on node rank 0: torchrun ended with exit status 3. Cause: RuntimeError: Found no NVIDIA "
        f"driver on your system. (no usable GPU on this node). Log: {log_path}"
    )
    assert error.cause.startswith("RuntimeError: Found no NVIDIA driver")
    assert "worker failed" in log_path.read_text()


def _rendered(tokenizer, sample) -> str:
    return tokenizer.apply_chat_template(sample["messages"], tokenize=False)


def test_chat_data_trains_on_assistant_tokens_only(chat_run, tiny_model, chat_data):
    from transformers import AutoTokenizer

    _, ckpt = chat_run
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    samples = {_rendered(tokenizer, s): s for s in map(json.loads, chat_data.read_text().splitlines())}
    processed = [json.loads(line) for line in (ckpt / "data" / "data.jsonl").read_text().splitlines()]
    assert 0 < len(processed) <= len(samples)
    for record in processed:
        input_ids, labels = record["input_ids"], record["labels"]
        assert len(input_ids) == len(labels) == record["len"] and 20 <= record["len"] < 256
        assert all(label in (-100, token) for token, label in zip(input_ids, labels))
        source = samples[tokenizer.decode(input_ids)]  # the template rendered it verbatim
        trained = tokenizer.decode([token for token, label in zip(input_ids, labels) if label != -100])
        # exactly each assistant reply and its EOS; system/user turns and role markers masked
        assert trained == "".join(m["content"] + EOS_TOKEN for m in source["messages"] if m["role"] == "assistant")
        masked = tokenizer.decode([token for token, label in zip(input_ids, labels) if label == -100])
        for message in source["messages"]:
            if message["role"] != "assistant":
                assert message["content"] in masked
        assert "<|assistant|>" in masked and "<|user|>" in masked


def test_run_without_checkpoint_is_an_error(pretraining_run):
    error, ckpt = pretraining_run
    assert not isinstance(error, TrainingFailedError)
    assert str(error).startswith(
        f"training ended without saving a checkpoint under {ckpt / 'hf_format'}; see the log {ckpt / 'full_logs_global0.log'}"
    )


def test_pretraining_documents_become_blocks(pretraining_run, tiny_model, pretraining_data):
    from datasets import load_dataset
    from instructlab.training.sampler import PretrainingBlockDataset
    from transformers import AutoTokenizer

    _, ckpt = pretraining_run
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    documents = [json.loads(line)["document"] for line in pretraining_data.read_text().splitlines()]
    output = ckpt / "data" / "data.jsonl"
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == len(documents)
    for record, document in zip(records, documents):
        ids = record["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and record["len"] == len(ids)
        assert tokenizer.decode(ids[1:-1]) == document
    # what training then does with block_size=64 (instructlab's own block dataset)
    blocks = PretrainingBlockDataset(load_dataset("json", data_files=str(output), split="train"), 64,
                                     tokenizer.pad_token_id)
    all_ids = [token for record in records for token in record["input_ids"]]
    assert len(blocks) == -(-len(all_ids) // 64)
    rebuilt = []
    for index in range(len(blocks)):
        block = blocks[index]
        assert block["len"] == 64 and block["input_ids"].numel() == 64
        rebuilt += [t for t, label in zip(block["input_ids"].tolist(), block["labels"].tolist()) if label != -100]
    assert rebuilt == all_ids


def test_launch_failure_swallowed_by_instructlab_is_caught(tiny_model, chat_data, tmp_path):
    # the launcher exists but cannot start (its interpreter is missing): instructlab logs and returns None
    with launcher_on_path(tmp_path / "bin", SUCCEED_SILENTLY, "/nonexistent/python"), pytest.raises(RuntimeError) as caught:
        sft(**common(tiny_model, chat_data, tmp_path / "ckpt", process_data=False))
    assert str(caught.value).startswith(f"could not launch torchrun ({tmp_path / 'bin' / 'torchrun'}): ")
    assert str(caught.value).endswith("instructlab-training reported success without training")


def test_missing_torchrun_fails_before_data_processing(tiny_model, chat_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "elsewhere" / "python"))
    with pytest.raises(RuntimeError) as caught:
        sft(**common(tiny_model, chat_data, tmp_path / "ckpt"))
    assert str(caught.value) == (
        f"torchrun not found on PATH nor next to {tmp_path / 'elsewhere' / 'python'}; install torch in this "
        "environment (it provides torchrun) or put its bin directory on PATH"
    )
    assert not (tmp_path / "ckpt" / "data").exists()


def test_finished_run_returns_checkpoints_metrics_and_resume_point(tiny_model, chat_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    save_full_state_metadata(ckpt / "full_state" / "epoch_0", current_epoch=0, samples_seen=40)  # an earlier attempt
    with launcher_on_path(tmp_path / "bin", SUCCEED_WITH_CHECKPOINT):
        result = sft(**common(tiny_model, chat_data, ckpt, process_data=False))
    assert isinstance(result, TrainingResult)
    assert result.checkpoints == (ckpt / "hf_format" / "samples_40", ckpt / "hf_format" / "samples_80")
    assert result.final_checkpoint == ckpt / "hf_format" / "samples_80"
    assert result.metrics_path == ckpt / "training_params_and_metrics_global0.jsonl"
    assert result.last_metrics == {"epoch": 1, "step": 2, "avg_loss": 1.0, "lr": 1e-4, "samples_seen": 80}
    assert result.log_path == ckpt / "full_logs_global0.log" and "trained" in result.log_path.read_text()
    assert result.resumed_from_epoch == 0
    assert result.summary() == {"final_checkpoint": str(ckpt / "hf_format" / "samples_80"), "epoch": 1, "step": 2,
                                "loss": 1.0, "resumed_from_epoch": 0}
    # the checkpoint is a loadable model
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(result.final_checkpoint).num_parameters() == tiny_model.num_parameters


def save_full_state_metadata(path: Path, **metadata) -> Path:
    """instructlab's `training_metadata.json` (a torch pickle) for a full state."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    torch.save(metadata, path / "training_metadata.json")
    return path / "training_metadata.json"


def test_stale_checkpoint_is_not_taken_for_a_new_one(tiny_model, chat_data, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model.path, ckpt / "hf_format" / "samples_40")  # left by an earlier run
    with launcher_on_path(tmp_path / "bin", SUCCEED_SILENTLY):
        with pytest.raises(RuntimeError, match="^training ended without saving a checkpoint under"):
            sft(**common(tiny_model, chat_data, ckpt, process_data=False))
        # a mid-epoch (on-demand) state of the last epoch does not mean the run is finished
        save_full_state_metadata(ckpt / "full_state" / "epoch_1", current_epoch=1, samples_seen=60, global_step=7)
        with pytest.raises(RuntimeError, match="^training ended without saving a checkpoint under"):
            sft(**common(tiny_model, chat_data, ckpt, process_data=False))
        # ...but the end of the last epoch does (num_epochs=2: epochs 0 and 1)
        save_full_state_metadata(ckpt / "full_state" / "epoch_1", current_epoch=1, samples_seen=80)
        result = sft(**common(tiny_model, chat_data, ckpt, process_data=False))
    assert result.final_checkpoint == ckpt / "hf_format" / "samples_40" and result.resumed_from_epoch == 1


def test_on_demand_checkpoint_stop_is_reported_as_resumable(tiny_model, chat_data, tmp_path):
    from training_hub import TrainingInterruptedError

    # what a SIGTERM with on-demand checkpointing leaves: a mid-epoch full state, exit status 0
    metadata = save_full_state_metadata(tmp_path / "prepared", current_epoch=0, samples_seen=24, global_step=3)
    body = (f"import shutil, pathlib, sys\nout = pathlib.Path([a for a in sys.argv if a.startswith('--output_dir=')][0]"
            f".split('=', 1)[1])\n(out / 'full_state' / 'epoch_0').mkdir(parents=True)\n"
            f"shutil.copyfile({str(metadata)!r}, out / 'full_state' / 'epoch_0' / 'training_metadata.json')\n")
    ckpt = tmp_path / "ckpt"
    with launcher_on_path(tmp_path / "bin", body), pytest.raises(TrainingInterruptedError) as caught:
        sft(**common(tiny_model, chat_data, ckpt, process_data=False))
    assert isinstance(caught.value, RuntimeError)
    assert str(caught.value) == (
        f"training stopped in epoch 0 at step 3 after an on-demand checkpoint (saved under {ckpt / 'full_state'}); "
        "run again with the same ckpt_output_dir to resume from it"
    )


def test_data_longer_than_max_seq_len_is_a_parameter_error(tiny_model, chat_data, tmp_path):
    from training_hub import ParameterError

    with launcher_on_path(tmp_path / "bin", SUCCEED_SILENTLY), pytest.raises(ParameterError) as caught:
        sft(**{**common(tiny_model, chat_data, tmp_path / "ckpt"), "max_seq_len": 16})
    assert caught.value.problems == [
        f"max_seq_len: every sample of {chat_data} is longer than max_seq_len=16 tokens; raise max_seq_len"
    ]
