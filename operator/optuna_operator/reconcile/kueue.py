"""What the reconcile reads of Kueue (sigs.k8s.io/kueue) for a queued worker Job. Pure.

A worker Job with the `kueue.x-k8s.io/queue-name` label is created suspended; Kueue makes a
Workload for it (labelled with the Job's uid) and unsuspends the Job once its ClusterQueue
admits the Workload. While the Job is suspended the Workload's conditions say why, in
Kueue's own words ("couldn't assign flavors to pod set main: insufficient unused quota for
nvidia.com/gpu ..."), and that sentence goes into the study's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "GROUP",
    "JOB_UID_LABEL",
    "VERSIONS",
    "Admission",
    "KueueRead",
    "admission",
    "local_queue_path",
    "workloads_path",
]

GROUP = "kueue.x-k8s.io"
# v1beta2 is Kueue 0.17's storage version (v1beta1 is still served); older releases serve
# only v1beta1. The fields read here are the same in both.
VERSIONS = ("v1beta2", "v1beta1")
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


@dataclass(frozen=True)
class Admission:
    """Where a suspended queued Job stands with Kueue."""

    queue: str
    cluster_queue: str | None
    admitted: bool
    message: str  # Kueue's reason, or why it could not be read

    def sentence(self) -> str:
        """A status message a user can act on."""
        where = f"LocalQueue {self.queue}"
        if self.cluster_queue:
            where += f" (ClusterQueue {self.cluster_queue})"
        if self.admitted:
            return f"Admitted by Kueue from {where}; starting workers"
        return f"Waiting for admission in {where}: {self.message}"


@dataclass(frozen=True)
class KueueRead:
    """What was read of Kueue for a suspended queued Job (reconcile/queues.py reads it)."""

    workload: dict[str, Any] | None = None  # None: Kueue has not made one yet
    cluster_queue: str | None = None  # the LocalQueue's, when it could be read
    unreadable: str | None = None  # why Kueue could not be read at all

    def admission(self, queue: str) -> Admission:
        """Where the Job stands with Kueue, in words."""
        if self.unreadable is not None:
            return Admission(queue, None, False, self.unreadable)
        return admission(queue, self.workload, self.cluster_queue)


def workloads_path(version: str, namespace: str) -> str:
    return f"/apis/{GROUP}/{version}/namespaces/{namespace}/workloads"


def local_queue_path(version: str, namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{version}/namespaces/{namespace}/localqueues/{name}"


def _condition(workload: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def admission(queue: str, workload: dict[str, Any] | None, cluster_queue: str | None) -> Admission:
    """The admission state of a suspended queued Job from its Workload (None: Kueue has not
    made one yet). cluster_queue is the LocalQueue's, for Workloads not yet assigned one."""
    if workload is None:
        return Admission(
            queue,
            cluster_queue,
            False,
            "Kueue has not created a Workload for the worker Job yet (is Kueue running, with "
            "the batch/job integration enabled?)",
        )
    status = workload.get("status") or {}
    assigned = (status.get("admission") or {}).get("clusterQueue")
    admitted = _condition(workload, "Admitted")
    if admitted is not None and admitted.get("status") == "True":
        return Admission(queue, assigned or cluster_queue, True, str(admitted.get("message") or ""))
    # An eviction explains the suspension best (preempted, deactivated, queue stopped);
    # then the quota reservation (no quota, no such queue); then admission checks.
    candidates = [
        (_condition(workload, "Evicted"), "True"),
        (_condition(workload, "QuotaReserved"), "False"),
        (admitted, "False"),
    ]
    message = next(
        (
            str(c.get("message"))
            for c, wanted in candidates
            if c is not None and c.get("status") == wanted and c.get("message")
        ),
        "the Workload is pending",
    )
    return Admission(queue, assigned or cluster_queue, False, message[:500])
