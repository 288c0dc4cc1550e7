"""Status helpers: metav1.Condition-style conditions, RFC 3339 times, progress and summary parsing.

Pure functions, shared by `reconcile` (which builds the status) and `handlers` (which records API errors).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

from sftjob_operator.api import ConditionType, Phase

# Plain-string names of the API's enums (the status is handled as JSON dicts here).
PREPARED = ConditionType.PREPARED.value
CREATED = ConditionType.CREATED.value
SCHEDULED = ConditionType.SCHEDULED.value
RUNNING = ConditionType.RUNNING.value
SUCCEEDED = ConditionType.SUCCEEDED.value
FAILED = ConditionType.FAILED.value
SUSPENDED = ConditionType.SUSPENDED.value
# The kstatus conditions GitOps tools read (Flux, cli-utils kstatus; docs/operator.md "GitOps"), derived from the phase:
# Reconciling and Stalled are abnormal-true, and Ready == not Reconciling and not Stalled.
READY = ConditionType.READY.value
RECONCILING = ConditionType.RECONCILING.value
STALLED = ConditionType.STALLED.value
CONDITION_TYPES = tuple(condition.value for condition in ConditionType)

PENDING = Phase.PENDING.value
PREPARING = Phase.PREPARING.value
RESTARTING = Phase.RESTARTING.value
PHASES = tuple(phase.value for phase in Phase)
FINISHED_PHASES = (SUCCEEDED, FAILED)

MAX_MESSAGE_CHARS = 1024  # keep status and events readable; the full text is in the pod


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def clip(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    message = message or ""
    return message if len(message) <= limit else message[: limit - 3] + "..."


def find_condition(conditions: list[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def condition_is_true(conditions: list[Mapping[str, Any]] | None, type_: str) -> bool:
    condition = find_condition(conditions, type_)
    return bool(condition) and condition.get("status") == "True"


def set_condition(
    conditions: list[Mapping[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with the condition set; lastTransitionTime moves only when the status flips (metav1 rule)."""
    status_text = "True" if status else "False"
    result: list[dict[str, Any]] = []
    found = False
    for condition in conditions or ():
        if condition.get("type") != type_:
            result.append(dict(condition))
            continue
        found = True
        changed = condition.get("status") != status_text
        result.append(
            {
                "type": type_,
                "status": status_text,
                "reason": reason,
                "message": clip(message),
                "lastTransitionTime": format_time(now) if changed else condition.get("lastTransitionTime", format_time(now)),
                "observedGeneration": generation,
            }
        )
    if not found:
        result.append(
            {
                "type": type_,
                "status": status_text,
                "reason": reason,
                "message": clip(message),
                "lastTransitionTime": format_time(now),
                "observedGeneration": generation,
            }
        )
    order = {name: index for index, name in enumerate(CONDITION_TYPES)}
    result.sort(key=lambda c: order.get(c.get("type"), len(order)))
    if generation is None:
        for condition in result:
            condition.pop("observedGeneration", None)
    return result


def parse_progress_line(log_text: str | None) -> dict[str, Any] | None:
    """The last `{"event": "progress", ...}` JSON line of a log tail, or None."""
    if not log_text:
        return None
    for line in reversed(log_text.splitlines()):
        line = line.strip()
        if not line.startswith("{") or '"progress"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "progress":
            return record
    return None


def progress_status(record: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    progress: dict[str, Any] = {"updatedAt": format_time(now)}
    for source, target in (("epoch", "epoch"), ("step", "step"), ("loss", "loss"), ("samples_seen", "samplesSeen")):
        value = record.get(source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            progress[target] = value
    return progress


def progress_text(progress: Mapping[str, Any]) -> str:
    parts = []
    if "epoch" in progress:
        parts.append(f"epoch {progress['epoch']}")
    if "step" in progress:
        parts.append(f"step {progress['step']}")
    if "loss" in progress:
        parts.append(f"loss {progress['loss']:.4g}" if isinstance(progress["loss"], float) else f"loss {progress['loss']}")
    return " ".join(parts)


def parse_summary(termination_message: str | None) -> dict[str, Any] | None:
    """The entrypoint's termination summary (a JSON object), or None when the message is not one."""
    if not termination_message:
        return None
    try:
        record = json.loads(termination_message)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def summary_status(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary fields the status keeps (camelCase)."""
    result: dict[str, Any] = {}
    for source, target in (
        ("outcome", "outcome"),
        ("message", "message"),
        ("final_checkpoint", "finalCheckpoint"),
        ("epoch", "epoch"),
        ("step", "step"),
        ("loss", "loss"),
        ("resumed_from_epoch", "resumedFromEpoch"),
    ):
        value = summary.get(source)
        if value is None or isinstance(value, bool):
            continue
        if target in ("outcome", "finalCheckpoint", "message"):
            result[target] = clip(str(value), 512)
        elif isinstance(value, (int, float)):
            result[target] = value
    return result
