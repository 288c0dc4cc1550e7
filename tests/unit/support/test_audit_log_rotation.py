"""tests/support/audit_log.py across a rotation of the API server's audit log (lumberjack renames the full file to
<name>-<time><ext> and starts a new one): no request is lost or read twice, by the tail or by a window's read."""

from __future__ import annotations

import json

from tests.support import audit_log


def _line(name: str, second: int) -> str:
    return json.dumps({
        "requestReceivedTimestamp": f"2026-11-30T03:00:{second:02d}.000000Z", "verb": "create", "userAgent": "t/1",
        "objectRef": {"resource": "pods", "namespace": "ns", "name": name}, "responseStatus": {"code": 201},
    }) + "\n"


def _write(path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write("".join(lines))


def test_the_tail_follows_the_log_through_a_rotation(tmp_path):
    log = tmp_path / "audit.log"
    _write(log, _line("before", 0))
    tail = audit_log.Tail(log)
    _write(log, _line("a", 1), _line("b", 2)[:40])  # the last line half-written
    assert [r.name for r in tail.read()] == ["a"]
    _write(log, _line("b", 2)[40:], _line("c", 3))
    log.rename(tmp_path / "audit-2026-11-30T03-00-04.000.log")  # rotated: nothing read of it after "b" yet
    _write(log, _line("d", 4), _line("e", 5))
    assert [r.name for r in tail.read()] == ["b", "c", "d", "e"]
    _write(log, _line("f", 6))
    assert [r.name for r in tail.read()] == ["f"]
    assert tail.read() == []
    tail.close()


def test_a_tail_read_while_the_new_log_is_not_created_yet_loses_nothing(tmp_path):
    log = tmp_path / "audit.log"
    _write(log, "")
    tail = audit_log.Tail(log)
    _write(log, _line("a", 1))
    log.rename(tmp_path / "audit-2026-11-30T03-00-02.000.log")
    assert [r.name for r in tail.read()] == ["a"]
    _write(log, _line("b", 2))
    assert [r.name for r in tail.read()] == ["b"]


def test_a_window_is_read_from_the_rotated_parts_too(tmp_path):
    log = tmp_path / "audit.log"
    _write(log, _line("a", 1), _line("b", 2))
    log.rename(tmp_path / "audit-2026-11-30T03-00-03.000.log")
    _write(log, _line("c", 3))
    found = audit_log.requests(log, since=_epoch(2), until=_epoch(3))
    assert [r.name for r in found] == ["b", "c"]


def _epoch(second: int) -> float:
    return audit_log.parse([_line("x", second)]).__next__().received
