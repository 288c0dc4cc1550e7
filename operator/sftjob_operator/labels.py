"""Label and annotation keys the operator puts on what it creates (docs/architecture.md, "render <-> reconcile").

Reconcile finds a job's pods by these labels, so render and reconcile must use the same keys: both import them
from here.
"""

from __future__ import annotations

PREFIX = "training-hub.io/"

JOB_NAME = PREFIX + "job-name"
NODE_RANK = PREFIX + "node-rank"
ATTEMPT = PREFIX + "attempt"
RDZV_ID = PREFIX + "rdzv-id"
# Set only on the prepare pod (value PREPARE_ROLE): it is no node of the gang, has no node rank, joins no pod group.
ROLE = PREFIX + "role"
PREPARE_ROLE = "prepare"

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "training-hub-operator"

# Kueue admits plain pods as one gang when they share a pod-group name and declare the group size
# (docs/operator.md, "Kueue"). Each gang attempt is its own group, `<job>-a<attempt>` (render.pod_group_name): Kueue
# names the group's Workload after it, so a new gang gets a fresh Workload that queues again instead of being
# matched to the finished one of the previous attempt.
KUEUE_QUEUE_NAME = "kueue.x-k8s.io/queue-name"  # label, on the SFTJob and copied to its pods
KUEUE_POD_GROUP_NAME = "kueue.x-k8s.io/pod-group-name"  # label
KUEUE_POD_GROUP_TOTAL_COUNT = "kueue.x-k8s.io/pod-group-total-count"  # annotation
# "false" on every pod from its creation: the operator, not Kueue, replaces the pods of a gang that ended (always the
# whole gang, as a new group). Without it Kueue treats a failed or deleted member as retriable and keeps the group's
# quota and its finalizer on the old pods until same-group replacements appear: a gang restart waiting for the old
# pods to go would deadlock, and a deleted or suspended job would hold its quota. With it, the group finishes (quota
# released, finalizers removed) as soon as all its pods have terminated, whatever ended them, operator up or not.
KUEUE_RETRIABLE_IN_GROUP = "kueue.x-k8s.io/retriable-in-group"  # annotation
KUEUE_NOT_RETRIABLE = "false"
# What Kueue puts on the pods it manages: scheduling gates until the group is admitted, a finalizer until the group
# is finished, and the TerminationTarget pod condition when it evicts (preempts) them.
KUEUE_PREFIX = "kueue.x-k8s.io/"
KUEUE_FINALIZER = "kueue.x-k8s.io/managed"
KUEUE_TERMINATION_TARGET = "TerminationTarget"

# Keys a user may not set through spec.podLabels / spec.podAnnotations: the operator owns them.
RESERVED_POD_LABELS = (JOB_NAME, NODE_RANK, ATTEMPT, RDZV_ID, ROLE, MANAGED_BY, KUEUE_QUEUE_NAME, KUEUE_POD_GROUP_NAME)
RESERVED_POD_ANNOTATIONS = (KUEUE_POD_GROUP_TOTAL_COUNT, KUEUE_RETRIABLE_IN_GROUP)


def job_selector(job_name: str) -> dict[str, str]:
    """Labels that select every object the operator made for one SFTJob."""
    return {JOB_NAME: job_name}


def job_selector_string(job_name: str) -> str:
    """The same selector as a `labelSelector` query string (list/watch calls)."""
    return f"{JOB_NAME}={job_name}"


def rank0_selector(job_name: str) -> dict[str, str]:
    """The rank-0 Service's selector: only the rank-0 pod is behind the rendezvous endpoint."""
    return {JOB_NAME: job_name, NODE_RANK: "0"}


def common_labels(job_name: str) -> dict[str, str]:
    """Labels on every object the operator creates for a job (Service, ConfigMap, Pods)."""
    return {JOB_NAME: job_name, MANAGED_BY: MANAGED_BY_VALUE}


def pod_labels(job_name: str, *, rank: int, attempt: int, rdzv_id: str) -> dict[str, str]:
    """The operator's labels on one gang pod (the Kueue ones are added by render when they apply)."""
    return {
        **common_labels(job_name),
        NODE_RANK: str(rank),
        ATTEMPT: str(attempt),
        RDZV_ID: rdzv_id,
    }


def prepare_pod_labels(job_name: str, *, attempt: int) -> dict[str, str]:
    """The operator's labels on the prepare pod of one gang attempt (no node rank, no Kueue pod group)."""
    return {**common_labels(job_name), ROLE: PREPARE_ROLE, ATTEMPT: str(attempt)}


def is_prepare_pod(pod) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(ROLE) == PREPARE_ROLE
