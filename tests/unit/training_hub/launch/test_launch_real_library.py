"""`training-hub sft` through the real library: real validation, real instructlab data processing and
`run_training`, real TrainingResult. Only `torchrun` is a stand-in (first on PATH), because
instructlab's trainer needs CUDA; it writes what the real workers write (metrics jsonl, an HF
checkpoint, log output) or waits to be signalled.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import clean_env, cli_command, read_summary, run_cli

pytestmark = pytest.mark.slow

STAND_IN_TORCHRUN = r'''
import json, os, pathlib, signal, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
out = pathlib.Path(args["--output_dir"])
mode = os.environ["STAND_IN_MODE"]
if mode == "wait":
    def stop(signum, frame):
        (out / "torchrun-got-signal").write_text(str(signum))
        sys.exit(1)
    signal.signal(signal.SIGTERM, stop)
    (out / "torchrun-started").write_text("")
    time.sleep(120)
    sys.exit(1)
metrics = out / "training_params_and_metrics_global0.jsonl"
with open(metrics, "a") as handle:
    handle.write(json.dumps({"model_name_or_path": args.get("--model_name_or_path"), "num_epochs": 1}) + "\n")
    for step in (1, 2, 3):
        time.sleep(0.4)
        handle.write(json.dumps({"epoch": 0, "step": step, "avg_loss": 2.0 / step, "lr": 2e-5, "samples_seen": 4 * step}) + "\n")
        handle.flush()
        print(f"Epoch 0: step {step}", end=" ", flush=True)
checkpoint = out / "hf_format" / "samples_12"
checkpoint.mkdir(parents=True)
(checkpoint / "config.json").write_text("{}")
print("done", flush=True)
'''


@pytest.fixture
def pod(tmp_path: Path, tiny_model, chat_data):
    """A pod's view: params file, a stand-in torchrun first on PATH, the termination-log path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torchrun = bin_dir / "torchrun"
    torchrun.write_text(f"#!{sys.executable}\n{STAND_IN_TORCHRUN}")
    torchrun.chmod(torchrun.stat().st_mode | stat.S_IXUSR)
    params = {
        "modelPath": str(tiny_model.path), "dataPath": str(chat_data), "ckptOutputDir": str(tmp_path / "ckpt"),
        "numEpochs": 1, "effectiveBatchSize": 4, "learningRate": 2e-5, "maxSeqLen": 256,
        "extraArgs": {"data_process_num_cpu_procs": 1, "disable_flash_attn": True},
    }
    config = tmp_path / "params.json"
    config.write_text(json.dumps(params))

    def env(mode: str) -> dict[str, str]:
        return clean_env(
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STAND_IN_MODE=mode, TRAINING_HUB_NPROC_PER_NODE="1",
            TRAINING_HUB_TERMINATION_LOG=str(tmp_path / "termination-log"),
        )

    return config, env, tmp_path


@pytest.mark.timeout(300)
def test_success_through_the_real_library(pod):
    config, env, tmp_path = pod
    done = run_cli(["sft", "--config", str(config)], env=env("succeed"), timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    progress = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"event": "progress"')]
    assert [(p["step"], p["loss"]) for p in progress] == [(1, 2.0), (2, 1.0), (3, 2.0 / 3)]
    summary = read_summary(tmp_path / "termination-log")
    assert summary == {
        "outcome": "succeeded", "message": "training finished",
        "final_checkpoint": str(tmp_path / "ckpt" / "hf_format" / "samples_12"),
        "epoch": 0, "step": 3, "loss": 2.0 / 3,
    }
    assert (tmp_path / "ckpt" / "data" / "data.jsonl").is_file()  # instructlab's data processing really ran


@pytest.mark.timeout(300)
def test_sigterm_reaches_torchrun_and_the_run_is_preempted(pod):
    config, env, tmp_path = pod
    proc = subprocess.Popen(cli_command(["sft", "--config", str(config)]), env=env("wait"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = tmp_path / "ckpt" / "torchrun-started"
    deadline = time.monotonic() + 240
    while not started.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    assert (tmp_path / "ckpt" / "torchrun-got-signal").read_text() == str(int(signal.SIGTERM))
    summary = read_summary(tmp_path / "termination-log")
    assert summary["outcome"] == "preempted"
