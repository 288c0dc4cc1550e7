"""The data file check that runs before launch: every bad line named with its file, line and problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_hub.data import MAX_REPORTED, DataError, check_data_file, data_file_problems
from training_hub.params import ParameterError
from training_hub.testing import write_chat_dataset, write_pretraining_dataset

CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_the_project_s_own_datasets_pass(tmp_path):
    assert data_file_problems(write_chat_dataset(tmp_path / "chat.jsonl")) == []
    documents = write_pretraining_dataset(tmp_path / "docs.jsonl")
    assert data_file_problems(documents, is_pretraining=True) == []
    assert data_file_problems(documents, is_pretraining=True, document_column_name="text")[0].endswith(
        "has no 'text' field (the document column; keys: ['document'])")


@pytest.mark.parametrize(("line", "problem"), [
    ('{"text": "no messages"}', "has no 'messages' field (keys: ['text']); chat data needs a list of messages"),
    ('{"messages": []}', "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects"),
    ('{"messages": "hi"}', "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects"),
    ('{"messages": [{"role": "bot", "content": "x"}]}',
     "messages[0].role must be one of system, user, assistant, tool, pretraining (got 'bot')"),
    ('{"messages": [{"role": "user"}]}', "messages[0].content must be a string (got NoneType)"),
    ('{"messages": ["hi"]}', "messages[0] must be an object with 'role' and 'content', got str"),
    ('{"messages": [{"role": "user", "content": "x"}', "not valid JSON (Expecting ',' delimiter at column 47)"),
    ("[1, 2]", "must be a JSON object (got list)"),
    ('{"messages": [{"role": "user", "content": "x"}], "unmask": "yes"}', "'unmask' must be true or false (got 'yes')"),
])
def test_each_bad_line_is_named(tmp_path, line, problem):
    path = write_lines(tmp_path / "train.jsonl", json.dumps(CHAT), line)
    assert data_file_problems(path) == [f"{path} line 2: {problem}"]


def test_blank_lines_are_skipped_and_an_empty_file_is_refused(tmp_path):
    assert data_file_problems(write_lines(tmp_path / "a.jsonl", json.dumps(CHAT), "", "  ")) == []
    empty = write_lines(tmp_path / "empty.jsonl", "")
    assert data_file_problems(empty) == [f"{empty}: no samples (the file is empty)"]


def test_many_bad_lines_are_counted_not_listed(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", *(["{}"] * (MAX_REPORTED + 5)))
    problems = data_file_problems(path)
    assert len(problems) == MAX_REPORTED + 1 and problems[-1] == f"{path}: 5 more bad lines"


@pytest.mark.parametrize(("name", "content", "kind"), [
    ("train.csv", b"role,content\nuser,hi\n", "CSV"),
    ("train.parquet", b"PAR1....", "Parquet"),
    ("train.bin", b"PAR1....", "a Parquet file"),
    ("train.json", b'[{"messages": []}]', "a JSON array"),
])
def test_other_formats_are_refused_with_a_conversion_hint(tmp_path, name, content, kind):
    path = tmp_path / name
    path.write_bytes(content)
    (problem,) = data_file_problems(path)
    assert problem.startswith(f"{path}: {kind} is not supported; convert it to JSON Lines")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(CHAT).encode() + b"\n" + '{"messages": "caf\xe9"}'.encode("latin-1") + b"\n")
    assert data_file_problems(path) == [f"{path} line 2: not UTF-8 text (byte 17)"]


def test_check_raises_a_value_error_naming_data_path(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", '{"text": "x"}')
    with pytest.raises(DataError) as caught:
        check_data_file(path)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ParameterError)
    assert str(caught.value).startswith("invalid training data:\n  - data_path: ")
    assert caught.value.problems == [f"data_path: {path} line 1: has no 'messages' field (keys: ['text']); chat data "
                                     "needs a list of messages"]
