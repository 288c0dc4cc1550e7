"""Checks of a training data file before anything heavy starts (no torch, no instructlab).

instructlab-training reads `data_path` with `datasets.load_dataset("json")` and reports a bad file
late and badly (`KeyError: 'messages'`, "Malformed or missing data", after the model and tokenizer
have loaded). `data_file_problems` reads the file once, line by line, and says which line is wrong
and why, so a bad file is a configuration error (exit 78), not a retryable failure.

Accepted: JSON Lines, one object per line (blank lines are skipped):
- chat data: `{"messages": [{"role": "user"|"assistant"|"system"|"tool"|"pretraining", "content": "..."}, ...]}`
  (other keys, such as instructlab's `unmask`, are allowed);
- pretraining (`is_pretraining`): `{"<document_column_name>": "raw text"}`.
CSV, Parquet and JSON arrays are refused with a conversion hint: the library trains on what
instructlab's data processing reads, and a silent conversion would hide which file was used.
`training-hub prepare` (or your own script) converts other formats.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from training_hub.params import ParameterError

CHAT_ROLES = ("system", "user", "assistant", "tool", "pretraining")
MAX_REPORTED = 10  # problems listed per file; the count of the rest follows
_OTHER_FORMATS = {".csv": "CSV", ".tsv": "TSV", ".parquet": "Parquet", ".arrow": "Arrow", ".xlsx": "Excel"}
_CONVERT_HINT = "convert it to JSON Lines (one JSON object per line), e.g. with pandas: df.to_json(path, orient='records', lines=True)"


class DataError(ParameterError):
    """The training data cannot be used as it is (a configuration error: exit 78)."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        self.args = ("invalid training data:\n  - " + "\n  - ".join(problems),)

    def __str__(self) -> str:
        return self.args[0]


def sample_problem(sample: Any, *, is_pretraining: bool = False, document_column_name: str = "document") -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(sample, dict):
        return f"must be a JSON object (got {type(sample).__name__})"
    if is_pretraining:
        document = sample.get(document_column_name)
        if document_column_name not in sample:
            return f"has no {document_column_name!r} field (the document column; keys: {sorted(sample)[:8]})"
        if not isinstance(document, str):
            return f"{document_column_name!r} must be a string, got {type(document).__name__}"
        return None
    messages = sample.get("messages")
    if "messages" not in sample:
        return f"has no 'messages' field (keys: {sorted(sample)[:8]}); chat data needs a list of messages"
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] must be an object with 'role' and 'content', got {type(message).__name__}"
        role = message.get("role")
        if role not in CHAT_ROLES:
            return f"messages[{index}].role must be one of {', '.join(CHAT_ROLES)} (got {role!r})"
        if not isinstance(message.get("content"), str):
            return f"messages[{index}].content must be a string (got {type(message.get('content')).__name__})"
    if "unmask" in sample and not isinstance(sample["unmask"], bool):
        return f"'unmask' must be true or false (got {sample['unmask']!r})"
    return None


def data_file_problems(
    data_path: str | os.PathLike[str], *, is_pretraining: bool = False, document_column_name: str = "document"
) -> list[str]:
    """Every problem of a data file (up to MAX_REPORTED, then a count), each naming the file and line."""
    path = Path(data_path)
    name = str(data_path)
    if path.suffix.lower() in _OTHER_FORMATS:
        return [f"{name}: {_OTHER_FORMATS[path.suffix.lower()]} is not supported; {_CONVERT_HINT}"]
    problems: list[str] = []
    samples = 0
    bad = 0
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
            if head == b"PAR1":
                return [f"{name}: a Parquet file is not supported; {_CONVERT_HINT}"]
            handle.seek(0)
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                problem = _line_problem(raw, number, is_pretraining, document_column_name)
                if problem is None:
                    samples += 1
                    continue
                bad += 1
                if number == 1 and raw.lstrip().startswith(b"["):
                    return [f"{name}: a JSON array is not supported; {_CONVERT_HINT}"]
                if bad <= MAX_REPORTED:
                    problems.append(f"{name} line {number}: {problem}")
    except OSError as exc:
        return [f"{name}: cannot read ({exc.strerror or exc})"]
    if bad > MAX_REPORTED:
        problems.append(f"{name}: {bad - MAX_REPORTED} more bad lines")
    if not problems and samples == 0:
        problems.append(f"{name}: no samples (the file is empty)")
    return problems


def _line_problem(raw: bytes, number: int, is_pretraining: bool, document_column_name: str) -> str | None:
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start})"
    try:
        sample = json.loads(text.rstrip("\r\n"))
    except ValueError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})" if hasattr(exc, "msg") else f"not valid JSON ({exc})"
    return sample_problem(sample, is_pretraining=is_pretraining, document_column_name=document_column_name)


def check_data_file(data_path: str | os.PathLike[str], *, is_pretraining: bool = False,
                    document_column_name: str = "document") -> None:
    """Raise `DataError` listing the problems of a data file; the step the library and entrypoint run before launch."""
    problems = data_file_problems(data_path, is_pretraining=is_pretraining, document_column_name=document_column_name)
    if problems:
        raise DataError([f"data_path: {problem}" for problem in problems])
