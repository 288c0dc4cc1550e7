"""Prepared data (training_hub/backends/prepare.py): the manifest decides reuse, bad data is named by file and line,
publishing is atomic, and the other nodes of a gang wait for node rank 0 instead of writing with it.

The race tests run instructlab's real data processing in separate processes (one per "node") on the tiny local
model, into one shared directory: first the way instructlab does it on every node (the race, made visible), then
through the library (the race gone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from training_hub import ParameterError, prepare_data
from training_hub.backends import prepare as prep
from training_hub.params import parse_train_kwargs
from training_hub.testing import write_chat_dataset, write_pretraining_dataset


def request(model, data, ckpt, **extra):
    kwargs = dict(model_path=str(model), data_path=str(data), ckpt_output_dir=str(ckpt), num_epochs=1,
                  effective_batch_size=8, learning_rate=1e-4, max_seq_len=256)
    kwargs.update(extra)
    return parse_train_kwargs(kwargs, backend_arg_names=("data_process_num_cpu_procs", "chat_tmpl_path"))


def identity_of(model, data, ckpt, **extra):
    return prep.data_identity(prep.PrepareSpec.from_request(request(model, data, ckpt, **extra)))


# --- the manifest: what matches, what does not ------------------------------------------------------------------


@pytest.fixture
def local_model(tiny_model, tmp_path):
    """A copy of the tokenizer files only (what the identity reads), so tests may edit them."""
    copy = tmp_path / "model"
    copy.mkdir()
    for name in prep.TOKENIZER_FILES + ("config.json",):
        if (Path(tiny_model.path) / name).is_file():
            (copy / name).write_bytes((Path(tiny_model.path) / name).read_bytes())
    return copy


def test_same_inputs_match_and_each_input_that_changes_the_output_does_not(local_model, chat_data, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_bytes(chat_data.read_bytes())
    base = identity_of(local_model, data, tmp_path / "ckpt")
    manifest = base.as_manifest()
    assert prep.manifest_differences(manifest, identity_of(local_model, data, tmp_path / "ckpt")) == []

    # Touching the file (new mtime, same bytes) still matches: the content hash decides.
    os.utime(data, ns=(1, 1))
    assert prep.manifest_differences(manifest, identity_of(local_model, data, tmp_path / "ckpt")) == []

    assert prep.manifest_differences(manifest, identity_of(local_model, data, tmp_path / "ckpt", max_seq_len=512)) == [
        "max_seq_len: 256 -> 512"]

    with data.open("a") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    changed = prep.manifest_differences(manifest, identity_of(local_model, data, tmp_path / "ckpt"))
    assert len(changed) == 1 and changed[0].startswith("data file content (sha256)")

    data.write_bytes(chat_data.read_bytes())
    (local_model / "chat_template.jinja").write_text("{{ messages }}")
    changed = prep.manifest_differences(manifest, identity_of(local_model, data, tmp_path / "ckpt"))
    assert [c.split(":")[0] for c in changed] == ["tokenizer files", "chat template"]

    old_version = {**manifest, "instructlab_training": "0.15.0"}
    assert prep.manifest_differences(old_version, base) == ["instructlab-training version: 0.15.0 -> " + base.instructlab_training]
    assert prep.manifest_differences(None, base) == ["no manifest"]


def test_pretraining_identity_ignores_what_the_trainer_decides(local_model, pretraining_data, tmp_path):
    common = dict(is_pretraining=True, block_size=64)
    base = identity_of(local_model, pretraining_data, tmp_path / "ckpt", **common).as_manifest()
    assert base["pretraining"] == {"document_column_name": "document", "block_size": 64}
    # Blocking happens in the trainer, and pretraining processing does not cut by max_seq_len.
    same = identity_of(local_model, pretraining_data, tmp_path / "ckpt", is_pretraining=True, block_size=128, max_seq_len=999)
    assert prep.manifest_differences(base, same) == []
    other_column = identity_of(local_model, pretraining_data, tmp_path / "ckpt", **common, document_column_name="text")
    assert prep.manifest_differences(base, other_column) == ["document_column_name: document -> text"]


def test_the_data_hash_is_reused_only_for_the_same_file_size_and_mtime(local_model, chat_data, tmp_path):
    spec = prep.PrepareSpec.from_request(request(local_model, chat_data, tmp_path / "ckpt"))
    real = prep.data_identity(spec).as_manifest()
    forged = {**real, "data": {**real["data"], "sha256": "cached"}}
    assert prep.data_identity(spec, known=forged).data["sha256"] == "cached"  # same path, size, mtime: trusted
    forged["data"]["mtime_ns"] += 1
    assert prep.data_identity(spec, known=forged).data["sha256"] == real["data"]["sha256"]  # otherwise hashed


# --- bad data and bad directories: named, before any tokenizing --------------------------------------------------


@pytest.mark.parametrize("line, problem", [
    ('{"messages": [{"role": "user", "content": "hi"}', "line 3: not valid JSON"),
    ('["a list"]', "line 3: must be a JSON object (got list)"),
    ('{"text": "no messages"}', "line 3: has no 'messages' field (keys: ['text']); chat data needs a list of messages"),
    ('{"messages": [{"role": "user", "content": 5}]}', "line 3: messages[0].content must be a string (got int)"),
    ('{"messages": [{"content": "who?"}]}', "line 3: messages[0].role must be one of system, user, assistant, tool, "
                                            "pretraining (got None)"),
])
def test_a_bad_line_is_reported_with_file_and_line(tiny_model, tmp_path, line, problem):
    data = tmp_path / "bad.jsonl"
    rows = write_chat_dataset(tmp_path / "ok.jsonl", 2).read_text().splitlines()
    data.write_text("\n".join([*rows, line]) + "\n")
    with pytest.raises(ParameterError) as caught:
        prepare_data(str(tiny_model), str(data), str(tmp_path / "ckpt"), num_epochs=1, effective_batch_size=8,
                     learning_rate=1e-4, max_seq_len=256)
    assert caught.value.problems[0].startswith(f"data_path: {data} {problem}"), caught.value.problems
    assert not (tmp_path / "ckpt" / "data").exists()  # nothing written


def test_pretraining_rows_need_the_document_column(tiny_model, tmp_path):
    data = write_pretraining_dataset(tmp_path / "docs.jsonl", n_docs=3, column="text")
    with pytest.raises(ParameterError) as caught:
        prepare_data(str(tiny_model), str(data), str(tmp_path / "ckpt"), num_epochs=1, effective_batch_size=8,
                     learning_rate=1e-4, max_seq_len=256, is_pretraining=True, block_size=64)
    assert caught.value.problems[0] == (f"data_path: {data} line 1: has no 'document' field (the document column; "
                                        "keys: ['text'])")


def test_an_output_directory_holding_other_files_is_refused(tiny_model, chat_data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ParameterError, match="holds other files \\(notes.txt\\)"):
        prepare_data(str(tiny_model), str(chat_data), str(tmp_path / "ckpt"), data_output_dir=str(tmp_path / "mine"),
                     num_epochs=1, effective_batch_size=8, learning_rate=1e-4, max_seq_len=256)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_waiting_node_gives_up_with_a_clear_message(local_model, chat_data, tmp_path):
    worker = request(local_model, chat_data, tmp_path / "ckpt", nnodes=2, node_rank=1, rdzv_id="r",
                     rdzv_endpoint="127.0.0.1:29500")
    with pytest.raises(prep.PrepareTimeout) as caught:
        prep.ensure_prepared(worker, timeout_s=0.3)
    message = str(caught.value)
    assert "node rank 1 waited 0.3 s for node rank 0 to prepare the data in" in message
    assert "no manifest" in message and "training-hub prepare" in message and prep.PREPARE_TIMEOUT_VARIABLE in message


def test_waiting_nodes_fail_at_once_with_node_rank_0s_data_error(local_model, tmp_path):
    data = write_chat_dataset(tmp_path / "train.jsonl", 3)
    data.write_text(data.read_text() + "{oops\n")
    dist = dict(nnodes=2, rdzv_id="r", rdzv_endpoint="127.0.0.1:29500")
    with pytest.raises(ParameterError, match="line 4: not valid JSON"):
        prep.ensure_prepared(request(local_model, data, tmp_path / "ckpt", node_rank=0, **dist))
    started = time.monotonic()
    with pytest.raises(ParameterError) as caught:
        prep.ensure_prepared(request(local_model, data, tmp_path / "ckpt", node_rank=1, **dist), timeout_s=60)
    assert time.monotonic() - started < 10  # not the timeout
    assert caught.value.problems[0] == "node rank 0 could not prepare the data for node rank 1:"
    assert f"{data} line 4: not valid JSON" in caught.value.problems[1]
    # Other inputs (the data fixed) are not failed by that record: the node waits for them.
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(prep.PrepareTimeout):
        prep.ensure_prepared(request(local_model, data, tmp_path / "ckpt", node_rank=1, **dist), timeout_s=0.3)


def test_prepare_timeout_comes_from_the_environment():
    assert prep.prepare_timeout({}) == prep.DEFAULT_PREPARE_TIMEOUT_S
    assert prep.prepare_timeout({prep.PREPARE_TIMEOUT_VARIABLE: "90"}) == 90
    with pytest.raises(ParameterError, match=f"{prep.PREPARE_TIMEOUT_VARIABLE}: must be a number of seconds > 0"):
        prep.prepare_timeout({prep.PREPARE_TIMEOUT_VARIABLE: "soon"})


# --- real processing: prepared once, reused, re-prepared on a change ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prepared_once_reused_while_inputs_match_and_re_prepared_when_they_change(tiny_model, chat_data, tmp_path):
    args = dict(num_epochs=1, effective_batch_size=8, learning_rate=1e-4, max_seq_len=256, data_process_num_cpu_procs=1)
    first = prepare_data(str(tiny_model), str(chat_data), str(tmp_path / "ckpt"), **args)
    assert not first.reused and first.samples == len(chat_data.read_text().splitlines())
    assert first.data_file.is_file() and first.manifest["max_seq_len"] == 256
    assert [p.name for p in tmp_path.joinpath("ckpt").iterdir()] == ["data"]  # no staging directory left behind
    inode = first.data_file.stat().st_ino

    again = prepare_data(str(tiny_model), str(chat_data), str(tmp_path / "ckpt"), **args)
    assert again.reused and again.data_file.stat().st_ino == inode

    shorter = prepare_data(str(tiny_model), str(chat_data), str(tmp_path / "ckpt"), **{**args, "max_seq_len": 128})
    assert not shorter.reused and shorter.changes == ("max_seq_len: 256 -> 128",)
    assert shorter.data_file.stat().st_ino != inode and shorter.manifest["max_seq_len"] == 128
    assert all(row["len"] < 128 for row in map(json.loads, shorter.data_file.read_text().splitlines()))
    assert shorter.samples < first.samples  # samples not shorter than max_seq_len are dropped

    forced = prepare_data(str(tiny_model), str(chat_data), str(tmp_path / "ckpt"), force=True, **{**args, "max_seq_len": 128})
    assert not forced.reused and forced.changes == ("forced",)


# --- the race: N launchers processing into one shared directory --------------------------------------------------

RACE_SAMPLES = 3000
RACE_REWRITES = 3

# What instructlab's run_training does in the launcher of every node before torchrun starts (main_ds.run_training).
INSTRUCTLAB_LAUNCHER = textwrap.dedent("""
    import sys
    from instructlab.training import data_process
    model, data, out = sys.argv[1:4]
    data_process.process_data(data_path=data, data_output_path=out, max_seq_len=256, model_path=model, num_cpu_procs=1)
""")

# What the library does now, on node `rank` of 2 (backends/instructlab.py calls ensure_prepared before run_training).
LIBRARY_LAUNCHER = textwrap.dedent("""
    import json, sys
    from training_hub.backends.prepare import ensure_prepared
    from training_hub.params import parse_train_kwargs
    model, data, ckpt, rank, seq = sys.argv[1:6]
    request = parse_train_kwargs(dict(model_path=model, data_path=data, ckpt_output_dir=ckpt, num_epochs=1,
        effective_batch_size=8, learning_rate=1e-4, max_seq_len=int(seq), nnodes=2, node_rank=int(rank), rdzv_id="r",
        rdzv_endpoint="127.0.0.1:29500", extra_args={"data_process_num_cpu_procs": 1}),
        backend_arg_names=("data_process_num_cpu_procs",))
    prepared = ensure_prepared(request, timeout_s=600)
    print(json.dumps({"reused": prepared.reused, "samples": prepared.samples}))
""")


class Reader(threading.Thread):
    """A fast node's rank: reads data.jsonl over and over while the others write, and records every read that
    was not a complete data set (fewer bytes than a finished file, or a line that is not JSON)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.reads: list[tuple[int, int, bool]] = []  # (bytes, complete lines, every line valid JSON)

    def run(self) -> None:
        while not self.stop.wait(0.001):  # about a thousand reads a second, leaving the CPU to the writers
            try:
                with open(self.path, "rb") as handle:
                    content = handle.read()
            except FileNotFoundError:
                continue
            lines = content.splitlines()
            valid = all(_is_json(line) for line in lines) and (not content or content.endswith(b"\n"))
            self.reads.append((len(content), len(lines), valid))

    def finish(self) -> list[tuple[int, int, bool]]:
        self.stop.set()
        self.join(10)
        return self.reads


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def launch(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def race_data(tmp_path_factory):
    return write_chat_dataset(tmp_path_factory.mktemp("race") / "chat.jsonl", n_samples=RACE_SAMPLES, seed=11)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_race_before_a_second_node_truncates_the_data_a_first_node_reads(tiny_model, race_data, tmp_path):
    shared = tmp_path / "shared" / "data"
    finish(launch(INSTRUCTLAB_LAUNCHER, str(tiny_model), str(race_data), str(shared)))  # the fast node: done
    complete = (shared / "data.jsonl").stat().st_size
    lines = len((shared / "data.jsonl").read_bytes().splitlines())

    # A reader thread may be starved for the whole rewrite on a loaded machine: the race is shown when any of a
    # few rewrites exposes it (it did in 65 of 542 reads of the first one when measured).
    for attempt in range(1, RACE_REWRITES + 1):
        reader = Reader(shared / "data.jsonl")
        reader.start()  # the fast node's ranks start reading ...
        finish(launch(INSTRUCTLAB_LAUNCHER, str(tiny_model), str(race_data), str(shared)))  # ... while the slow node rewrites
        reads = reader.finish()
        partial = [r for r in reads if r[0] < complete or not r[2]]
        if partial:
            break

    print(f"race before (rewrite {attempt}): {len(reads)} reads of data.jsonl while node 2 processed; {len(partial)} "
          f"were not the complete file ({complete} bytes, {lines} lines), e.g. {sorted(partial)[:3]}")
    assert partial, "expected the second node's rewrite to expose a truncated data.jsonl to a reader"
    assert min(r[1] for r in partial) < lines  # a rank would have trained on part of the data


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_race_after_one_node_prepares_the_other_waits_and_readers_see_only_complete_files(
    tiny_model, race_data, tmp_path
):
    ckpt = tmp_path / "shared" / "ckpt"
    # Data of an earlier run with another max_seq_len: a mismatch, so node rank 0 re-prepares while a reader reads.
    finish(launch(LIBRARY_LAUNCHER, str(tiny_model), str(race_data), str(ckpt), "0", "128"))
    data_file = ckpt / "data" / "data.jsonl"
    old = (data_file.stat().st_size, len(data_file.read_bytes().splitlines()))

    reader = Reader(data_file)
    reader.start()
    rank1 = launch(LIBRARY_LAUNCHER, str(tiny_model), str(race_data), str(ckpt), "1", "256")  # starts first, waits
    time.sleep(1)
    rank0 = launch(LIBRARY_LAUNCHER, str(tiny_model), str(race_data), str(ckpt), "0", "256")
    out0, out1 = json.loads(finish(rank0).splitlines()[-1]), json.loads(finish(rank1).splitlines()[-1])
    reads = reader.finish()

    new = (data_file.stat().st_size, len(data_file.read_bytes().splitlines()))
    assert out0 == {"reused": False, "samples": new[1]} and out1 == {"reused": True, "samples": new[1]}
    assert new != old
    partial = [r for r in reads if (r[0], r[1]) not in (old, new) or not r[2]]
    print(f"race after: {len(reads)} reads while node rank 0 re-prepared and node rank 1 waited; every one was a "
          f"complete file (old {old} or new {new}); {len(partial)} partial")
    assert reads and not partial
    assert {(r[0], r[1]) for r in reads} <= {old, new}
    manifest = prep.read_manifest(ckpt / "data")
    assert manifest["max_seq_len"] == 256 and manifest["samples"] == new[1]
    assert sorted(p.name for p in ckpt.iterdir()) == ["data"]  # no staging or replaced directory left


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_preparers_at_once_publish_one_complete_directory(tiny_model, chat_data, tmp_path):
    """Two node-rank-0 launchers on one directory (e.g. two jobs sharing data_output_dir): both finish, each
    reader sees a complete file, and what is left is one directory whose manifest describes it."""
    ckpt = tmp_path / "ckpt"
    reader = Reader(ckpt / "data" / "data.jsonl")
    reader.start()
    first = launch(LIBRARY_LAUNCHER, str(tiny_model), str(chat_data), str(ckpt), "0", "256")
    second = launch(LIBRARY_LAUNCHER, str(tiny_model), str(chat_data), str(ckpt), "0", "256")
    results = [json.loads(finish(p).splitlines()[-1]) for p in (first, second)]
    reads = reader.finish()
    final = (ckpt / "data" / "data.jsonl").read_bytes()
    assert {r["samples"] for r in results} == {len(final.splitlines())}
    assert all(r == (len(final), len(final.splitlines()), True) for r in reads)
    assert prep.read_manifest(ckpt / "data")["samples"] == len(final.splitlines())
    assert sorted(p.name for p in ckpt.iterdir()) == ["data"]
