"""Kueue's view of a study's waiting worker Job, read for the observe step: its Workload
and the ClusterQueue of its LocalQueue (cached: queues are rarely rewired, and a waiting
study is refreshed every status interval)."""

from __future__ import annotations

import time

from optuna_operator.apiserver import ApiError
from optuna_operator.kube import ClusterReader
from optuna_operator.reconcile import kueue
from optuna_operator.reconcile.model import JobState

__all__ = ["AdmissionReader"]

# A LocalQueue's ClusterQueue is read again at most this often.
QUEUE_TTL_SECONDS = 60.0


class AdmissionReader:
    """Reads why a queued Job waits; read only while the Job is suspended."""

    def __init__(self, cluster: ClusterReader) -> None:
        self.cluster = cluster
        # (namespace, LocalQueue) -> (its ClusterQueue, read at monotonic time)
        self._cluster_queues: dict[tuple[str, str], tuple[str | None, float]] = {}

    def read(self, namespace: str, queue: str, job: JobState) -> kueue.KueueRead:
        """Kueue's objects for a suspended queued Job: its Workload, and the LocalQueue's
        ClusterQueue for a Workload not assigned one yet (cached like Secrets: queues are
        rarely rewired, and a waiting study is refreshed every status interval). Read only
        while the Job is suspended; `kueue.KueueRead.admission` words them."""
        key = (namespace, queue)
        for version in kueue.VERSIONS:
            try:
                workloads = self.cluster.list_path(
                    kueue.workloads_path(version, namespace), f"{kueue.JOB_UID_LABEL}={job.uid}"
                )
            except ApiError as exc:
                if exc.status == 404:
                    continue  # this version is not served; try the older one
                if exc.status == 403:
                    return kueue.KueueRead(
                        unreadable="the operator may not list Kueue Workloads (grant get/list "
                        "on workloads.kueue.x-k8s.io)"
                    )
                raise
            cached = self._cluster_queues.get(key)
            if cached is None or time.monotonic() - cached[1] >= QUEUE_TTL_SECONDS:
                try:
                    local_queue = self.cluster.get_cluster_object(
                        kueue.local_queue_path(version, namespace, queue)
                    )
                except ApiError as exc:
                    if exc.status != 403:
                        raise
                    local_queue = None  # the ClusterQueue is named only when it can be read
                name = ((local_queue or {}).get("spec") or {}).get("clusterQueue")
                cached = (str(name) if name else None, time.monotonic())
                self._cluster_queues[key] = cached
            return kueue.KueueRead(workloads[0] if workloads else None, cached[0])
        return kueue.KueueRead(
            unreadable="Kueue is not installed (the API server serves no "
            "workloads.kueue.x-k8s.io); the worker Job stays suspended"
        )
