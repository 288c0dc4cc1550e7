"""`training-hub prepare`: what the operator's prepare pod runs. A real process, real data processing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch_helpers import clean_env, cli_command, read_summary, run_cli, write_params
from training_hub.backends.prepare import MANIFEST_FILE
from training_hub.testing import write_chat_dataset


def params(tiny_model, data, tmp_path, **extra):
    return write_params(
        tmp_path / "params.json", modelPath=str(tiny_model), dataPath=str(data), ckptOutputDir=str(tmp_path / "ckpt"),
        numEpochs=1, effectiveBatchSize=8, learningRate=1e-4, maxSeqLen=256, **extra,
    )


def test_a_bad_line_exits_78_with_file_line_and_problem_in_the_summary(tiny_model, tmp_path):
    data = write_chat_dataset(tmp_path / "train.jsonl", 3)
    lines = data.read_text().splitlines()
    lines[1] = '{"messages": [{"role": "user", "content": "unterminated}]}'
    data.write_text("\n".join(lines) + "\n")
    summary = tmp_path / "summary.json"
    result = run_cli(["prepare", "--config", str(params(tiny_model, data, tmp_path)), "--termination-log", str(summary)],
                     env=clean_env(TRAINING_HUB_NODE_RANK="1", TRAINING_HUB_NNODES="2"))  # distributed settings: ignored
    assert result.returncode == 78, result.stderr
    written = read_summary(summary)
    assert written["outcome"] == "invalid_config"
    assert f"data_path: {data} line 2: not valid JSON" in written["message"]
    # Found by the entrypoint's own check, before preparing: nothing written at all (every node checks the same
    # file itself, so no node waits for a record of it).
    assert not (tmp_path / "ckpt").exists()


def test_bad_parameters_exit_78_before_touching_the_data(tmp_path):
    summary = tmp_path / "summary.json"
    result = run_cli(["prepare", "--config", str(write_params(tmp_path / "p.json", maxSeqLen=0)),
                      "--termination-log", str(summary)])
    assert result.returncode == 78
    assert "max_seq_len" in read_summary(summary)["message"] and "model_path: required" in read_summary(summary)["message"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prepares_then_reuses_and_force_prepares_again(tiny_model, chat_data, tmp_path):
    config = params(tiny_model, chat_data, tmp_path, extraArgs={"data_process_num_cpu_procs": 1})
    summary = tmp_path / "summary.json"
    first = run_cli(["prepare", "--config", str(config), "--termination-log", str(summary)], timeout=400)
    assert first.returncode == 0, first.stderr[-2000:]
    made = read_summary(summary)
    samples = len(chat_data.read_text().splitlines())
    assert made["outcome"] == "succeeded" and made["reused"] is False and made["samples"] == samples
    assert made["data_output_dir"] == str(tmp_path / "ckpt" / "data")
    manifest = json.loads((tmp_path / "ckpt" / "data" / MANIFEST_FILE).read_text())
    assert manifest["samples"] == samples and manifest["max_seq_len"] == 256

    second = run_cli(["prepare", "--config", str(config), "--termination-log", str(summary)], timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    assert read_summary(summary)["reused"] is True
    assert "reused the prepared data" in read_summary(summary)["message"]

    forced = run_cli(["prepare", "--config", str(config), "--force", "--termination-log", str(summary)], timeout=400)
    assert forced.returncode == 0 and read_summary(summary)["reused"] is False


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("target", ["entrypoint", "process-group", "entrypoint-killed"])
def test_a_signal_during_the_data_processing_stops_everything_at_once_and_writes_nothing(tiny_model, tmp_path, target):
    """SIGTERM to the entrypoint (a pod's PID 1) or to its whole process group (a terminal, a supervisor) while
    instructlab's multiprocessing pool runs: exit 143 (preempted) in seconds, no processing process left, no data
    directory and no staging directory. Once seen: a pool worker raised the entrypoint's interrupt and the command
    never exited. SIGKILL of the entrypoint: its processing child dies with it."""
    data = write_chat_dataset(tmp_path / "train.jsonl", 4000, seed=1)
    config = params(tiny_model, data, tmp_path, extraArgs={"data_process_num_cpu_procs": 2})
    summary, log = tmp_path / "summary.json", tmp_path / "prepare.log"
    with open(log, "w") as output:
        process = subprocess.Popen(cli_command(["prepare", "--config", str(config), "--termination-log", str(summary)]),
                                   env=dict(clean_env()), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "num_proc=2" not in log.read_text(errors="replace"):  # the pool is running
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1)
        assert process.poll() is None
        children = _descendants(process.pid)
        assert children, "the processing runs in child processes"
        signalled = time.monotonic()
        if target == "process-group":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGKILL if target == "entrypoint-killed" else signal.SIGTERM)
        returncode = process.wait(60)
        stopped = time.monotonic() - signalled
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "processing processes left running"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    if target == "entrypoint-killed":
        assert returncode == -signal.SIGKILL
        assert not (tmp_path / "ckpt" / "data").exists()
        return
    assert returncode == 143, log.read_text()[-3000:]
    assert stopped < 15, stopped
    assert read_summary(summary) == {"outcome": "preempted", "message": "received SIGTERM while preparing the data"}
    assert "Traceback" not in log.read_text(errors="replace")
    assert not (tmp_path / "ckpt").exists() or list((tmp_path / "ckpt").iterdir()) == []  # no data, no staging


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split() if _alive(parent) else ():
            found.append(int(child))
            frontier.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
