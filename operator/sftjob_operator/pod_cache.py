"""The operator's view of the pods it manages, fed by its pod watch: reconciliations read pods from here instead of
LISTing them from the API server on every look (docs/operator.md, "API requests per job start").

Slim on purpose: one entry per pod keeps only the fields reconcile reads (`slim_pod`), about a tenth of a full pod
object, so 8,000 pods cost a few MiB. Entries are plain dicts shaped like the API's (camelCase), so reconcile reads
a cached pod and a listed one alike.

Never trusted blindly (level-based correctness, docs/architecture.md):
- an entry is replaced only by a newer resourceVersion of the pod (events and POST answers arrive out of order);
- a job's entries are replaced wholesale by a LIST (`replace`) whenever the handler does not trust them: the first
  look at a job that existed before this process watched it, a resync, a new leader, and after the pod watch
  listed again (it re-lists after a 410 Gone or a broken stream: a pod deleted in the gap sends no DELETED);
- the handler relists before an irreversible decision taken from cached pods (restart, finish), so a missed event
  can delay a decision but never make a wrong one.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Iterable, Mapping, NamedTuple

from sftjob_operator import labels
from sftjob_operator.orphans import job_owner_uid

JobKey = tuple[str, str]  # (namespace, job name)

_intern = sys.intern


def newer(version: str | None, than: str | None) -> bool:
    """Whether resourceVersion `version` is newer than `than`. Versions are etcd revisions (integers) on every
    real API server; anything else is treated as newer, which is safe: a LIST or a conditional write catches it."""
    if not version or not than:
        return True
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return version != than


def _slim_terminated(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    terminated = (state or {}).get("terminated")
    if not terminated:
        return None
    return {key: terminated[key] for key in ("exitCode", "reason", "message", "finishedAt") if terminated.get(key) is not None}


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What reconcile (reconcile.py) and the handlers read of a pod, in the API's shape; nothing else."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    slim_meta: dict[str, Any] = {
        "name": _intern(meta.get("name", "")),
        "namespace": _intern(meta.get("namespace", "")),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion"),
        "labels": {_intern(k): _intern(v) for k, v in (meta.get("labels") or {}).items()},
    }
    for key in ("deletionTimestamp", "finalizers"):
        if meta.get(key):
            slim_meta[key] = meta[key]
    controllers = [  # the orphan sweep (orphans.py) matches pods to their SFTJob by the controller's uid
        {"apiVersion": _intern(owner.get("apiVersion", "")), "kind": _intern(owner.get("kind", "")),
         "uid": owner.get("uid"), "controller": True}
        for owner in meta.get("ownerReferences") or () if owner.get("controller")
    ]
    if controllers:
        slim_meta["ownerReferences"] = controllers
    slim_spec: dict[str, Any] = {}
    if spec.get("nodeName"):
        slim_spec["nodeName"] = _intern(spec["nodeName"])
    if spec.get("schedulingGates"):
        slim_spec["schedulingGates"] = [{"name": gate.get("name", "")} for gate in spec["schedulingGates"]]
    ports = [
        {"hostPort": port["hostPort"]}
        for container in spec.get("containers") or ()
        for port in container.get("ports") or ()
        if port.get("hostPort")
    ]
    if ports:
        slim_spec["containers"] = [{"ports": ports}]
    slim_status: dict[str, Any] = {}
    for key in ("phase", "reason", "message"):
        if status.get(key):
            slim_status[key] = _intern(status[key]) if key == "phase" else status[key]
    conditions = [
        {key: condition[key] for key in ("type", "status", "reason", "message") if condition.get(key) is not None}
        for condition in status.get("conditions") or ()
    ]
    if conditions:
        slim_status["conditions"] = conditions
    containers = []
    for container in (status.get("containerStatuses") or ())[:1]:  # reconcile reads the first (main) container
        state = container.get("state") or {}
        slim_container: dict[str, Any] = {"state": {}}
        terminated = _slim_terminated(state)
        if terminated is not None:
            slim_container["state"]["terminated"] = terminated
        if (state.get("running") or {}).get("startedAt"):
            slim_container["state"]["running"] = {"startedAt": state["running"]["startedAt"]}
        last = _slim_terminated(container.get("lastState"))
        if last is not None:
            slim_container["lastState"] = {"terminated": last}
        containers.append(slim_container)
    if containers:
        slim_status["containerStatuses"] = containers
    return {"metadata": slim_meta, "spec": slim_spec, "status": slim_status}


def job_of(pod: Mapping[str, Any]) -> JobKey | None:
    meta = pod.get("metadata") or {}
    job_name = (meta.get("labels") or {}).get(labels.JOB_NAME)
    if not job_name or not meta.get("namespace"):
        return None
    return meta["namespace"], job_name


class _Entry(NamedTuple):
    """One cached pod: what ordering needs, and the slim pod as compact JSON (a few hundred bytes; as nested dicts
    it took ~5 KiB: at 8,000 pods the difference is ~35 MiB of RSS). Decoded on each read (microseconds)."""

    version: str | None
    uid: str
    owner: str | None  # its SFTJob's uid (orphans.job_owner_uid): the sweep picks suspects without decoding every pod
    packed: bytes

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> "_Entry":
        slim = slim_pod(pod)
        meta = slim["metadata"]
        return cls(meta.get("resourceVersion"), meta.get("uid", ""), job_owner_uid(slim),
                   json.dumps(slim, separators=(",", ":")).encode())

    def pod(self) -> dict[str, Any]:
        return json.loads(self.packed)


class PodCache:
    """Slim pods by job, then by pod name. Thread-safe: the watch feeds it on the event loop, reconciliations read
    it in worker threads (each read decodes its own copies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[JobKey, dict[str, _Entry]] = {}
        self._listed_at: dict[JobKey, str] = {}  # resourceVersion of the job's last LIST
        self._streaming = False  # the pod watch delivered live events since its last listing
        self.listings = 0  # how many times the pod watch (re)listed: a job trusts its entries from one listing on

    def __len__(self) -> int:
        with self._lock:
            return sum(len(pods) for pods in self._pods.values())

    # --- the watch and the handler's own writes ----------------------------------------------------------------

    def observe(self, event_type: str | None, pod: Mapping[str, Any]) -> JobKey | None:
        """A pod watch event (type None: part of a (re)listing, pod_watch.py). Returns the pod's job, or None."""
        key = job_of(pod)
        with self._lock:
            if event_type is None:
                if self._streaming:  # the watch lists again: deletions in the gap sent no DELETED
                    self._streaming = False
                    self.listings += 1
            else:
                self._streaming = True
            if key is not None:
                if event_type == "DELETED":
                    self._forget_pod(key, pod)
                else:
                    self._put(key, pod)
        return key

    def listed(self) -> bool:
        """A listing of the pod watch is over. Returns whether it was a relisting that brought no pod (no event of
        type None told `observe`): live events came since the last one, and every pod may be gone."""
        with self._lock:
            if not self._streaming:
                return False
            self._streaming = False
            self.listings += 1
            return True

    def put(self, pod: Mapping[str, Any]) -> None:
        """A pod the handler just created (the POST's answer): known before its watch event arrives."""
        key = job_of(pod)
        if key is not None:
            with self._lock:
                self._put(key, pod)

    def gone(self, namespace: str, job_name: str, pod_name: str, uid: str) -> None:
        """The API server said the pod is gone (a delete answered 404/409): drop it unless a newer pod took the name."""
        with self._lock:
            pods = self._pods.get((namespace, job_name)) or {}
            if pod_name in pods and (not uid or pods[pod_name].uid == uid):
                del pods[pod_name]

    def replace(self, key: JobKey, pods: Iterable[Mapping[str, Any]], resource_version: str | None) -> list[dict[str, Any]]:
        """A LIST of the job's pods (at `resource_version`) replaces what was known, except entries newer than the
        LIST (a create's answer or a watch event that overtook it). Returns the slim pods."""
        slim = {pod["metadata"]["name"]: _Entry.of(pod) for pod in pods}
        with self._lock:
            for name, known in (self._pods.get(key) or {}).items():
                listed = slim.get(name)
                than = listed.version if listed is not None else resource_version
                if than and newer(known.version, than):
                    slim[name] = known
            if slim:
                self._pods[key] = slim
            else:
                self._pods.pop(key, None)
            if resource_version:
                self._listed_at[key] = resource_version
            else:
                self._listed_at.pop(key, None)
        return [entry.pod() for entry in slim.values()]

    def forget(self, key: JobKey) -> None:
        with self._lock:
            self._pods.pop(key, None)
            self._listed_at.pop(key, None)

    def pods(self, key: JobKey) -> list[dict[str, Any]]:
        with self._lock:
            entries = list((self._pods.get(key) or {}).values())
        return [entry.pod() for entry in entries]

    def pods_in(self, namespace: str | None, unless_owned_by: set[str] | None = None) -> list[dict[str, Any]]:
        """The cached pods of a namespace (None: of every namespace): what the orphan sweep looks at. With
        `unless_owned_by`: only pods an SFTJob controls whose uid is not in it (decoding only those)."""
        with self._lock:
            entries = [
                entry for (where, _), pods in self._pods.items() if namespace in (None, where) for entry in pods.values()
                if unless_owned_by is None or (entry.owner is not None and entry.owner not in unless_owned_by)
            ]
        return [entry.pod() for entry in entries]

    # --- internals (lock held) ----------------------------------------------------------------------------------

    def _put(self, key: JobKey, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        version = meta.get("resourceVersion")
        pods = self._pods.get(key)
        known = (pods or {}).get(meta["name"])
        if known is not None:
            if not newer(version, known.version):
                return  # an older event (or the echo of what a POST answered)
        elif not newer(version, self._listed_at.get(key)):
            return  # older than the job's last LIST, which did not have it: it is gone since
        if pods is None:
            pods = self._pods[key] = {}
        pods[meta["name"]] = _Entry.of(pod)

    def _forget_pod(self, key: JobKey, pod: Mapping[str, Any]) -> None:
        pods = self._pods.get(key)
        if not pods:
            return
        meta = pod["metadata"]
        known = pods.get(meta["name"])
        if known is None or known.uid != meta.get("uid"):
            return  # a newer pod of that name (created after this one was deleted) stays
        del pods[meta["name"]]
        if not pods:
            del self._pods[key]
