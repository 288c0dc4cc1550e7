"""kube.DirectTransport against a real HTTP/1.1 server on 127.0.0.1: keep-alive per thread, reconnects, the
client's auth, errors the outage handling recognises. (Against kube-apiserver over TLS: every cluster test.)"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timezone
from types import MappingProxyType
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from sftjob_operator import kube as kube_module
from sftjob_operator.kube import ClientTransport, DirectTransport, Kube, transport_for
from sftjob_operator.watch_health import is_connection_error


class Server:
    """Answers every request with 201 and what it received; counts connections; can close them on demand."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[dict] = []
        self.close_after_reply = False  # close each connection once it answered (an idle timeout, at once)
        self.cut_reply = False  # send half a reply, then close
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                outer.connections += 1

            def log_message(self, *_) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body) if body else None, "thread": threading.get_ident()}
                outer.requests.append(seen)
                if self.path.startswith("/missing"):
                    reply, status = b'{"kind":"Status","reason":"NotFound"}', 404
                else:
                    reply, status = json.dumps({"method": self.command, "path": self.path}).encode(), 201
                if outer.cut_reply:
                    self.wfile.write(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{\"partial")
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                if outer.close_after_reply:
                    self.close_connection = True

            do_GET = do_POST = do_PATCH = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = Server()
    yield running
    running.stop()


def api_client(port: int, token: str = "t0") -> client.ApiClient:
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api = client.ApiClient(configuration)
    api.user_agent = "sftjob-operator"
    return api


def test_requests_of_one_thread_share_one_connection_and_carry_the_clients_auth(server):
    kube = Kube(api_client(server.port))
    assert isinstance(kube.transport, DirectTransport)
    created = kube.request("create", "POST", "/api/v1/namespaces/a/pods", body={"kind": "Pod", "n": (1, 2), "m": MappingProxyType({"a": 1}),
                                                                       "t": datetime(2026, 1, 2, tzinfo=timezone.utc)})
    kube.request("list", "GET", "/api/v1/namespaces/a/pods", query=[("labelSelector", "a=b,c in (d)"), ("limit", 5)])
    kube.request("patch", "PATCH", "/x/status", body={"s": 1}, content_type="application/merge-patch+json")
    assert created == {"method": "POST", "path": "/api/v1/namespaces/a/pods"}
    assert server.connections == 1
    post, get, patch = server.requests
    assert post["body"] == {"kind": "Pod", "n": [1, 2], "m": {"a": 1}, "t": "2026-01-02T00:00:00+00:00"}
    assert post["headers"]["authorization"] == "Bearer t0" and post["headers"]["user-agent"] == "sftjob-operator"
    assert post["headers"]["content-type"] == "application/json"
    assert get["path"] == "/api/v1/namespaces/a/pods?labelSelector=a%3Db%2Cc+in+%28d%29&limit=5"
    assert "content-type" not in get["headers"] and get["body"] is None
    assert patch["headers"]["content-type"] == "application/merge-patch+json"
    assert kube.counter.by_verb == {"create": 1, "list": 1, "patch": 1}


def test_a_refreshed_token_is_sent_from_the_next_request_on(server):
    api = api_client(server.port)
    tokens = iter(["t1", "t2"])
    api.configuration.refresh_api_key_hook = lambda configuration: configuration.api_key.update(
        authorization=next(tokens))
    kube = Kube(api)
    kube.request("get", "GET", "/a")
    kube.request("get", "GET", "/b")
    assert [r["headers"]["authorization"] for r in server.requests] == ["Bearer t1", "Bearer t2"]


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error(server):
    kube = Kube(api_client(server.port))
    server.close_after_reply = True
    for _ in range(3):
        assert kube.request("get", "GET", "/a")["method"] == "GET"
    assert server.connections == 3


def test_a_request_that_meets_the_idle_close_on_its_way_is_sent_again_on_a_new_connection(server, monkeypatch):
    kube = Kube(api_client(server.port))
    server.close_after_reply = True
    kube.request("get", "GET", "/a")
    time.sleep(0.2)  # the server has closed it by now; the check before reuse misses it (its FIN still on its way)
    monkeypatch.setattr(kube_module, "_closed_by_peer", lambda sock: False)
    assert kube.request("create", "POST", "/b", body={})["path"] == "/b"
    assert [r["path"] for r in server.requests] == ["/a", "/b"] and server.connections == 2


def test_each_thread_keeps_its_own_connection(server):
    kube = Kube(api_client(server.port))
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        for _ in range(5):
            kube.request("get", "GET", "/a")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.requests) == 20 and server.connections == 4


def test_http_errors_are_api_exceptions_with_the_servers_answer(server):
    kube = Kube(api_client(server.port))
    with pytest.raises(ApiException) as raised:
        kube.request("get", "GET", "/missing")
    assert raised.value.status == 404 and "NotFound" in raised.value.body
    assert kube.request("get", "GET", "/a")["path"] == "/a"  # the connection stays usable
    assert server.connections == 1


class Health:
    def __init__(self) -> None:
        self.failed: list[BaseException] = []
        self.succeeded = 0

    def call_failed(self, what: str, error: BaseException) -> None:
        self.failed.append(error)

    def call_succeeded(self) -> None:
        self.succeeded += 1


def test_a_reply_cut_short_is_an_outage_and_the_next_request_reconnects(server):
    kube = Kube(api_client(server.port))
    kube.health = Health()
    kube.request("get", "GET", "/a")
    server.cut_reply = True
    with pytest.raises(Exception) as raised:
        kube.request("get", "GET", "/a")
    assert is_connection_error(raised.value)
    assert kube.health.failed == [raised.value]
    server.cut_reply = False
    assert kube.request("get", "GET", "/a")["path"] == "/a"
    assert server.connections == 2 and kube.health.succeeded == 2


def test_no_server_listening_is_an_outage():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    kube = Kube(api_client(port))
    with pytest.raises(OSError) as raised:
        kube.request("get", "GET", "/a", timeout=2)
    assert is_connection_error(raised.value)


def test_what_it_cannot_carry_goes_through_the_client():
    proxied = api_client(1)
    proxied.configuration.proxy = "http://proxy.example:3128"
    named = api_client(1)
    named.configuration.tls_server_name = "kubernetes.default"
    assert isinstance(transport_for(proxied), ClientTransport)
    assert isinstance(transport_for(named), ClientTransport)
    assert isinstance(transport_for(object()), ClientTransport)  # a test double of the client
    assert isinstance(transport_for(api_client(1)), DirectTransport)
