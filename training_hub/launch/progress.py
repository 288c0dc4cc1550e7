"""Progress lines: one JSON object per training step on stdout, read from instructlab's metrics jsonl.

instructlab-training appends one line per optimizer step to
`{ckpt_output_dir}/training_params_and_metrics_global{RANK}.jsonl` (written by local rank 0 of each
node, RANK being its global rank), next to hyper-parameter and dataset lines. A background thread
tails that file and prints, for each step line,

    {"event": "progress", "epoch": 0, "step": 10, "loss": 2.31, "samples_seen": 640, "lr": 1e-05}

The operator reads the last such line from the rank-0 pod's log. Training output is relayed
through the same `ConsoleWriter`, so a progress line always starts on a line of its own even when
the trainer is in the middle of writing one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

from training_hub.backends.metrics import is_step_record

PROGRESS_EVENT = "progress"
def progress_event(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The progress line for one metrics record, or None when the record is not a training step.

    Step records are the ones with `step` and `avg_loss`; hyper-parameter, dataset and validation
    records lack them.
    """
    if not is_step_record(dict(metrics) if isinstance(metrics, Mapping) else metrics):
        return None
    return {
        "event": PROGRESS_EVENT,
        "epoch": _number(metrics.get("epoch")),
        "step": _number(metrics.get("step")),
        "loss": _number(metrics.get("avg_loss")),
        "samples_seen": _number(metrics.get("samples_seen")),
        "lr": _number(metrics.get("lr")),
    }


def format_progress_line(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(", ", ": "), allow_nan=False)


def _number(value: Any) -> int | float | None:
    # NaN/inf loss is real (a diverged run) but not JSON; report it as null rather than break the line.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ConsoleWriter:
    """Serialises writes to one byte stream (stdout) from the relay and the progress thread."""

    def __init__(self, stream: BinaryIO | None = None):
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._lock = threading.Lock()
        self._at_line_start = True

    def relay(self, chunk: bytes) -> None:
        """Pass through bytes written by the trainer (possibly partial lines)."""
        if not chunk:
            return
        with self._lock:
            self._stream.write(chunk)
            self._stream.flush()
            self._at_line_start = chunk.endswith(b"\n")

    def line(self, text: str) -> None:
        """Write `text` as a whole line of its own."""
        data = text.encode("utf-8", "replace") + b"\n"
        with self._lock:
            if not self._at_line_start:
                data = b"\n" + data
            self._stream.write(data)
            self._stream.flush()
            self._at_line_start = True


class MetricsTailer:
    """Follows a metrics jsonl file in a background thread and calls `on_event` for each training step.

    Lines already in the file when the tailer starts are skipped: a resumed run appends to the file of
    the previous attempt, and its old steps are not progress of this one. The file may not exist yet
    (it is created when training starts); partial lines are held until their newline arrives.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_event: Callable[[dict[str, Any]], None],
        *,
        poll_interval_s: float = 0.5,
        skip_existing: bool = True,
    ):
        self.path = Path(path)
        self._on_event = on_event
        self._poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._offset = self._current_size() if skip_existing else 0
        self._pending = b""
        self._thread = threading.Thread(target=self._run, name="metrics-tailer", daemon=True)
        self.last_event: dict[str, Any] | None = None
        self.events_seen = 0

    def start(self) -> "MetricsTailer":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after reading what is in the file now (the last steps are not lost)."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _current_size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            self._read_new_lines()
        self._read_new_lines()

    def _read_new_lines(self) -> None:
        size = self._current_size()
        if size < self._offset:  # replaced or truncated: start over
            self._offset, self._pending = 0, b""
        if size == self._offset:
            return
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read(size - self._offset)
        except OSError:
            return
        self._offset += len(data)
        *lines, self._pending = (self._pending + data).split(b"\n")
        for raw in lines:
            event = self._parse(raw)
            if event is not None:
                self.last_event = event
                self.events_seen += 1
                try:
                    self._on_event(event)
                except Exception as exc:  # a broken stdout must not kill the tailer silently mid-run
                    print(f"training-hub: warning: could not print progress: {exc}", file=sys.stderr)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any] | None:
        raw = raw.strip()
        if not raw:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return progress_event(record)
