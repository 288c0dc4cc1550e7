from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training_hub.backends.instructlab import TrainingResult
from training_hub.launch import trainer
from training_hub.data import DataError
from training_hub.params import ParameterError


def test_training_result_becomes_json(tmp_path):
    result = TrainingResult(
        ckpt_output_dir=tmp_path, final_checkpoint=tmp_path / "hf_format" / "samples_8", checkpoints=(tmp_path / "a",),
        last_metrics={"epoch": 0, "step": 2, "avg_loss": 1.5}, metrics_path=None, log_path=tmp_path / "log",
        resumed_from_epoch=1,
    )
    data = json.loads(json.dumps(trainer.result_to_jsonable(result)))
    assert data["final_checkpoint"] == str(tmp_path / "hf_format" / "samples_8")
    assert data["checkpoints"] == [str(tmp_path / "a")]
    assert data["last_metrics"] == {"epoch": 0, "step": 2, "avg_loss": 1.5}
    assert data["resumed_from_epoch"] == 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ParameterError(["num_epochs: bad"]), "invalid_config"),
        (DataError(["data_path: x.jsonl line 3: has no 'messages' field"]), "invalid_config"),
        (OSError(errno.ENAMETOOLONG, "File name too long", "/ckpt/" + "x" * 300), "invalid_config"),
        (OSError(errno.ENOSPC, "No space left on device", "/ckpt/hf_format"), "invalid_config"),
        (PermissionError(errno.EACCES, "Permission denied", "/models/m"), "invalid_config"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/models/m/config.json"), "invalid_config"),
        (ValueError("something inside a library"), "failed"),  # not ours to call permanent
        (RuntimeError("torchrun ended with exit status 1"), "failed"),
        (OSError("no errno"), "failed"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "failed"),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), "failed"),
    ],
)
def test_errors_are_classified(error, status):
    assert trainer.classify_error(error) == status


def test_a_permanent_os_error_names_its_path():
    error = OSError(errno.ENAMETOOLONG, "File name too long", "/ckpt/" + "x" * 300)
    assert trainer.describe_error(error) == f"OSError [ENAMETOOLONG] File name too long: {'/ckpt/' + 'x' * 300!r}"


@pytest.mark.timeout(30)
def test_signals_are_forwarded_to_every_child():
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while not set(c.pid for c in children) <= set(trainer.child_pids()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sent = trainer.forward_signal_to_children(15)
        assert set(c.pid for c in children) <= set(sent)
        assert [c.wait(10) for c in children] == [-15, -15]
    finally:
        for child in children:
            child.kill()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_trainer_process_writes_a_result_for_an_unknown_parameter(tmp_path):
    """The real `training_hub:sft` rejects a typo before anything heavy: status invalid_config, exit 78."""
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"function": "training_hub:sft", "kwargs": {"model_path": "m", "data_path": "d", "ckpt_output_dir": "c",
        "num_epochs": 1, "effective_batch_size": 1, "learning_rate": 1.0, "max_seq_len": 8, "nmu_epochs": 2}}))
    result = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "training_hub.launch.trainer", str(request), str(result)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    report = json.loads(result.read_text())
    assert report["status"] == "invalid_config" and "nmu_epochs" in report["message"] and report["result"] is None
    assert not Path(str(result) + ".tmp").exists()
