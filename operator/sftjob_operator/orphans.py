"""Pods whose SFTJob is gone: deleted by the operator, not left to the garbage collector.

The DELETED event of a job deletes its pods at once (handlers.JobReconciler.job_event). A job deleted while no
watch is open yields no such event: while kopf's watch reconnects after an API-server restart (its re-list simply
lacks the job), or while the operator itself is down or starting. The garbage collector would delete the pods in
the end, but its view of the CRD lags for up to minutes after an API-server restart, and the pods hold their GPUs
meanwhile. The sweep closes that gap: read the operator's pods (its pod cache); those whose controlling SFTJob the
operator does not know are suspects; only then list the SFTJobs, and delete every suspect whose controlling
SFTJob's uid is not among them (no LIST while every pod's job is known: at 1,000 jobs a LIST is ~5 MB).

Safe by construction: pods are read BEFORE the jobs are listed, so a job that owned a listed pod and still exists is in the
later job list; the match is on the owner's uid, so a new job of the same name never loses its pods; deletes carry
the pod's uid as a precondition; a pod with no SFTJob controller is never touched.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from sftjob_operator import labels
from sftjob_operator.kube import GROUP, KIND
from sftjob_operator.leader import NotLeader

log = logging.getLogger("sftjob_operator")

# After the API server comes back (or the operator starts), sweep this often for this long: until kopf's watches
# have re-listed (seconds), a deleted job can reach the operator as no event.
WATCHFUL_INTERVAL_SECONDS = 2.0
WATCHFUL_WINDOW_SECONDS = 60.0


def job_owner_uid(pod: Mapping[str, Any]) -> str | None:
    """The uid of the SFTJob that controls the pod (None: no SFTJob controls it)."""
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if (
            owner.get("kind") == KIND
            and str(owner.get("apiVersion", "")).split("/")[0] == GROUP
            and owner.get("controller")
            and owner.get("uid")
        ):
            return owner["uid"]
    return None


def orphaned_pods(pods: Iterable[Mapping[str, Any]], live_job_uids: set[str]) -> list[Mapping[str, Any]]:
    """Pods (not already being deleted) whose controlling SFTJob is not among the live ones."""
    return [
        pod for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and (uid := job_owner_uid(pod)) is not None
        and uid not in live_job_uids
    ]


def sweep(kube: Any, namespace: str | None, pods_in: Any, known_uids: Any = None) -> int:
    """Delete the orphaned pods of one namespace (None: every namespace). Returns how many deletions were accepted.
    The pods come from `pods_in(namespace, known)` (the operator's pod cache: no LIST; those a known job controls
    may be left out). Suspects are the pods whose job
    `known_uids()` (the jobs the operator's watch delivered) does not hold (None: every pod a job owns); only when
    there are suspects, one LIST of the SFTJobs decides. A job the operator knows but that was deleted unseen is
    found by its next read (the resync after an outage or a re-list, the reread period)."""
    known = known_uids() if known_uids is not None else set()
    suspects = orphaned_pods(pods_in(namespace, known), known)
    if not suspects:
        return 0
    live = kube.list_job_uids(namespace)  # after the pods: a job that still owns a listed pod is in here
    deleted = 0
    for pod in orphaned_pods(suspects, live):
        meta = pod["metadata"]
        if kube.delete_pod(meta["namespace"], meta["name"], meta["uid"]):
            deleted += 1
            log.info("%s/%s: its SFTJob (uid %s) is gone; deleted pod %s", meta["namespace"],
                     (meta.get("labels") or {}).get(labels.JOB_NAME, "?"), job_owner_uid(pod), meta["name"])
    return deleted


class OrphanSweeper:
    """Sweeps every namespace the operator watches: every `quiet_interval` seconds (the resync's safety net), and
    every WATCHFUL_INTERVAL_SECONDS for WATCHFUL_WINDOW_SECONDS after start-up and after each `wake()` (the API
    server is back). Runs the sweeps on the reconciler's worker threads; only while `may_act()` (the leader)."""

    def __init__(self, kube: Any, namespaces: Iterable[str], *, quiet_interval: float, may_act: Any,
                 run_blocking: Any, pods_in: Any, known_uids: Any = None) -> None:
        import asyncio

        self.kube, self.namespaces = kube, tuple(namespaces) or (None,)
        self.quiet_interval, self.may_act, self.run_blocking = quiet_interval, may_act, run_blocking
        self.pods_in = pods_in  # the pods the pod watch knows (handlers: PodCache.pods_in)
        self.known_uids = known_uids  # the uids of the jobs the job watch delivered (handlers: JobReconciler)
        self._woken = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def wake(self) -> None:
        """Thread-safe: the API server is back; be watchful again."""
        self._loop.call_soon_threadsafe(self._woken.set)

    async def run(self) -> None:
        import asyncio

        watchful_until = self._loop.time() + WATCHFUL_WINDOW_SECONDS
        while True:
            if self.may_act():
                await self.run_blocking(self.sweep_all)
            now = self._loop.time()
            wait = WATCHFUL_INTERVAL_SECONDS if now < watchful_until else self.quiet_interval
            try:
                await asyncio.wait_for(self._woken.wait(), wait)
            except asyncio.TimeoutError:
                continue
            self._woken.clear()
            watchful_until = self._loop.time() + WATCHFUL_WINDOW_SECONDS

    def sweep_all(self) -> int:
        from kubernetes.client.rest import ApiException

        from sftjob_operator.watch_health import describe_error, is_connection_error

        deleted = 0
        for namespace in self.namespaces:
            try:
                deleted += sweep(self.kube, namespace, self.pods_in, self.known_uids)
            except Exception as error:  # noqa: BLE001 - the next sweep (and the garbage collector) remain
                if is_connection_error(error):
                    continue  # the failing call already logged its one line
                if isinstance(error, ApiException):
                    log.warning("sweeping pods of deleted SFTJobs in %s failed: %s", namespace or "all namespaces",
                                describe_error(error))
                    continue
                if isinstance(error, NotLeader):
                    return deleted  # lost the lease meanwhile: the new leader sweeps
                log.exception("sweeping pods of deleted SFTJobs in %s failed (a bug)", namespace or "all namespaces")
        return deleted
