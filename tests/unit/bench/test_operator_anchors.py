"""bench/operator_anchors.py: which audited requests count as a job start's and which are the subject's background."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import operator_anchors  # noqa: E402

from tests.support.audit_log import Request  # noqa: E402


def _request(verb: str, resource: str, name: str = "") -> Request:
    return Request(received=0.0, user="u", user_agent="sftjob-operator", verb=verb, resource=resource,
                   namespace="ns", name=name, code=200)


def test_requests_naming_the_measured_jobs_or_their_objects_are_the_starts_others_are_background():
    names = ["s1"]
    start = [
        _request("create", "pods", "s1-node-0"), _request("create", "services", "s1"),
        _request("create", "configmaps", "s1-params"), _request("create", "events", "s1.18a2b3"),
        _request("patch", "sftjobs/status", "s1"), _request("list", "pods"),  # no name: counted against the start
    ]
    background = [
        _request("get", "pods/log", "s0-node-0"),  # an earlier job's progress read
        _request("get", "pods/log", "s10-node-0"),  # a job whose name only begins like the measured one's
        _request("get", "/apis/training-hub.io/v1alpha1"),  # API discovery: no object
    ]
    assert all(operator_anchors.of_jobs(r, names) for r in start)
    assert not any(operator_anchors.of_jobs(r, names) for r in background)
