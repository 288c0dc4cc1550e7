"""The sweep of pods whose SFTJob is gone: which pods it deletes, in what order it reads, and what it never touches."""

from __future__ import annotations

import asyncio

import pytest

from sftjob_operator import orphans
from sftjob_operator.leader import NotLeader


def _pod(name: str, owner_uid: str | None, *, deleting: bool = False, kind: str = "SFTJob",
         api_version: str = "training-hub.io/v1alpha1", controller: bool = True, namespace: str = "ns") -> dict:
    meta = {"name": name, "namespace": namespace, "uid": f"pod-{name}", "labels": {"training-hub.io/job-name": "j"}}
    if owner_uid is not None:
        meta["ownerReferences"] = [{"apiVersion": api_version, "kind": kind, "name": "j", "uid": owner_uid,
                                    "controller": controller}]
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T12:00:00Z"
    return {"metadata": meta}


def test_only_pods_whose_controlling_job_uid_is_gone_are_orphans():
    pods = [
        _pod("old-0", "uid-old"),  # its job was deleted (a same-named job now has uid-new)
        _pod("new-0", "uid-new"),  # the same-named new job's pod
        _pod("other-0", "uid-other"),  # another live job's pod
        _pod("going-0", "uid-old", deleting=True),  # already being deleted
        _pod("bare", None),  # no owner: not the sweep's to judge
        _pod("cm-owned", "uid-old", kind="ConfigMap"),  # owned by something else of that uid
        _pod("foreign", "uid-old", api_version="example.com/v1"),  # another group's SFTJob kind
        _pod("not-controller", "uid-old", controller=False),
    ]
    names = [pod["metadata"]["name"] for pod in orphans.orphaned_pods(pods, {"uid-new", "uid-other"})]
    assert names == ["old-0"]
    assert orphans.orphaned_pods(pods, {"uid-new", "uid-other", "uid-old"}) == []


class RecordingKube:
    def __init__(self, pods, job_uids, *, gone=()):
        self.pods, self.job_uids, self.gone, self.calls = pods, set(job_uids), set(gone), []

    def pods_in(self, namespace, unless_owned_by=None):  # every pod, whatever unless_owned_by: the sweep decides
        self.calls.append(("list pods", namespace))
        return self.pods

    def list_job_uids(self, namespace):
        self.calls.append(("list jobs", namespace))
        return self.job_uids

    def delete_pod(self, namespace, name, uid):
        self.calls.append(("delete", namespace, name, uid))
        return name not in self.gone


def test_sweep_lists_pods_before_jobs_and_deletes_orphans_with_their_uid():
    kube = RecordingKube([_pod("a-0", "dead"), _pod("a-1", "dead"), _pod("b-0", "live")], {"live"}, gone={"a-1"})
    assert orphans.sweep(kube, "ns", kube.pods_in) == 1  # a-1 was already gone (404/409 -> False)
    assert kube.calls == [
        ("list pods", "ns"), ("list jobs", "ns"),
        ("delete", "ns", "a-0", "pod-a-0"), ("delete", "ns", "a-1", "pod-a-1"),
    ]


def test_sweep_without_job_pods_costs_one_list():
    kube = RecordingKube([_pod("bare", None)], set())
    assert orphans.sweep(kube, None, kube.pods_in) == 0
    assert kube.calls == [("list pods", None)]


def _sweeper(kube, namespaces=("ns",), **kwargs):
    return orphans.OrphanSweeper(kube, namespaces, quiet_interval=kwargs.pop("quiet_interval", 60),
                                 may_act=kwargs.pop("may_act", lambda: True),
                                 run_blocking=lambda call: asyncio.get_running_loop().run_in_executor(None, call),
                                 pods_in=kube.pods_in)


def test_sweep_all_covers_every_namespace_and_survives_errors(caplog):
    from kubernetes.client.rest import ApiException

    class Failing(RecordingKube):
        def pods_in(self, namespace, unless_owned_by=None):
            if namespace == "forbidden":
                raise ApiException(status=403, reason="Forbidden")
            if namespace == "down":
                raise ConnectionRefusedError(111, "Connection refused")
            return super().pods_in(namespace, unless_owned_by)

    async def main():
        kube = Failing([_pod("a-0", "dead")], set())
        sweeper = _sweeper(kube, ("forbidden", "down", "ns"))
        return sweeper.sweep_all(), kube.calls

    deleted, calls = asyncio.run(main())
    assert deleted == 1 and ("delete", "ns", "a-0", "pod-a-0") in calls
    assert "HTTP 403 Forbidden" in caplog.text and "Traceback" not in caplog.text


def test_sweep_all_stops_when_the_lease_is_lost():
    class NoLongerLeader(RecordingKube):
        def delete_pod(self, namespace, name, uid):
            raise NotLeader("lease lost")

    async def main():
        kube = NoLongerLeader([_pod("a-0", "dead")], set())
        return _sweeper(kube, ("x", "y")).sweep_all(), kube.calls

    deleted, calls = asyncio.run(main())
    assert deleted == 0 and [call for call in calls if call[0] == "list pods"] == [("list pods", "x")]


def test_sweeper_is_watchful_after_start_and_after_a_wake_then_quiet(monkeypatch):
    monkeypatch.setattr(orphans, "WATCHFUL_INTERVAL_SECONDS", 0.01)
    monkeypatch.setattr(orphans, "WATCHFUL_WINDOW_SECONDS", 0.1)

    async def main():
        kube = RecordingKube([], set())
        sweeper = _sweeper(kube, quiet_interval=30)
        task = asyncio.ensure_future(sweeper.run())
        await asyncio.sleep(0.3)
        after_start = len(kube.calls)
        await asyncio.sleep(0.2)
        quiet = len(kube.calls) - after_start
        sweeper.wake()
        await asyncio.sleep(0.3)
        after_wake = len(kube.calls) - after_start - quiet
        task.cancel()
        return after_start, quiet, after_wake

    after_start, quiet, after_wake = asyncio.run(main())
    assert after_start >= 4  # every 10 ms for 100 ms
    assert quiet == 0  # then every 30 s
    assert after_wake >= 4


def test_a_standby_does_not_sweep(monkeypatch):
    monkeypatch.setattr(orphans, "WATCHFUL_INTERVAL_SECONDS", 0.01)

    async def main():
        kube = RecordingKube([_pod("a-0", "dead")], set())
        task = asyncio.ensure_future(_sweeper(kube, may_act=lambda: False).run())
        await asyncio.sleep(0.1)
        task.cancel()
        return kube.calls

    assert asyncio.run(main()) == []


def test_sweep_lists_the_jobs_only_when_a_pod_belongs_to_a_job_the_operator_does_not_know():
    pods = [_pod("a-0", "known"), _pod("b-0", "unknown"), _pod("c-0", "unknown-but-live")]
    kube = RecordingKube(pods[:1], {"known"})
    assert orphans.sweep(kube, "ns", kube.pods_in, lambda: {"known"}) == 0
    assert kube.calls == [("list pods", "ns")]  # every pod's job is known: no LIST
    kube = RecordingKube(pods, {"known", "unknown-but-live"})
    assert orphans.sweep(kube, "ns", kube.pods_in, lambda: {"known"}) == 1
    assert kube.calls == [("list pods", "ns"), ("list jobs", "ns"), ("delete", "ns", "b-0", "pod-b-0")]
