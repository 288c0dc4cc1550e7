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


def test_a_variant_names_an_operator_subject_and_its_environment():
    assert operator_anchors.parse_variant("client:SFTJOB_OPERATOR_API_TRANSPORT=client,A=b=c") == (
        "operator-client", {"SFTJOB_OPERATOR_API_TRANSPORT": "client", "A": "b=c"})
    for bad in ("client", "client:", ":A=b", "client:A"):
        try:
            operator_anchors.parse_variant(bad)
        except Exception as error:  # noqa: BLE001 - argparse's own error type
            assert "NAME:KEY=VALUE" in str(error)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_cpu_of_every_repeat_names_each_process_and_marks_the_median(capsys):
    def measured(seconds: float, cpu: dict[str, float]) -> operator_anchors.Measurement:
        return operator_anchors.Measurement(job_created_s=[seconds], last_created_s=seconds, cpu_to_last=cpu)

    fast = measured(4.0, {"subject": 1.0, "bench": 0.2, "kube-apiserver": 3.0, "kube-scheduler": 0.8})
    slow = measured(6.0, {"subject": 1.5, "bench": 0.3, "kube-apiserver": 4.5, "kube-scheduler": 1.2})
    operator_anchors.print_cpu(["operator"], {"operator": [slow, fast]}, {"operator": fast})
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "operator  1    6.00 s   subject 1.5, bench 0.3, apiserver 4.5, scheduler 1.2; sum 7.5" in lines
    assert "operator  2*   4.00 s   subject 1.0, bench 0.2, apiserver 3.0, scheduler 0.8; sum 5.0" in lines
