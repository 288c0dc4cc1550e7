"""The few Kubernetes API calls the operator makes (synchronous; plain camelCase dicts).

Every call is safe to repeat: create tolerates 409 (already exists: names are deterministic), delete tolerates
404 (already gone) and 409 (uid precondition failed: a newer object took the name), a status patch carries a
resourceVersion precondition. Handlers run these in worker threads. The `kubernetes` client supplies the
configuration (kubeconfig or service account); the requests go over keep-alive connections of the standard
library (DirectTransport), or through the client where it has to (ClientTransport).
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import select
import ssl
import threading
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException

from sftjob_operator import labels

GROUP = "training-hub.io"
VERSION = "v1alpha1"
PLURAL = "sftjobs"
KIND = "SFTJob"
USER_AGENT = "sftjob-operator"
KUEUE_WORKLOADS = "/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads/{name}"

log = logging.getLogger(__name__)


class Conflict(Exception):
    """The object changed since it was read (HTTP 409 on a resourceVersion precondition)."""


class RequestCounter:
    """Counts API requests by verb and resource (`sftjob_api_requests_total`, the `API requests per job start`
    benchmark and test). Verbs and resources are the API server's own (as its audit log names them): a log read is
    `get pods/log`, a status patch `patch sftjobs/status`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_verb_resource: dict[tuple[str, str], int] = {}

    def add(self, verb: str, resource: str) -> None:
        with self._lock:
            self.by_verb_resource[verb, resource] = self.by_verb_resource.get((verb, resource), 0) + 1

    @property
    def by_verb(self) -> dict[str, int]:
        with self._lock:
            totals: dict[str, int] = {}
            for (verb, _), count in self.by_verb_resource.items():
                totals[verb] = totals.get(verb, 0) + count
            return totals

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.by_verb_resource.values())


def resource_of(path: str) -> str:
    """The resource (and subresource) an API path addresses, as the audit log names it: `pods`, `pods/log`,
    `sftjobs/status`; `discovery` for a group's resource list."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return "discovery"
    return f"{rest[0]}/{rest[2]}" if len(rest) >= 3 else rest[0]


def load_api_client(kubeconfig: str | None = None, *, pool_size: int = 32) -> client.ApiClient:
    """An API client from a kubeconfig file, $KUBECONFIG/~/.kube/config, or the in-cluster service account."""
    configuration = client.Configuration()
    if kubeconfig:
        kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except kube_config.ConfigException:
            kube_config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    # One attempt per call: the reconciler retries with backoff, and urllib3's own retries would log three
    # "Retrying ..." warnings for every call made during an API-server outage.
    configuration.retries = 0
    api_client = client.ApiClient(configuration)
    api_client.user_agent = USER_AGENT  # the operator's requests, apart from kopf's watches (kopf/...) in audit logs
    return api_client


LIST_PAGE_SIZE = 200  # objects per page of a LIST that can be long (limit/continue)


class ClientTransport:
    """Requests through the `kubernetes` client (urllib3): for what DirectTransport does not do (proxies, a TLS
    server name of its own, socket options) and for test doubles of the client."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def send(self, method: str, path: str, query: list[tuple[str, Any]], body: Any, headers: dict[str, str],
             timeout: float) -> tuple[int, str, bytes]:
        method_, url, headers_, serialized, _ = self.api_client.param_serialize(
            method, path, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self.api_client.call_api(method_, url, header_params=headers_, body=serialized,
                                            _request_timeout=timeout)
        return response.status, response.reason, response.read()


class DirectTransport:
    """Requests over the standard library's keep-alive connections, one per thread, with the client's
    configuration (host, CA, client certificate, bearer token: refreshed as the client refreshes it).

    A gang start is mostly small POSTs. Per request, the client's serialisation and urllib3 cost ~2x the CPU of
    this (against kube-apiserver: 0.82 against 0.39 ms per create); on a control plane that shares its cores, that
    CPU is the API server's too (docs/operator.md, Performance)."""

    def __init__(self, api_client: Any) -> None:
        configuration = api_client.configuration
        url = urlsplit(configuration.host)
        self.api_client = api_client
        self.https = url.scheme == "https"
        self.host, self.port, self.prefix = url.hostname, url.port, url.path.rstrip("/")
        self.context: ssl.SSLContext | None = None
        if self.https:
            if configuration.verify_ssl:
                self.context = ssl.create_default_context(cafile=configuration.ssl_ca_cert,
                                                          cadata=configuration.ca_cert_data)
            else:
                self.context = ssl.create_default_context()
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
            if configuration.cert_file:
                self.context.load_cert_chain(configuration.cert_file, configuration.key_file)
        self._local = threading.local()

    @staticmethod
    def serves(api_client: Any) -> bool:
        """Whether this transport can carry the client's requests (else: ClientTransport)."""
        if not isinstance(api_client, client.ApiClient):
            return False
        configuration = api_client.configuration
        return (
            urlsplit(configuration.host).scheme in ("http", "https")
            and not configuration.proxy
            and not configuration.tls_server_name
            and configuration.assert_hostname is None
            and configuration.socket_options is None
        )

    def send(self, method: str, path: str, query: list[tuple[str, Any]], body: Any, headers: dict[str, str],
             timeout: float) -> tuple[int, str, bytes]:
        headers = {**self.api_client.default_headers, **headers}
        self.api_client.update_params_for_auth(headers, None, ["BearerToken"], path, method, body)
        url = self.prefix + path + (f"?{urlencode(query)}" if query else "")
        payload = None if body is None else json.dumps(body, default=_plain_json).encode()
        connection = self._connection(timeout)
        reused = connection.sock is not None
        try:
            return self._exchange(connection, method, url, payload, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        # The server closed the idle connection as the request went out (no answer came): once more, on a new one.
        # Safe here: creates are by name (a 409 answers the second), status patches carry a resourceVersion
        # precondition; at worst an event is posted twice.
        return self._exchange(connection, method, url, payload, headers)

    @staticmethod
    def _exchange(connection: http.client.HTTPConnection, method: str, url: str, payload: bytes | None,
                  headers: dict[str, str]) -> tuple[int, str, bytes]:
        try:
            connection.request(method, url, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.reason, response.read()
        except BaseException:
            connection.close()  # whatever state it was left in, the next request opens a new one
            raise

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self.https:
                connection = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
            else:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.connection = connection
        elif connection.sock is not None:
            if _closed_by_peer(connection.sock):
                connection.close()  # the server closed it while idle: request() opens a new one
            else:
                connection.sock.settimeout(timeout)
        connection.timeout = timeout
        return connection


def _plain_json(value: Any) -> Any:
    """What json.dumps cannot write itself, as the client's serialisation writes it (read-only mappings such as
    kopf's, datetimes)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _closed_by_peer(sock: Any) -> bool:
    """An idle keep-alive socket that is readable has been closed (or answered out of turn): not reusable."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def transport_for(api_client: Any) -> ClientTransport | DirectTransport:
    return DirectTransport(api_client) if DirectTransport.serves(api_client) else ClientTransport(api_client)


class Kube:
    """Raw JSON requests with the client's configuration, over `transport` (no model (de)serialisation: fast, and
    the bodies are exactly the dicts render/reconcile produced)."""

    def __init__(self, api_client: client.ApiClient, counter: RequestCounter | None = None, timeout: float = 30,
                 transport: ClientTransport | DirectTransport | None = None) -> None:
        self.api_client = api_client
        self.transport = transport or transport_for(api_client)
        self.counter = counter or RequestCounter()
        self.timeout = timeout
        self.health: Any = None  # watch_health.WatchHealth: told of every failed and successful call
        # Called right before every write (not GET): raises to refuse it. Leader election sets it to
        # LeaderElector.check_may_write, so a replica that is not (or no longer) the leader writes nothing.
        self.write_guard: Callable[[], None] | None = None

    def request(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
        timeout: float | None = None,
        gated: bool = True,
    ) -> Any:
        """One API call; raises ApiException for HTTP errors. Returns parsed JSON (or text with raw=True).
        A write (any method but GET) first passes `write_guard` unless `gated` is False (the Lease's own calls)."""
        headers = {"Accept": "application/json", **({"Content-Type": content_type} if body is not None else {})}
        if gated and method != "GET" and self.write_guard is not None:
            self.write_guard()  # last thing before the request leaves: the leader's validity is checked now
        self.counter.add(verb, resource_of(path))
        try:
            status, reason, data = self.transport.send(method, path, query or [], body, headers, timeout or self.timeout)
        except Exception as error:
            if self.health is not None:
                self.health.call_failed(f"{method} {path}", error)
            raise
        if not 200 <= status < 300:
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            error = ApiException(status=status, reason=reason, body=text)
            if self.health is not None and status >= 500:
                self.health.call_failed(f"{method} {path}", error)
            raise error
        if self.health is not None:
            self.health.call_succeeded()
        if raw:
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return json.loads(data) if data else {}

    # --- reads --------------------------------------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}")

    def serves_sftjobs(self) -> bool:
        """Whether API discovery lists the SFTJob resource (False while the CRD is missing or not loaded yet)."""
        found = self._get_or_none(f"/apis/{GROUP}/{VERSION}")
        return any(item.get("name") == PLURAL for item in (found or {}).get("resources") or ())

    def list_job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        return self.list_job_pods_at(namespace, job_name)[0]

    def list_job_pods_at(self, namespace: str, job_name: str) -> tuple[list[dict[str, Any]], str | None]:
        """The job's pods and the list's resourceVersion (what the pod cache replaces its entries with)."""
        result = self.request(
            "list", "GET", f"/api/v1/namespaces/{namespace}/pods",
            query=[("labelSelector", labels.job_selector_string(job_name))],
        )
        return result.get("items", []), (result.get("metadata") or {}).get("resourceVersion")

    def list_job_uids(self, namespace: str | None) -> set[str]:
        """The uids of the SFTJobs that exist in a namespace (None: in every namespace). Read in pages: 1,000 jobs
        in one answer are ~5 MB of JSON decoded at once, ~35 MiB of the operator's peak memory at 1,000 x 8."""
        where = f"/namespaces/{namespace}" if namespace else ""
        uids: set[str] = set()
        token = None
        while True:
            query = [("limit", LIST_PAGE_SIZE)] + ([("continue", token)] if token else [])
            result = self.request("list", "GET", f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}", query=query)
            uids.update(item["metadata"]["uid"] for item in result.get("items", []))
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                return uids

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/api/v1/namespaces/{namespace}/services/{name}")

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("get", "GET", path)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Kueue's Workload of a pod group, or None (no Kueue, not created yet, or no RBAC to read it: the job then
        says it is queued without Kueue's reason)."""
        try:
            return self.request("get", "GET", KUEUE_WORKLOADS.format(namespace=namespace, name=name))
        except ApiException as error:
            if error.status in (403, 404):
                return None
            raise

    def read_log_tail(self, namespace: str, pod_name: str, *, lines: int = 20, limit_bytes: int = 16384) -> str | None:
        """The last lines of a pod's log, or None when the log cannot be read (yet)."""
        try:
            return self.request(
                "get", "GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name}/log",
                query=[("tailLines", lines), ("limitBytes", limit_bytes)], raw=True,
            )
        except ApiException as error:
            log.debug("cannot read the log of %s/%s: %s", namespace, pod_name, error.reason)
            return None

    # --- writes -------------------------------------------------------------------------------------------------

    _COLLECTIONS = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps"}

    def create(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a Pod, Service or ConfigMap: the created object, or None when one of that name existed (409)."""
        collection = self._COLLECTIONS.get(body.get("kind", ""))
        if collection is None:
            raise ValueError(f"kube.create: unsupported kind {body.get('kind')!r} (Pod, Service, ConfigMap)")
        try:
            return self.request("create", "POST", f"/api/v1/namespaces/{namespace}/{collection}", body=dict(body))
        except ApiException as error:
            if error.status == 409:
                return None
            raise

    def replace_configmap_data(
        self, namespace: str, name: str, data: Mapping[str, str], current: Mapping[str, Any] | None = None
    ) -> None:
        """Make the ConfigMap's data `data` (`current`: the ConfigMap as just read, else it is read first)."""
        # A merge patch replaces `data` keys; keys that disappeared are set to null explicitly.
        if current is None:
            current = self.get_configmap(namespace, name) or {}
        patch_data: dict[str, Any] = dict(data)
        for key in current.get("data") or {}:
            patch_data.setdefault(key, None)
        self.request(
            "patch", "PATCH", f"/api/v1/namespaces/{namespace}/configmaps/{name}",
            body={"data": patch_data}, content_type="application/merge-patch+json",
        )

    def delete_pod(self, namespace: str, name: str, uid: str, *, force: bool = False) -> bool:
        """Delete a pod with a uid precondition. False when it was gone or replaced."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if force:
            options["gracePeriodSeconds"] = 0
        try:
            self.request("delete", "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=options)
            return True
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise

    def delete_owned_pods(self, namespace: str, job_name: str, owner_uid: str | None) -> int:
        """Delete the pods labelled for `job_name` whose controller owner is `owner_uid` (uid preconditions: never
        a pod that replaced one). Returns how many deletions were accepted."""
        if not owner_uid:
            return 0
        deleted = 0
        for pod in self.list_job_pods(namespace, job_name):
            owners = pod["metadata"].get("ownerReferences") or ()
            if any(owner.get("uid") == owner_uid for owner in owners) and not pod["metadata"].get("deletionTimestamp"):
                deleted += self.delete_pod(namespace, pod["metadata"]["name"], pod["metadata"]["uid"])
        return deleted

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the SFTJob; the garbage collector deletes what it owns (owner references)."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self.request("delete", "DELETE", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}", body=options)
            return True
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise

    def delete_workload(self, namespace: str, name: str) -> bool:
        """Delete Kueue's Workload of a pod group whose pods never got a node; Kueue then removes their finalizers.
        False when it was gone (or Kueue is absent, or RBAC forbids it: the pod GC still ends those pods)."""
        try:
            self.request("delete", "DELETE", KUEUE_WORKLOADS.format(namespace=namespace, name=name))
            return True
        except ApiException as error:
            if error.status in (403, 404):
                if error.status == 403:
                    log.warning("cannot delete Kueue Workload %s/%s: %s", namespace, name, error.reason)
                return False
            raise

    def patch_job_status(
        self, namespace: str, name: str, status_patch: Mapping[str, Any], *, resource_version: str | None
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource; with `resource_version` it is conditional (Conflict on 409).

        Returns the updated job, or None when the job is gone.
        """
        body: dict[str, Any] = {"status": dict(status_patch)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return self.request(
                "patch", "PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
                body=body, content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from error
            if error.status == 404:
                return None
            raise

    def post_event(self, job: Mapping[str, Any], type_: str, reason: str, message: str, *, component: str) -> None:
        """A core/v1 Event about the SFTJob (kubectl describe sftjob shows them). Best effort."""
        meta = job["metadata"]
        now = _now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.request("create", "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
        except ApiException as error:
            log.warning("could not post event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], error.reason)


def _now_rfc3339() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
