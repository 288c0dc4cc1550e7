"""Counting API requests from a real API server's audit log (tests/support/audit_log.py, start_cluster(audit=True)):
each request once, by user agent, verb and resource (subresources apart), inside a time window."""

from __future__ import annotations

import secrets
import time

import pytest

from sftjob_operator.kube import ClientTransport
from tests.support import audit_log

pytestmark = [pytest.mark.cluster]


def _client(cluster, user_agent: str):
    api = cluster.api_client()
    api.user_agent = user_agent
    return api


def _call(api, method: str, path: str, body=None) -> None:
    content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
    headers = {"Accept": "application/json", "Content-Type": content_type}
    status, _, _ = ClientTransport(api).send(method, path, [], body, headers, 60)
    assert 200 <= status < 300, (method, path, status)


def _wait_logged(path, since: float, where, expected: int, timeout: float = 10) -> list[audit_log.Request]:
    deadline = time.monotonic() + timeout
    while True:
        found = audit_log.requests(path, since=since, where=where)
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_requests_are_counted_by_user_agent_verb_and_resource(audited_cluster):
    namespace = audited_cluster.create_namespace(f"audit-{secrets.token_hex(3)}")
    agent = f"audit-test-{secrets.token_hex(3)}/1"
    api = _client(audited_cluster, agent)
    base = f"/api/v1/namespaces/{namespace}"
    _call(api, "POST", f"{base}/configmaps", {"metadata": {"name": "before"}})
    time.sleep(1.1)  # the log's timestamps have microseconds; a clear gap keeps "before" out of the window
    since = time.time()
    tail = audit_log.Tail(audited_cluster.audit_log)
    for index in range(3):
        _call(api, "POST", f"{base}/configmaps", {"metadata": {"name": f"cm-{index}"}})
    _call(api, "GET", f"{base}/configmaps/cm-0")
    _call(api, "GET", f"{base}/configmaps")
    _call(api, "PATCH", f"{base}/configmaps/cm-1", {"data": {"a": "b"}})
    _call(api, "POST", f"{base}/pods", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
    _call(api, "GET", f"{base}/pods/p/status")
    audited_cluster.kubectl("get", "configmaps", "-n", namespace)  # another client in the same window

    found = _wait_logged(audited_cluster.audit_log, since, audit_log.by_user_agent(agent), expected=8)
    assert audit_log.count(found) == {
        "create configmaps": 3, "get configmaps": 1, "list configmaps": 1, "patch configmaps": 1,
        "create pods": 1, "get pods/status": 1,
    }
    assert {r.namespace for r in found} == {namespace}
    assert {r.name for r in found if r.verb == "create"} == {"cm-0", "cm-1", "cm-2", "p"}
    kubectl = audit_log.requests(audited_cluster.audit_log, since=since, where=audit_log.by_user_agent("kubectl/"))
    assert audit_log.count(kubectl)["list configmaps"] == 1

    # The tail saw the same requests, each once; a second read returns only what came after the first.
    tailed = [r for r in tail.read() if r.user_agent == agent]
    assert audit_log.count(tailed) == audit_log.count(found)
    _call(api, "DELETE", f"{base}/configmaps/cm-2")
    assert audit_log.count(r for r in _tail_until(tail, agent) if r.user_agent == agent) == {"delete configmaps": 1}


def _tail_until(tail: audit_log.Tail, agent: str, timeout: float = 10) -> list[audit_log.Request]:
    deadline = time.monotonic() + timeout
    seen: list[audit_log.Request] = []
    while not any(r.user_agent == agent for r in seen) and time.monotonic() < deadline:
        seen += tail.read()
        time.sleep(0.1)
    return seen


def test_the_session_cluster_writes_no_audit_log(cluster):
    assert cluster.audit_log is None
