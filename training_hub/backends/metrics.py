"""Reading instructlab-training's metrics file (`training_params_and_metrics_global{rank}.jsonl`).

Each line is one JSON object: first the hyper-parameters and dataset statistics, then one line per
optimizer step (`epoch`, `step`, `avg_loss`, `lr`, `samples_seen`, `overall_throughput`, ...).
Only the standard library is used, so a launcher can tail the file while training runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

METRICS_FILE_TEMPLATE = "training_params_and_metrics_global{rank}.jsonl"
STEP_KEYS = ("step", "avg_loss")  # present on per-step lines, absent on the hyper-parameter lines


def metrics_path(ckpt_output_dir: str | os.PathLike[str], rank: int = 0) -> Path:
    """Where global rank `rank` writes its metrics."""
    return Path(ckpt_output_dir) / METRICS_FILE_TEMPLATE.format(rank=rank)


def is_step_record(record: Any) -> bool:
    return isinstance(record, dict) and all(key in record for key in STEP_KEYS)


def iter_step_metrics(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The per-step records in the file so far, oldest first. Missing file: nothing.

    A last line without its newline (being written) and lines that are not JSON are skipped.
    """
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            record = _parse(line)
            if is_step_record(record):
                yield record


def last_step_metrics(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The most recent per-step record, or None when there is none yet."""
    last = None
    for last in iter_step_metrics(path):
        pass
    return last


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
