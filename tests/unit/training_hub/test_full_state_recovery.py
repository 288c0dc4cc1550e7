"""Resuming after a pod was killed while instructlab-training saved a full state.

The full states here are written by instructlab's own `save_full_state` (with a CPU `Accelerator`),
and resumption is checked with instructlab's own `load_latest_full_state`, each in a fresh process.
An interrupted save is what such a save leaves before its last write: the folder without
`training_metadata.json`, with it truncated (killed during that write), or still empty.
"""

from __future__ import annotations

import filecmp
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training_hub.backends.instructlab import (
    INCOMPLETE_FULL_STATES_DIR,
    full_state_is_complete,
    latest_full_state_epoch,
    read_full_state,
    set_aside_incomplete_full_states,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INSTRUCTLAB_STATE_TOOL = textwrap.dedent(
    """
    import argparse, json, sys
    import torch
    from accelerate import Accelerator
    from instructlab.training.utils import load_latest_full_state, save_full_state

    mode, output_dir = sys.argv[1], sys.argv[2]
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    accelerator.prepare(model, optimizer, scheduler)
    if mode == "save":
        for epoch in map(int, sys.argv[3:]):
            args = argparse.Namespace(output_dir=output_dir, distributed_training_framework="fsdp")
            save_full_state(args, accelerator, is_lora=False, epoch=epoch, samples_seen=8 * (epoch + 1))
    else:
        args = argparse.Namespace(output_dir=output_dir)
        load_latest_full_state(args=args, accelerator=accelerator)
        resumed = {key: args.__dict__.get(key) for key in ("current_epoch", "samples_seen")}
        print("RESUMED " + json.dumps(resumed), flush=True)
    """
)


def instructlab_state_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", INSTRUCTLAB_STATE_TOOL, *args], capture_output=True, text=True,
                          timeout=240)


def instructlab_resume(ckpt: Path) -> dict:
    """Where instructlab's own resume code starts training in `ckpt` (fails the test if it crashes)."""
    run = instructlab_state_tool("resume", str(ckpt))
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.split("RESUMED ", 1)[1])


@pytest.fixture(scope="module")
def saved_states(tmp_path_factory) -> Path:
    """A checkpoint directory holding complete full states of epochs 0, 1 and 2, saved by instructlab."""
    ckpt = tmp_path_factory.mktemp("saved") / "ckpt"
    run = instructlab_state_tool("save", str(ckpt), "0", "1", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    return ckpt


def interrupt_save(state_dir: Path, how: str) -> None:
    metadata = state_dir / "training_metadata.json"
    if how == "before the metadata":
        metadata.unlink()
    elif how == "during the metadata":
        metadata.write_bytes(metadata.read_bytes()[:40])
    elif how == "right after mkdir":
        shutil.rmtree(state_dir)
        state_dir.mkdir()
    else:
        raise ValueError(how)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_save_by_instructlab_is_complete(saved_states):
    assert {p.name for p in (saved_states / "full_state" / "epoch_2").iterdir()} >= {
        "training_metadata.json", "model.safetensors", "optimizer.bin", "scheduler.bin"}
    assert all(full_state_is_complete(saved_states / "full_state" / f"epoch_{epoch}") for epoch in (0, 1, 2))
    assert latest_full_state_epoch(saved_states) == 2
    assert instructlab_resume(saved_states) == {"current_epoch": 3, "samples_seen": 24}


@pytest.mark.parametrize("how", ["before the metadata", "during the metadata", "right after mkdir"])
def test_interrupted_newest_save_is_set_aside_and_the_previous_state_resumes(saved_states, tmp_path, caplog, how):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_states, ckpt)
    interrupt_save(ckpt / "full_state" / "epoch_2", how)
    left_by_the_kill = files_of(ckpt / "full_state" / "epoch_2")
    assert not full_state_is_complete(ckpt / "full_state" / "epoch_2")
    crash = instructlab_state_tool("resume", str(ckpt))  # what every restart of the gang would hit
    assert crash.returncode != 0
    assert ("No such file" if how == "right after mkdir" else "training_metadata.json") in crash.stderr
    assert latest_full_state_epoch(ckpt) == 1  # counted before anything moves

    with caplog.at_level(logging.WARNING, logger="training_hub"):
        moved = set_aside_incomplete_full_states(ckpt)

    assert [(item.epoch, item.source) for item in moved] == [(2, ckpt / "full_state" / "epoch_2")]
    destination = moved[0].destination
    assert destination.parent == ckpt / INCOMPLETE_FULL_STATES_DIR and destination.name.startswith("epoch_2-")
    assert files_of(destination) == left_by_the_kill  # kept as it was, not deleted
    assert sorted(p.name for p in (ckpt / "full_state").iterdir()) == ["epoch_0", "epoch_1"]
    assert latest_full_state_epoch(ckpt) == 1 and read_full_state(ckpt).epoch == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"{ckpt / 'full_state' / 'epoch_2'} is an incomplete full state (no readable training_metadata.json: its "
        f"save was interrupted); moved it to {destination}. Training resumes from the full state of epoch 1."]
    # instructlab's own resume now starts after epoch 1, and the folder set aside does not disturb it
    assert instructlab_resume(ckpt) == {"current_epoch": 2, "samples_seen": 16}


def test_complete_states_are_left_alone(saved_states, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_states, ckpt)
    # an older interrupted save below a complete one: instructlab never picks it, so it stays
    interrupt_save(ckpt / "full_state" / "epoch_0", "before the metadata")
    before = {p.name: files_of(p) for p in (ckpt / "full_state").iterdir()}

    assert set_aside_incomplete_full_states(ckpt) == []

    assert {p.name: files_of(p) for p in (ckpt / "full_state").iterdir()} == before
    assert not (ckpt / INCOMPLETE_FULL_STATES_DIR).exists()
    assert latest_full_state_epoch(ckpt) == 2 and read_full_state(ckpt).epoch == 2
    assert instructlab_resume(ckpt) == {"current_epoch": 3, "samples_seen": 24}


def test_only_interrupted_saves_means_training_starts_over(saved_states, tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    (ckpt / "full_state").mkdir(parents=True)
    shutil.copytree(saved_states / "full_state" / "epoch_0", ckpt / "full_state" / "epoch_0")
    interrupt_save(ckpt / "full_state" / "epoch_0", "during the metadata")
    assert set_aside_incomplete_full_states(tmp_path / "no_such_ckpt") == []

    with caplog.at_level(logging.WARNING, logger="training_hub"):
        moved = set_aside_incomplete_full_states(ckpt)

    assert [item.epoch for item in moved] == [0] and list((ckpt / "full_state").iterdir()) == []
    assert caplog.records[0].getMessage().endswith("Training resumes from the start.")
    assert latest_full_state_epoch(ckpt) is None and read_full_state(ckpt) is None
    assert instructlab_resume(ckpt) == {"current_epoch": None, "samples_seen": None}  # nothing to load: no crash


CONCURRENT_SET_ASIDE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch  # loaded before the start signal, so that the processes really race
    from training_hub.backends.instructlab import set_aside_incomplete_full_states

    ckpt, go = Path(sys.argv[1]), Path(sys.argv[2])
    print("READY", flush=True)
    while not go.exists():
        time.sleep(0.001)
    moved = set_aside_incomplete_full_states(ckpt)
    print("MOVED " + json.dumps([[m.epoch, str(m.destination) if m.destination else None] for m in moved]), flush=True)
    """
)


@pytest.mark.timeout(240)
def test_concurrent_set_aside_by_several_processes_is_safe(saved_states, tmp_path):
    ckpt, go = tmp_path / "ckpt", tmp_path / "go"
    shutil.copytree(saved_states / "full_state" / "epoch_0", ckpt / "full_state" / "epoch_0")
    interrupted = range(1, 41)
    for epoch in interrupted:  # what many killed saves would leave: partial files, no metadata
        (ckpt / "full_state" / f"epoch_{epoch}").mkdir()
        (ckpt / "full_state" / f"epoch_{epoch}" / "model.safetensors").write_text(f"partial {epoch}")
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_SET_ASIDE, str(ckpt), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "READY"
        go.touch()
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    reports = [json.loads(out.split("MOVED ", 1)[1]) for out, _ in outputs]

    moves = [(epoch, destination) for report in reports for epoch, destination in report if destination]
    assert sorted(epoch for epoch, _ in moves) == list(interrupted)  # each moved exactly once
    aside = ckpt / INCOMPLETE_FULL_STATES_DIR
    assert sorted(p.name for p in aside.iterdir()) == sorted(Path(d).name for _, d in moves)
    for epoch, destination in moves:
        assert (Path(destination) / "model.safetensors").read_text() == f"partial {epoch}"
    assert [p.name for p in (ckpt / "full_state").iterdir()] == ["epoch_0"]
    assert filecmp.cmp(ckpt / "full_state" / "epoch_0" / "training_metadata.json",
                       saved_states / "full_state" / "epoch_0" / "training_metadata.json", shallow=False)
    raced = sum(destination is None for report in reports for _, destination in report)
    print(f"folders another process had moved first: {raced}")


# --- through the backend (sft() with a stand-in torchrun; everything before the launch is real) ---

# Records what the launcher found in full_state, then leaves what a finished run leaves.
LAUNCH_RECORDING_FULL_STATE = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    out, model = Path(args["output_dir"]), Path(args["model_name_or_path"])
    (out / "full_state_at_launch.json").write_text(json.dumps(sorted(p.name for p in (out / "full_state").iterdir())))
    if args["node-rank"] == "0":  # only global rank 0 saves
        shutil.copytree(model, out / "hf_format" / "samples_40", copy_function=shutil.copyfile)
    """
)


def sft_args(model, data, ckpt, **extra):
    return dict(model_path=str(model), data_path=str(data), ckpt_output_dir=str(ckpt), num_epochs=3,
                effective_batch_size=8, learning_rate=1e-4, max_seq_len=256, nproc_per_node=1,
                data_process_num_cpu_procs=1, process_data=False, **extra)


def test_backend_sets_the_interrupted_save_aside_before_launching(
        tiny_model, chat_data, saved_states, tmp_path, stand_in_torchrun, caplog):
    from training_hub import sft

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_states, ckpt)
    shutil.rmtree(ckpt / "full_state" / "epoch_0")
    interrupt_save(ckpt / "full_state" / "epoch_2", "before the metadata")
    stand_in_torchrun(LAUNCH_RECORDING_FULL_STATE)

    with caplog.at_level(logging.WARNING, logger="training_hub"):
        result = sft(**sft_args(tiny_model, chat_data, ckpt))

    assert json.loads((ckpt / "full_state_at_launch.json").read_text()) == ["epoch_1"]
    assert result.resumed_from_epoch == 1 and result.summary()["resumed_from_epoch"] == 1
    [aside] = (ckpt / INCOMPLETE_FULL_STATES_DIR).iterdir()
    assert aside.name.startswith("epoch_2-") and (aside / "model.safetensors").is_file()
    assert any("is an incomplete full state" in r.getMessage() for r in caplog.records)


def test_backend_on_another_node_leaves_the_folders_to_node_rank_0(
        tiny_model, chat_data, saved_states, tmp_path, stand_in_torchrun):
    from training_hub import sft

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_states, ckpt)
    interrupt_save(ckpt / "full_state" / "epoch_2", "before the metadata")
    stand_in_torchrun(LAUNCH_RECORDING_FULL_STATE)

    result = sft(**sft_args(tiny_model, chat_data, ckpt, nnodes=2, node_rank=1, rdzv_id=7,
                            rdzv_endpoint="127.0.0.1:29500"))

    assert json.loads((ckpt / "full_state_at_launch.json").read_text()) == ["epoch_0", "epoch_1", "epoch_2"]
    assert not (ckpt / INCOMPLETE_FULL_STATES_DIR).exists()
    assert result.resumed_from_epoch == 1  # what node rank 0's set-aside leaves: the same on every node
    assert result.node_rank == 1
