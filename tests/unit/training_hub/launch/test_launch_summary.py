from __future__ import annotations

import json
import os

import pytest

from training_hub.launch.exit_codes import Outcome
from training_hub.launch.summary import MAX_SUMMARY_BYTES, build_summary, encode_summary, shorten_middle, write_summary


def test_summary_holds_the_contract_fields_and_leaves_out_unknowns():
    summary = build_summary(
        Outcome.SUCCEEDED, "done", final_checkpoint="/ckpt/hf_format/samples_64", epoch=1, step=40, loss=1.23,
        resumed_from_epoch=None,
    )
    assert summary == {
        "outcome": "succeeded", "message": "done", "final_checkpoint": "/ckpt/hf_format/samples_64",
        "epoch": 1, "step": 40, "loss": 1.23,
    }


def test_short_summary_is_written_unchanged():
    summary = build_summary(Outcome.FAILED, "boom", step=3)
    assert json.loads(encode_summary(summary)) == summary


@pytest.mark.parametrize("unit", ["x", "é", "日本", "\"\\\n", "🙂"])
def test_long_messages_are_cut_to_the_limit_keeping_head_and_tail(unit):
    message = "HEAD " + unit * 5000 + " TAIL"
    encoded = encode_summary(build_summary(Outcome.FAILED, message, final_checkpoint="/c", epoch=0, step=9, loss=2.0))
    assert len(encoded) <= MAX_SUMMARY_BYTES
    decoded = json.loads(encoded.decode("utf-8"))  # valid UTF-8 and valid JSON: never cut inside a character
    assert decoded["message"].startswith("HEAD ") and decoded["message"].endswith(" TAIL")
    assert "[…]" in decoded["message"]
    assert decoded["step"] == 9 and decoded["final_checkpoint"] == "/c"  # fields survive; the message gave way
    assert len(encoded) > MAX_SUMMARY_BYTES - 16  # and not much more than needed was cut


def test_oversized_fields_are_dropped_when_the_message_alone_cannot_make_room():
    summary = build_summary(Outcome.SUCCEEDED, "ok", final_checkpoint="/" + "d" * 6000, step=1)
    decoded = json.loads(encode_summary(summary))
    assert len(encode_summary(summary)) <= MAX_SUMMARY_BYTES
    assert decoded["outcome"] == "succeeded"
    assert "final_checkpoint" not in decoded


def test_lone_surrogates_do_not_break_encoding():
    encoded = encode_summary(build_summary(Outcome.FAILED, "bad \udcff byte" * 1000))
    assert len(encoded) <= MAX_SUMMARY_BYTES
    json.loads(encoded.decode("utf-8"))


def test_shorten_middle_respects_the_byte_budget():
    text = "abc" * 1000
    for budget in (10, 50, 333, 2999):
        cut = shorten_middle(text, budget)
        assert len(json.dumps(cut, ensure_ascii=False).encode()) <= budget
    assert shorten_middle("short", 100) == "short"


def test_write_summary_writes_the_file(tmp_path):
    path = tmp_path / "termination-log"
    assert write_summary(build_summary(Outcome.INVALID_CONFIG, "num_epochs: bad"), str(path))
    assert json.loads(path.read_text()) == {"outcome": "invalid_config", "message": "num_epochs: bad"}


def test_unwritable_summary_path_warns_instead_of_crashing(tmp_path, capsys):
    target = tmp_path / "missing-dir" / "termination-log"
    assert not write_summary(build_summary(Outcome.FAILED, "x"), str(target))
    assert "could not write the termination summary" in capsys.readouterr().err
    assert not target.exists()
    if os.geteuid() != 0:  # root can write anywhere
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o500)
        assert not write_summary(build_summary(Outcome.FAILED, "x"), str(read_only / "log"))
