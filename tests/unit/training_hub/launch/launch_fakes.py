"""Stand-ins for `training_hub.sft`, called by the real trainer process (the `trainer=` boundary of cli.main).

Each one behaves like one way a real training run ends. They live in their own module because the
trainer process imports them by name (`launch_fakes:succeed`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def must_not_run(**kwargs: Any) -> None:
    raise AssertionError("training must not start")


def _metrics(ckpt: Path, steps: int, delay_s: float) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    path = ckpt / "training_params_and_metrics_global0.jsonl"
    with open(path, "a") as handle:
        handle.write(json.dumps({"model_name_or_path": "m", "num_epochs": 1}) + "\n")
        handle.flush()
        for step in range(1, steps + 1):
            time.sleep(delay_s)
            record = {"epoch": 0, "step": step, "avg_loss": round(3.0 - 0.25 * step, 4), "lr": 1e-5, "samples_seen": 8 * step}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            sys.stdout.write(f"Epoch 0: {step}/{steps} ")  # a trainer line left open, as tqdm does
            sys.stdout.flush()


def succeed(**kwargs: Any):
    from training_hub.backends.instructlab import TrainingResult

    ckpt = Path(kwargs["ckpt_output_dir"])
    _metrics(ckpt, steps=int(os.environ.get("FAKE_STEPS", "4")), delay_s=0.3)
    final = ckpt / "hf_format" / "samples_32"
    final.mkdir(parents=True)
    (Path(os.environ["FAKE_KWARGS_OUT"])).write_text(json.dumps(kwargs)) if "FAKE_KWARGS_OUT" in os.environ else None
    return TrainingResult(
        ckpt_output_dir=ckpt, final_checkpoint=final, checkpoints=(final,),
        last_metrics={"epoch": 0, "step": 4, "avg_loss": 2.0, "lr": 1e-5, "samples_seen": 32},
        metrics_path=ckpt / "training_params_and_metrics_global0.jsonl", log_path=ckpt / "full_logs_global0.log",
        resumed_from_epoch=None,
    )


def fail(**kwargs: Any) -> None:
    _metrics(Path(kwargs["ckpt_output_dir"]), steps=2, delay_s=0.3)
    raise RuntimeError("training failed on node rank 0: torchrun ended with exit status 1")


def _torchrun_report(exitcodes: dict[int, int]) -> str:
    """What torchrun prints when workers fail (torch's own ChildFailedError text)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {rank: ProcessFailure(local_rank=0, pid=4000 + rank, exitcode=code, error_file="")
                for rank, code in exitcodes.items()}
    return str(ChildFailedError("instructlab/training/main_ds.py", failures))


def fail_with_a_killed_worker(**kwargs: Any) -> None:
    # instructlab relays torchrun's output on stdout; the report names rank 3's worker, SIGKILLed.
    print(_torchrun_report({3: -9}), flush=True)
    raise RuntimeError("Suffered a failure during distributed training. Please see the training logs for more context.")


def fail_after_losing_a_peer(**kwargs: Any) -> None:
    print("[rank2]: RuntimeError: [../gloo/transport/tcp/pair.cc:545] Read error [10.0.0.9]:4411: Connection reset by "
          "peer", file=sys.stderr, flush=True)
    print(_torchrun_report({2: 1}), file=sys.stderr, flush=True)
    raise RuntimeError("Suffered a failure during distributed training. Please see the training logs for more context.")


def reject(**kwargs: Any) -> None:
    from training_hub.params import ParameterError

    raise ParameterError(["extra_args.adamw_wieght_decay: not a backend TrainingArgs field; did you mean 'adamw_weight_decay'?"])


def killed(**kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would


def wait_on_launcher(**kwargs: Any) -> None:
    """Like run_training: a launcher child runs until signalled; on Ctrl-C, wait for it, then re-raise."""
    marker = Path(kwargs["ckpt_output_dir"]) / "launcher-got-sigterm"
    marker.parent.mkdir(parents=True, exist_ok=True)
    launcher = subprocess.Popen(
        [
            sys.executable, "-c",
            "import signal, sys, time, pathlib\n"
            f"def bye(s, f):\n    pathlib.Path({str(marker)!r}).write_text(str(s)); sys.exit(1)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            f"pathlib.Path({str(marker)!r} + '.ready').write_text('')\n"
            "time.sleep(120)\n",
        ]
    )
    try:
        launcher.wait()
    except KeyboardInterrupt:
        launcher.wait(30)
        raise
    raise RuntimeError(f"launcher exited with {launcher.returncode}")


def checkpoint_and_exit_cleanly_on_sigterm(**kwargs: Any):
    """Like instructlab's on-demand checkpointing: SIGTERM -> save state, return normally (exit 0)."""
    got = []
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    ckpt = Path(kwargs["ckpt_output_dir"])
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "ready").write_text("")
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    (ckpt / "full_state").mkdir()
    return {"final_checkpoint": None, "last_metrics": None, "resumed_from_epoch": None}


def ignore_sigterm(**kwargs: Any) -> None:
    """A trainer that does not stop on SIGTERM: the kubelet will SIGKILL the pod at the end of the grace period."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _metrics(Path(kwargs["ckpt_output_dir"]), steps=2, delay_s=0.05)
    (Path(kwargs["ckpt_output_dir"]) / "ready").write_text("")
    time.sleep(60)
