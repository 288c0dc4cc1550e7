"""Progress lines from a metrics jsonl that is being appended to (real thread, real file)."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from training_hub.backends.metrics import metrics_path
from training_hub.launch.progress import ConsoleWriter, MetricsTailer, format_progress_line, progress_event

STEP = {
    "epoch": 1, "step": 10, "rank": 0, "overall_throughput": 40.2, "lr": 1e-05, "avg_loss": 2.31,
    "samples_seen": 640, "gradnorm": 0.9, "total_samples": 5000, "num_epoch_steps": 79, "timestamp": "2026-11-28T10:00:00",
}


def test_a_step_record_becomes_the_contract_progress_line():
    event = progress_event(STEP)
    assert event == {"event": "progress", "epoch": 1, "step": 10, "loss": 2.31, "samples_seen": 640, "lr": 1e-05}
    assert json.loads(format_progress_line(event)) == event
    assert format_progress_line(event) == '{"event": "progress", "epoch": 1, "step": 10, "loss": 2.31, "samples_seen": 640, "lr": 1e-05}'


@pytest.mark.parametrize(
    "record",
    [
        {"model_name_or_path": "m", "learning_rate": 1e-5, "num_epochs": 2},  # hyper-parameters
        {"num_gpus": 8, "avg_sample_len": 300.5, "effective_batch_size": 64},  # dataset stats
        {"val_loss": 1.9, "val_num_tokens": 1000, "step": 20},  # validation
        ["not", "a", "mapping"],
    ],
)
def test_records_that_are_not_steps_give_no_line(record):
    assert progress_event(record) is None


def test_diverged_loss_is_reported_as_null_not_invalid_json():
    event = progress_event({**STEP, "avg_loss": float("nan")})
    assert event["loss"] is None
    json.loads(format_progress_line(event))


def test_metrics_file_is_the_one_instructlab_writes(tmp_path):
    assert metrics_path(tmp_path, 8) == tmp_path / "training_params_and_metrics_global8.jsonl"


def _append(path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)
        handle.flush()


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.timeout(30)
def test_tailer_prints_each_step_as_it_is_appended(tmp_path):
    path = tmp_path / "training_params_and_metrics_global0.jsonl"
    seen: list[dict] = []
    tailer = MetricsTailer(path, seen.append, poll_interval_s=0.02).start()  # file does not exist yet
    try:
        _append(path, json.dumps({"model_name_or_path": "m"}) + "\n")
        for step in range(1, 4):
            _append(path, json.dumps({**STEP, "step": step, "avg_loss": 3.0 - step / 10}) + "\n")
            _wait_for(lambda: len(seen) == step)
        # a line written in two pieces is printed once, when complete
        line = json.dumps({**STEP, "step": 4})
        _append(path, line[:20])
        time.sleep(0.2)
        assert len(seen) == 3
        _append(path, line[20:] + "\nnot json\n")
        _wait_for(lambda: len(seen) == 4)
    finally:
        tailer.stop()
    assert [event["step"] for event in seen] == [1, 2, 3, 4]
    assert seen[1]["loss"] == pytest.approx(2.8)
    assert tailer.last_event == seen[-1] and tailer.events_seen == 4


@pytest.mark.timeout(30)
def test_tailer_skips_steps_of_a_previous_attempt_and_drains_on_stop(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({**STEP, "step": s}) + "\n" for s in (1, 2, 3)))  # earlier run, same ckpt dir
    seen: list[dict] = []
    tailer = MetricsTailer(path, seen.append, poll_interval_s=5.0).start()  # slow poll: only stop() reads
    _append(path, json.dumps({**STEP, "epoch": 2, "step": 1}) + "\n")
    tailer.stop()
    assert [(e["epoch"], e["step"]) for e in seen] == [(2, 1)]


@pytest.mark.timeout(30)
def test_tailer_starts_over_when_the_file_is_replaced(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({**STEP, "step": s}) + "\n" for s in range(1, 50)))
    seen: list[dict] = []
    tailer = MetricsTailer(path, seen.append, poll_interval_s=0.02).start()
    try:
        path.write_text(json.dumps({**STEP, "step": 1, "epoch": 0}) + "\n")  # truncated by a new run
        _wait_for(lambda: len(seen) == 1)
    finally:
        tailer.stop()
    assert seen[0]["epoch"] == 0


def test_progress_lines_always_start_on_their_own_line():
    stream = io.BytesIO()
    console = ConsoleWriter(stream)
    console.relay(b"Epoch 0:  10%|#         | 1/10")  # a trainer line still being written
    console.line('{"event": "progress", "step": 1}')
    console.relay(b"\rEpoch 0:  20%\n")
    console.line('{"event": "progress", "step": 2}')
    lines = stream.getvalue().decode().split("\n")
    assert lines == [
        "Epoch 0:  10%|#         | 1/10",
        '{"event": "progress", "step": 1}',
        "\rEpoch 0:  20%",
        '{"event": "progress", "step": 2}',
        "",
    ]


@pytest.mark.timeout(30)
def test_concurrent_relay_and_progress_never_mix_within_a_line():
    stream = io.BytesIO()
    console = ConsoleWriter(stream)

    def trainer_output():
        for i in range(300):
            for piece in (b"worker ", str(i).encode(), b" done\n"):
                console.relay(piece)

    thread = threading.Thread(target=trainer_output)
    thread.start()
    for step in range(300):
        console.line(format_progress_line({"event": "progress", "step": step}))
    thread.join()
    lines = stream.getvalue().decode().splitlines()
    progress = [line for line in lines if "progress" in line]
    assert len(progress) == 300
    assert all(json.loads(line)["event"] == "progress" for line in progress)  # each is a whole JSON line
