"""Reading instructlab's metrics jsonl (training_hub.backends.metrics), also while it is being written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_hub.backends.metrics import iter_step_metrics, last_step_metrics, metrics_path

# Lines in the shape instructlab 0.16 writes (main_ds.py): hyper-parameters, dataset stats, steps.
HPARAMS = {"model_name_or_path": "/m", "num_epochs": 2, "timestamp": "2026-01-01T00:00:00"}
STATS = {"num_gpus": 1, "avg_sample_len": 80.5, "total_samples": 40, "timestamp": "2026-01-01T00:00:01"}


def step(n: int, epoch: int = 0) -> dict:
    return {"epoch": epoch, "step": n, "rank": 0, "lr": 1e-5, "avg_loss": 3.0 / n, "samples_seen": 8 * n,
            "overall_throughput": 100.0, "timestamp": "2026-01-01T00:00:02"}


def write_lines(path: Path, records: list, *, partial: str = "") -> None:
    with path.open("a") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
        handle.write(partial)


def test_metrics_path_per_rank(tmp_path):
    assert metrics_path(tmp_path) == tmp_path / "training_params_and_metrics_global0.jsonl"
    assert metrics_path(str(tmp_path), 8).name == "training_params_and_metrics_global8.jsonl"


def test_only_step_records_and_complete_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, [HPARAMS, STATS, step(1), "not json", step(2)], partial='{"step": 3, "avg_lo')
    assert [r["step"] for r in iter_step_metrics(path)] == [1, 2]
    assert last_step_metrics(path) == step(2)


def test_missing_or_empty_file(tmp_path):
    assert list(iter_step_metrics(tmp_path / "none.jsonl")) == []
    assert last_step_metrics(tmp_path / "none.jsonl") is None
    write_lines(tmp_path / "h.jsonl", [HPARAMS])
    assert last_step_metrics(tmp_path / "h.jsonl") is None
