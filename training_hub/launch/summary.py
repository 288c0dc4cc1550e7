"""The termination summary: one JSON object the operator reads from the container's termination message.

Kubernetes keeps at most 4096 bytes of a termination message, so the summary is built to fit:
the message is shortened first (keeping its head and its tail, where a traceback's cause is), then
optional fields are dropped. Writing it never raises: a summary that cannot be written is a warning
on stderr, not a reason to lose the real exit code.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping

from training_hub.launch.exit_codes import Outcome

MAX_SUMMARY_BYTES = 4096
_ELLIPSIS = " […] "
# fields in the order they are given up when the summary does not fit
_OPTIONAL_FIELDS = ("resumed_from_epoch", "loss", "step", "epoch", "final_checkpoint")


def build_summary(
    outcome: Outcome,
    message: str = "",
    *,
    final_checkpoint: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
    loss: float | None = None,
    resumed_from_epoch: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    summary: dict[str, Any] = {"outcome": Outcome(outcome).value, "message": message}
    optional = {
        "final_checkpoint": final_checkpoint,
        "epoch": epoch,
        "step": step,
        "loss": loss,
        "resumed_from_epoch": resumed_from_epoch,
    }
    summary.update({key: value for key, value in optional.items() if value is not None})
    if extra:
        summary.update({key: value for key, value in extra.items() if value is not None})
    return summary


def encode_summary(summary: Mapping[str, Any], limit: int = MAX_SUMMARY_BYTES) -> bytes:
    """JSON bytes of the summary, at most `limit` bytes, valid UTF-8 and valid JSON whatever the input."""
    data = dict(summary)
    encoded = _dump(data)
    if len(encoded) <= limit:
        return encoded
    message = str(data.get("message", ""))
    overflow = len(encoded) - limit
    data["message"] = shorten_middle(message, max(0, len(_dump_str(message)) - overflow))
    encoded = _dump(data)
    for field in [f for f in data if f not in ("outcome", "message", *_OPTIONAL_FIELDS)] + list(_OPTIONAL_FIELDS):
        if len(encoded) <= limit:
            break
        data.pop(field, None)
        encoded = _dump(data)
    while len(encoded) > limit:  # only a pathological outcome/message mix gets here; shrink until it fits
        data["message"] = shorten_middle(str(data["message"]), len(_dump_str(str(data["message"]))) // 2)
        encoded = _dump(data)
    return encoded


def shorten_middle(text: str, max_json_bytes: int) -> str:
    """`text` cut in the middle so that its JSON string form takes at most `max_json_bytes` bytes.

    Cuts between characters (never inside a UTF-8 sequence or a JSON escape), keeping the beginning
    (what failed) and the end (the exception that caused it).
    """
    if len(_dump_str(text)) <= max_json_bytes:
        return text
    budget = max_json_bytes - len(_dump_str(_ELLIPSIS))
    if budget <= 2:
        return ""
    # Each character costs its JSON-escaped UTF-8 size; take from both ends until the budget is spent.
    def cost(index: int) -> int:
        return len(_dump_str(text[index])) - 2

    head_budget = (budget - 2) // 2
    tail_budget = budget - 2 - head_budget
    head_end, spent = 0, 0
    while head_end < len(text) and spent + cost(head_end) <= head_budget:
        spent += cost(head_end)
        head_end += 1
    tail_start, spent = len(text), 0
    while tail_start > head_end and spent + cost(tail_start - 1) <= tail_budget:
        spent += cost(tail_start - 1)
        tail_start -= 1
    return text[:head_end] + _ELLIPSIS + text[tail_start:]


def write_summary(summary: Mapping[str, Any], path: str | None) -> bool:
    """Write the summary to `path` (the termination-message file). Returns False, with a warning, if it cannot;
    False without one when there is no path (outside a pod, none asked for)."""
    if path is None:
        return False
    try:
        with open(path, "wb") as handle:
            handle.write(encode_summary(summary))
        return True
    except OSError as exc:
        print(f"training-hub: warning: could not write the termination summary to {path}: {exc}", file=sys.stderr)
        return False


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, default=str).encode("utf-8", "replace")


def _dump_str(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode("utf-8", "replace")
