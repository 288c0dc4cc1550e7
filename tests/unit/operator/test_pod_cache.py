"""The operator's pod cache (pod_cache.py): slim entries, newest resourceVersion wins, LISTs replace, relists are
noticed."""

from __future__ import annotations

import json

from sftjob_operator import labels
from sftjob_operator import reconcile as rc
from sftjob_operator.pod_cache import PodCache, slim_pod

KEY = ("ns", "train")


def pod(rank: int, version: int, *, uid: str | None = None, phase: str = "Running", job: str = "train") -> dict:
    """A full pod as the API server returns it (with the bulk the cache must drop)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-node-{rank}",
            "namespace": "ns",
            "uid": uid or f"uid-{rank}",
            "resourceVersion": str(version),
            "labels": {labels.JOB_NAME: job, labels.NODE_RANK: str(rank), labels.ATTEMPT: "0",
                       labels.MANAGED_BY: labels.MANAGED_BY_VALUE},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 2000},
            "managedFields": [{"manager": "kube-scheduler", "fieldsV1": {"f:status": {"f:conditions": {}}}}] * 4,
            "ownerReferences": [{"uid": "job-uid", "kind": "SFTJob", "name": job, "controller": True}],
        },
        "spec": {
            "nodeName": "gpu-1",
            "containers": [{"name": "trainer", "image": "trainer:1", "env": [{"name": f"E{i}", "value": "v" * 40} for i in range(30)],
                            "ports": [{"containerPort": 29500, "hostPort": 29500}]}],
            "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}}],
        },
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-29T10:00:00Z"},
                           {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "trainer", "image": "trainer:1", "imageID": "sha256:" + "0" * 64,
                                   "state": {"running": {"startedAt": "2026-11-29T10:00:01Z"}},
                                   "lastState": {"terminated": {
                                       "exitCode": 1, "reason": "Error", "containerID": "containerd://" + "1" * 64,
                                       "startedAt": "2026-11-29T10:00:01Z", "finishedAt": "2026-11-29T10:04:59Z",
                                       # the entrypoint's summary: everything in it, peerLost included, is read
                                       "message": json.dumps({"outcome": "failed", "message": "boom", "peerLost": True}),
                                   }}}],
        },
    }


# What reconcile reads from a pod to decide (the handler hands it slim pods from the cache).
READERS = (
    rc.pod_rank, rc.pod_attempt, rc.pod_group, rc.kueue_gated, rc.may_hold_its_group, rc.scheduling_gates,
    rc._phase, rc._terminating, rc._is_ready, rc.classify_failure, rc.port_conflict,
    rc._host_ports, lambda p: rc.scheduler_wait([p]), lambda p: rc.unadmitted_groups([p]),
)


def test_a_pending_slim_pod_keeps_why_it_waits():
    full = pod(1, 11, phase="Pending")
    full["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] = "train-0"
    full["metadata"]["finalizers"] = ["kueue.x-k8s.io/managed"]
    full["spec"].pop("nodeName")
    full["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": "0/4 nodes are available: 4 node(s) didn't have free ports."}]
    del full["status"]["containerStatuses"]
    slim = slim_pod(full)
    for read in READERS:
        assert read(slim) == read(full), read.__name__
    assert rc.port_conflict(slim) and rc.scheduler_wait([slim])


def test_a_slim_pod_keeps_what_reconcile_reads_and_is_a_small_part_of_the_pod():
    full = pod(0, 10, phase="Failed")
    full["metadata"]["deletionTimestamp"] = "2026-11-29T10:05:00Z"
    full["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    slim = slim_pod(full)
    for read in READERS:
        assert read(slim) == read(full), read.__name__
    assert slim["metadata"]["labels"] == full["metadata"]["labels"]
    assert slim["spec"]["nodeName"] == "gpu-1"
    assert len(json.dumps(slim)) * 5 < len(json.dumps(full))  # no env, volumes, managedFields, annotations


def test_the_newest_resource_version_wins_whatever_the_order():
    cache = PodCache()
    cache.put(pod(0, 20, phase="Pending"))  # the POST's answer, before its watch event
    cache.observe("ADDED", pod(0, 10, phase="Pending"))  # an older event
    cache.observe("MODIFIED", pod(0, 30))
    cache.observe("MODIFIED", pod(0, 25, phase="Pending"))  # late
    assert [p["status"]["phase"] for p in cache.pods(KEY)] == ["Running"]


def test_a_deleted_pod_goes_but_a_newer_one_of_that_name_stays():
    cache = PodCache()
    cache.observe("ADDED", pod(0, 10, uid="old"))
    cache.put(pod(0, 40, uid="new"))  # recreated; the old one's DELETED arrives after
    cache.observe("DELETED", pod(0, 30, uid="old"))
    assert [p["metadata"]["uid"] for p in cache.pods(KEY)] == ["new"]
    cache.observe("DELETED", pod(0, 50, uid="new"))
    assert cache.pods(KEY) == [] and len(cache) == 0


def test_a_list_replaces_the_entries_and_late_events_cannot_resurrect_a_pod():
    cache = PodCache()
    cache.observe("ADDED", pod(0, 10))
    cache.observe("ADDED", pod(1, 11))
    cache.replace(KEY, [pod(0, 20)], "25")  # rank 1 is gone by revision 25
    cache.observe("MODIFIED", pod(1, 15))  # an event from before the LIST
    assert [p["metadata"]["name"] for p in cache.pods(KEY)] == ["train-node-0"]
    cache.observe("ADDED", pod(1, 30, uid="again"))  # created after the LIST
    assert sorted(p["metadata"]["name"] for p in cache.pods(KEY)) == ["train-node-0", "train-node-1"]


def test_a_pod_newer_than_the_list_survives_it():
    cache = PodCache()
    cache.put(pod(2, 40))  # created while the LIST was on its way
    cache.replace(KEY, [pod(0, 20)], "30")
    assert sorted(p["metadata"]["name"] for p in cache.pods(KEY)) == ["train-node-0", "train-node-2"]


def test_a_relisting_watch_is_noticed_so_jobs_list_again():
    cache = PodCache()
    cache.observe(None, pod(0, 10))  # the first listing
    cache.observe(None, pod(1, 11))
    assert cache.listings == 0
    cache.observe("MODIFIED", pod(0, 12))  # streaming
    cache.observe(None, pod(0, 12))  # listed again (410 Gone, broken stream): a deletion in the gap was not seen
    assert cache.listings == 1
    cache.observe(None, pod(1, 11))
    assert cache.listings == 1


def test_a_relisting_that_brought_no_pod_is_noticed_at_its_end():
    cache = PodCache()
    assert not cache.listed() and cache.listings == 0  # the first listing, empty
    cache.observe("ADDED", pod(0, 10))
    cache.observe(None, pod(0, 10))  # a relisting with pods: noticed at its first pod, not again at its end
    assert not cache.listed() and cache.listings == 1
    cache.observe("DELETED", pod(0, 11))
    assert cache.listed() and cache.listings == 2  # every pod went in the gap: the listing's end tells
    assert not cache.listed() and cache.listings == 2


def test_a_delete_that_found_nothing_drops_the_entry():
    cache = PodCache()
    cache.observe("ADDED", pod(0, 10, uid="a"))
    cache.gone("ns", "train", "train-node-0", "other")  # another pod of the name: kept
    assert cache.pods(KEY)
    cache.gone("ns", "train", "train-node-0", "a")
    assert cache.pods(KEY) == []


def test_pods_of_other_jobs_and_unlabelled_pods_are_apart():
    cache = PodCache()
    cache.observe("ADDED", pod(0, 10, job="other"))
    assert cache.observe("ADDED", {"metadata": {"name": "x", "namespace": "ns", "resourceVersion": "1"}}) is None
    assert cache.pods(KEY) == [] and len(cache.pods(("ns", "other"))) == 1


def test_the_sweep_gets_only_pods_whose_controller_is_not_a_known_job():
    cache = PodCache()
    cache.observe("ADDED", pod(0, 10))  # controlled by job-uid
    stray = pod(1, 11, job="other")
    stray["metadata"]["ownerReferences"] = [{"apiVersion": "training-hub.io/v1alpha1", "uid": "gone-uid", "kind": "SFTJob",
                                             "name": "other", "controller": True}]
    cache.observe("ADDED", stray)
    unowned = pod(2, 12, job="third")
    del unowned["metadata"]["ownerReferences"]
    cache.observe("ADDED", unowned)
    assert len(cache.pods_in("ns")) == 3 and cache.pods_in("elsewhere") == []
    assert [p["metadata"]["name"] for p in cache.pods_in("ns", {"job-uid"})] == ["other-node-1"]
    assert cache.pods_in(None, {"job-uid", "gone-uid"}) == []  # a pod no SFTJob controls is never a suspect
