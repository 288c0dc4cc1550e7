"""The few Kubernetes API calls the operator makes (synchronous `kubernetes` client; plain camelCase dicts).

Every call is safe to repeat: create tolerates 409 (already exists: names are deterministic), delete tolerates
404 (already gone) and 409 (uid precondition failed: a newer object took the name). Handlers run these in
worker threads.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Mapping

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


class Kube:
    """Raw JSON requests through the client's auth and TLS (no model (de)serialisation: fast, and the bodies are
    exactly the dicts render/reconcile produced)."""

    def __init__(self, api_client: client.ApiClient, counter: RequestCounter | None = None, timeout: float = 30) -> None:
        self.api_client = api_client
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
        method_, url, headers, serialized, _ = self.api_client.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", **({"Content-Type": content_type} if body is not None else {})},
            body=body,
            auth_settings=["BearerToken"],
        )
        if gated and method != "GET" and self.write_guard is not None:
            self.write_guard()  # last thing before the request leaves: the leader's validity is checked now
        self.counter.add(verb, resource_of(path))
        try:
            response = self.api_client.call_api(
                method_, url, header_params=headers, body=serialized, _request_timeout=timeout or self.timeout
            )
            data = response.read()
        except Exception as error:
            if self.health is not None:
                self.health.call_failed(f"{method} {path}", error)
            raise
        if not 200 <= response.status < 300:
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            error = ApiException(status=response.status, reason=response.reason, body=text)
            if self.health is not None and response.status >= 500:
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
