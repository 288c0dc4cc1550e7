"""Reading instructlab-training's metrics file (`training_params_and_metrics_global{rank}.jsonl`).

Each line is one JSON object: first the hyper-parameters and dataset statistics, then one line per
optimizer step (`epoch`, `step`, `avg_loss`, `lr`, `samples_seen`, `overall_throughput`, ...).
Only the standard library is used, so a launcher can tail the file while training runs.
"""

from __future__ import annotations

import json
import os
import threading
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


def follow_step_metrics(
    path: str | os.PathLike[str], stop: threading.Event, poll_seconds: float = 1.0
) -> Iterator[dict[str, Any]]:
    """Yield per-step records as they are appended, until `stop` is set (then the rest is drained).

    Waits for the file to appear; if it is replaced (a new run truncates it), starts over from its
    beginning. Meant for a thread that prints progress while training runs in another.
    """
    position = 0
    pending = ""
    while True:
        stopping = stop.is_set()
        try:
            with open(path, encoding="utf-8") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < position:
                    position, pending = 0, ""
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
        except FileNotFoundError:
            chunk = ""
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            record = _parse(line)
            if is_step_record(record):
                yield record
        if stopping:
            return
        stop.wait(poll_seconds)


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
