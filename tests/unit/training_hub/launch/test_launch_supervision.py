"""The training run as the pod sees it: a real `training-hub sft` process supervising a real trainer process.

Only the function the trainer calls is swapped (`launch_fakes`), since instructlab cannot train on
CPU; the entrypoint, the trainer process, signals, the metrics file and the summary are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launch_helpers import clean_env, cli_command, free_port, read_summary, run_cli, valid_params, write_params


def _setup(tmp_path: Path, **env: str):
    config = write_params(tmp_path / "params.json", **valid_params(tmp_path))
    return config, clean_env(TRAINING_HUB_TERMINATION_LOG=str(tmp_path / "termination-log"), **env)


def _sft(tmp_path: Path, trainer: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`training-hub sft` with `trainer` standing in for training: the finished process and its summary."""
    config, env = _setup(tmp_path)
    done = run_cli(["sft", "--config", str(config)], env=env, trainer=trainer)
    return done, read_summary(tmp_path / "termination-log")


def _progress_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event": "progress"')]


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_success_prints_a_progress_line_per_step_and_writes_the_summary(tmp_path):
    config, env = _setup(tmp_path)
    done = run_cli(["sft", "--config", str(config)], env=env, trainer="launch_fakes:succeed")
    assert done.returncode == 0, done.stderr
    progress = _progress_lines(done.stdout)
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert progress[0] == {"event": "progress", "epoch": 0, "step": 1, "loss": 2.75, "samples_seen": 8, "lr": 1e-05}
    assert "Epoch 0: 4/4" in done.stdout  # the trainer's own output is relayed too
    summary = read_summary(tmp_path / "termination-log")
    assert summary == {
        "outcome": "succeeded", "message": "training finished",
        "final_checkpoint": str(tmp_path / "ckpt" / "hf_format" / "samples_32"), "epoch": 0, "step": 4, "loss": 2.0,
    }


@pytest.mark.timeout(90)
def test_training_failure_exits_1_with_the_last_progress_in_the_summary(tmp_path):
    done, summary = _sft(tmp_path, "launch_fakes:fail")
    assert done.returncode == 1
    assert summary["outcome"] == "failed"
    assert summary["message"] == "RuntimeError: training failed on node rank 0: torchrun ended with exit status 1"
    assert (summary["step"], summary["loss"]) == (2, 2.5)  # from the progress the entrypoint saw


@pytest.mark.timeout(90)
def test_a_worker_killed_on_this_node_is_named_and_exits_128_plus_the_signal(tmp_path):
    done, summary = _sft(tmp_path, "launch_fakes:fail_with_a_killed_worker")
    assert done.returncode == 137, done.stderr
    assert summary["outcome"] == "failed" and "peerLost" not in summary
    assert summary["message"].startswith("worker rank 3 (local rank 0) was killed by SIGKILL. RuntimeError: Suffered")


@pytest.mark.timeout(90)
def test_a_node_that_lost_a_peer_says_so_and_its_stderr_still_reaches_ours(tmp_path):
    done, summary = _sft(tmp_path, "launch_fakes:fail_after_losing_a_peer")
    assert done.returncode == 1
    assert summary["peerLost"] is True and "Connection reset by peer" in summary["message"]
    assert "[rank2]: RuntimeError" in done.stderr and "Root Cause (first observed failure)" in done.stderr
    assert "[rank2]" not in done.stdout  # relayed to stderr, where the trainer wrote it


@pytest.mark.timeout(90)
def test_parameter_error_inside_the_trainer_is_permanent(tmp_path):
    done, summary = _sft(tmp_path, "launch_fakes:reject")
    assert done.returncode == 78
    assert summary["outcome"] == "invalid_config" and "adamw_wieght_decay" in summary["message"]


@pytest.mark.timeout(90)
def test_trainer_killed_by_the_kernel_reads_as_137(tmp_path):
    config, env = _setup(tmp_path)
    done = run_cli(["sft", "--config", str(config)], env=env, trainer="launch_fakes:killed")
    assert done.returncode == 137
    summary = read_summary(tmp_path / "termination-log")
    assert summary["outcome"] == "failed" and "SIGKILL" in summary["message"]


@pytest.mark.timeout(120)
def test_sigterm_is_forwarded_down_to_the_launcher_and_reported_as_preempted(tmp_path):
    config, env = _setup(tmp_path)
    proc = subprocess.Popen(cli_command(["sft", "--config", str(config)], "launch_fakes:wait_on_launcher"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = tmp_path / "ckpt" / "launcher-got-sigterm"
    _wait_for_file(Path(str(marker) + ".ready"), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert marker.read_text() == str(int(signal.SIGTERM))  # entrypoint -> trainer -> launcher (torchrun's place)
    summary = read_summary(tmp_path / "termination-log")
    assert summary["outcome"] == "preempted"
    assert summary["message"].startswith("received SIGTERM before training finished")


@pytest.mark.timeout(120)
def test_a_trainer_that_checkpoints_and_exits_0_on_sigterm_is_still_preempted(tmp_path):
    """instructlab's on-demand checkpointing exits 0 after SIGTERM: that is not a finished training."""
    config, env = _setup(tmp_path)
    proc = subprocess.Popen(cli_command(["sft", "--config", str(config)], "launch_fakes:checkpoint_and_exit_cleanly_on_sigterm"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_file(tmp_path / "ckpt" / "ready", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert (tmp_path / "ckpt" / "full_state").is_dir()  # the trainer did get the signal and save
    assert proc.returncode == 143
    assert read_summary(tmp_path / "termination-log")["outcome"] == "preempted"


@pytest.mark.timeout(60)
def test_sigterm_while_waiting_for_the_rendezvous_is_preempted_not_a_timeout(tmp_path):
    config, env = _setup(
        tmp_path, TRAINING_HUB_NNODES="2", TRAINING_HUB_NODE_RANK="1", TRAINING_HUB_RDZV_ID="g",
        TRAINING_HUB_RDZV_ENDPOINT=f"127.0.0.1:{free_port()}", TRAINING_HUB_RDZV_TIMEOUT="300", TRAINING_HUB_NPROC_PER_NODE="1",
    )
    proc = subprocess.Popen(cli_command(["sft", "--config", str(config)], "launch_fakes:must_not_run"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    err = ""
    while "waiting for rendezvous endpoint" not in err:  # the wait loop is running
        assert time.monotonic() < deadline and proc.poll() is None
        err += os.read(proc.stderr.fileno(), 4096).decode()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    summary = read_summary(tmp_path / "termination-log")
    assert summary == {"outcome": "preempted", "message": "received SIGTERM before training started"}


@pytest.mark.timeout(120)
def test_preempted_summary_is_written_at_once_so_a_sigkill_after_the_grace_period_keeps_it(tmp_path):
    config, env = _setup(tmp_path)
    proc = subprocess.Popen(cli_command(["sft", "--config", str(config)], "launch_fakes:ignore_sigterm"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_file(tmp_path / "ckpt" / "ready", proc)
        time.sleep(1.0)  # let the tailer see both steps
        proc.send_signal(signal.SIGTERM)
        summary_path = tmp_path / "termination-log"
        deadline = time.monotonic() + 20
        while not summary_path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert proc.poll() is None  # the trainer ignores SIGTERM: the entrypoint is still waiting for it
        summary = read_summary(summary_path)
        assert summary["outcome"] == "preempted" and summary["message"].startswith("received SIGTERM; stopping training")
        assert summary["step"] == 2  # the last progress seen so far
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the kubelet at the end of the grace period
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_without_a_usable_temp_dir_the_checkpoint_dir_holds_the_scratch_files(tmp_path, monkeypatch):
    import tempfile

    from training_hub.launch.cli import _scratch_directory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # what mkdtemp would use: missing
    with _scratch_directory(str(tmp_path / "ckpt")) as scratch:
        assert Path(scratch).parent == tmp_path / "ckpt"
        assert Path(scratch).name.startswith(".training-hub-")
    assert list((tmp_path / "ckpt").iterdir()) == []
