"""The few Kubernetes API calls the operator makes (synchronous `kubernetes` client; plain camelCase dicts).

Every call is safe to repeat: create tolerates 409 (already exists: names are deterministic), delete tolerates
404 (already gone) and 409 (uid precondition failed: a newer object took the name). Handlers run these in
worker threads.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Mapping

from kubernetes import client, config as kube_config
from kubernetes.client.rest import ApiException

from sftjob_operator import labels

GROUP = "training-hub.io"
VERSION = "v1alpha1"
PLURAL = "sftjobs"
KIND = "SFTJob"

log = logging.getLogger(__name__)


class Conflict(Exception):
    """The object changed since it was read (HTTP 409 on a resourceVersion precondition)."""


class RequestCounter:
    """Counts API requests by verb (for the `API requests per job start` benchmark and the metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_verb: dict[str, int] = {}

    def add(self, verb: str) -> None:
        with self._lock:
            self.by_verb[verb] = self.by_verb.get(verb, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_verb.values())


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
    return client.ApiClient(configuration)


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


class Kube:
    def __init__(self, api_client: client.ApiClient, counter: RequestCounter | None = None) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.counter = counter or RequestCounter()

    # --- reads --------------------------------------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.counter.add("get")
        try:
            return _json(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list_job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        self.counter.add("list")
        response = self.core.list_namespaced_pod(
            namespace, label_selector=labels.job_selector_string(job_name), _preload_content=False
        )
        return _json(response).get("items", [])

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.counter.add("get")
        try:
            return _json(self.core.read_namespaced_service(name, namespace, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.counter.add("get")
        try:
            return _json(self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def read_log_tail(self, namespace: str, pod_name: str, *, lines: int = 20, limit_bytes: int = 16384) -> str | None:
        """The last lines of a pod's log, or None when the log cannot be read (yet)."""
        self.counter.add("log")
        try:
            response = self.core.read_namespaced_pod_log(
                pod_name, namespace, tail_lines=lines, limit_bytes=limit_bytes, _preload_content=False
            )
            return response.data.decode("utf-8", "replace")
        except ApiException as error:
            log.debug("cannot read the log of %s/%s: %s", namespace, pod_name, error.reason)
            return None

    # --- writes -------------------------------------------------------------------------------------------------

    def create(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a Pod, Service or ConfigMap. False when it already existed (409)."""
        kind = body.get("kind")
        create = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
        }.get(kind)
        if create is None:
            raise ValueError(f"kube.create: unsupported kind {kind!r} (Pod, Service, ConfigMap)")
        self.counter.add("create")
        try:
            create(namespace, body, _preload_content=False)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            raise

    def replace_configmap_data(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        self.counter.add("patch")
        # A merge patch replaces `data` keys; keys that disappeared are set to null explicitly.
        current = self.get_configmap(namespace, name) or {}
        patch_data: dict[str, Any] = dict(data)
        for key in (current.get("data") or {}):
            patch_data.setdefault(key, None)
        self.core.patch_namespaced_config_map(name, namespace, {"data": patch_data})

    def delete_pod(self, namespace: str, name: str, uid: str, *, force: bool = False) -> bool:
        """Delete a pod with a uid precondition. False when it was gone or replaced."""
        self.counter.add("delete")
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid) if uid else None)
        if force:
            options.grace_period_seconds = 0
        try:
            self.core.delete_namespaced_pod(name, namespace, body=options, _preload_content=False)
            return True
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the SFTJob; the garbage collector deletes what it owns (owner references)."""
        self.counter.add("delete")
        options = client.V1DeleteOptions(
            propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid) if uid else None
        )
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body=options)
            return True
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise

    def patch_job_status(
        self, namespace: str, name: str, status_patch: Mapping[str, Any], *, resource_version: str | None
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource; with `resource_version` it is conditional (Conflict on 409).

        Returns the updated job, or None when the job is gone.
        """
        self.counter.add("patch")
        body: dict[str, Any] = {"status": dict(status_patch)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            response = self.custom.api_client.call_api(
                f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}/status",
                "PATCH",
                path_params={"namespace": namespace, "name": name},
                header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
            return _json(response)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from error
            if error.status == 404:
                return None
            raise

    def post_event(self, job: Mapping[str, Any], type_: str, reason: str, message: str, *, component: str) -> None:
        """A core/v1 Event about the SFTJob (kubectl describe sftjob shows them)."""
        meta = job["metadata"]
        self.counter.add("create")
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=client.V1EventSource(component=component),
            reporting_component=component,
            reporting_instance=component,
            action=reason,
            event_time=None,
            first_timestamp=_now_rfc3339(),
            last_timestamp=_now_rfc3339(),
            count=1,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as error:  # an event is best effort; never fail a reconcile for it
            log.warning("could not post event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], error.reason)


def _now_rfc3339():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
