"""Step 2, observe: read the study's database summary and measure it against the budgets
(lifecycle's rules), build the children as they should be (children/, pure), and read
the children from the watch caches, why worker pods failed or were refused, and what
Kueue says of a waiting Job, into an `Observed`. Reads only: what must exist before it
can be read is made by step 1, prepare.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from optuna_operator.api import TuningStudy
from optuna_operator.children import manifests
from optuna_operator.children.desired import desired_children
from optuna_operator.config import OperatorSettings
from optuna_operator.contract import REPLACE_EXIT_CODES, ExitCode
from optuna_operator.kube import ClusterReader
from optuna_operator.lifecycle.stopping import assess
from optuna_operator.reconcile.kueue import KueueRead
from optuna_operator.reconcile.model import Children, JobState, Observed, controller_uid
from optuna_operator.reconcile.prepare import Prepared
from optuna_operator.reconcile.queues import AdmissionReader
from optuna_operator.storage.study_store import StoreRegistry

__all__ = [
    "Observer",
    "WorkerReads",
    "termination_message",
]


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The most recent worker failure: exit code, kubelet reason and the last line the
    worker printed (the kubelet copies it into the pod status)."""
    failures = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                term = state.get("terminated") or {}
                code = term.get("exitCode")
                # 0 is success; a replaced worker (SIGTERM, trial timeout) is not a failure.
                if not code or code in REPLACE_EXIT_CODES:
                    continue
                failures.append((str(term.get("finishedAt") or ""), _describe_termination(term)))
    if not failures:
        return None
    return sorted(failures)[-1][1]


def _describe_termination(term: dict[str, Any]) -> str:
    code = int(term["exitCode"])
    text = str(term.get("message") or "").strip()
    last_line = text.splitlines()[-1] if text else ""
    try:
        meaning = ExitCode(code).name.lower().replace("_", " ")
    except ValueError:
        meaning = f"signal {code - 128}" if code > 128 else "error"
    detail = f"exit code {code} ({meaning}"
    detail += f", {term['reason']})" if term.get("reason") else ")"
    return f"{detail}: {last_line}"[:500].rstrip(": ")


def split_jobs(
    study: TuningStudy, jobs: tuple[dict[str, Any], ...], desired_name: str
) -> tuple[JobState | None, tuple[str, ...]]:
    """The study's Job with the desired name, and the names of its Jobs of older templates.
    Jobs being deleted and Jobs another resource controls are left out: those are never
    counted or deleted here (applying the name reports the conflict)."""
    current: JobState | None = None
    stale = []
    for job in jobs:
        if job["metadata"].get("deletionTimestamp"):
            continue
        if controller_uid(job) != study.metadata.uid:
            continue
        if job["metadata"]["name"] == desired_name:
            current = JobState.from_job(job)
        else:
            stale.append(job["metadata"]["name"])
    return current, tuple(sorted(stale))


@dataclass(frozen=True)
class WorkerReads:
    """What observe read live about a Job's workers (each only when it can say something)."""

    failed_pods: list[dict[str, Any]] = field(default_factory=list)
    refused: str | None = None  # the Job controller's last FailedCreate message
    kueue: KueueRead | None = None  # Kueue's objects for a suspended queued Job


class Observer:
    """Step 2, observe: the study's summary (database), its children from the watch caches,
    and the reasons the cluster gives for workers that fail or do not start."""

    def __init__(
        self, cluster: ClusterReader, stores: StoreRegistry, settings: OperatorSettings
    ) -> None:
        self.cluster = cluster
        self.stores = stores
        self.settings = settings
        self.queues = AdmissionReader(cluster)

    def observe(
        self, study: TuningStudy, prepared: Prepared, children: Children, now: datetime
    ) -> Observed:
        """Read the database and the cached children; raises on storage problems."""
        ctx = self.child_context(study, prepared)
        summary = self.stores.summarize(prepared.storage.url, prepared.handle)
        assessment = assess(study.spec, study.status, summary, now, copied=prepared.handle.copied)
        # The workers count finished trials against the budget just assessed.
        ctx = replace(ctx, budget=assessment.budget)
        # Default storage: the namespace's dashboard serves the study, and a dashboard of its
        # own from before 0.2 (on the same read-only role) goes.
        own_storage = study.spec.storage is not None
        serving = children.dashboard if own_storage else children.namespace_dashboard
        desired = desired_children(study, ctx, summary.best)
        current, stale = split_jobs(study, children.jobs, desired.job["metadata"]["name"])
        reads = self._read_workers(study, current, ctx.queue_name)
        workers_message = termination_message(reads.failed_pods)
        if current is not None and current.failed_reason:
            # A failed Job's message becomes the worker's: it says more than
            # "BackoffLimitExceeded".
            current = replace(current, failed_message=workers_message or current.failed_message)
        admission = None
        if reads.kueue is not None and ctx.queue_name is not None:
            admission = reads.kueue.admission(ctx.queue_name)
        return Observed(
            now=now,
            storage=prepared.storage,
            handle=prepared.handle,
            summary=summary,
            assessment=assessment,
            job=current,
            stale_jobs=stale,
            dashboard=serving,
            old_dashboard=None if own_storage else children.dashboard,
            workers_message=workers_message,
            pods_refused=reads.refused,
            desired=desired,
            queue=ctx.queue_name,
            admission=admission,
        )

    def _read_workers(
        self, study: TuningStudy, current: JobState | None, queue: str | None
    ) -> WorkerReads:
        """The cluster's live word on the Job's workers, each read only when it can say
        something: Kueue's objects while a queued Job is suspended, the pods while the Job
        fails, and the Job controller's FailedCreate event while no worker starts (quota,
        LimitRange and admission refusals reach only the Job's events)."""
        if current is None:
            return WorkerReads()
        waiting = None
        if queue is not None and current.suspended:
            waiting = self.queues.read(study.metadata.namespace, queue, current)
        failing = bool(current.failed_reason or current.failed)
        stopped = current.complete or current.failed_reason or current.suspended
        not_starting = current.active == 0 and not (stopped or study.spec.suspend)
        pods, refused = [], None
        if failing:
            pods = self.cluster.list_pods(
                study.metadata.namespace, f"batch.kubernetes.io/job-name={current.name}"
            )
        if not_starting:
            refused = self.cluster.last_event_message(
                study.metadata.namespace, "Job", current.name, "FailedCreate"
            )
        return WorkerReads(pods, refused, waiting)

    def child_context(self, study: TuningStudy, prepared: Prepared) -> manifests.ChildContext:
        """What the children are built from besides the spec: Secret names, images, the
        workers' deadline, the queue and the dashboard's read-only role (the workers' budget
        is set once the summary is assessed)."""
        tenant = prepared.storage.tenant
        return manifests.ChildContext(
            storage_secret=prepared.storage.secret,
            storage_key=prepared.storage.key,
            worker_image=self.settings.worker_image,
            dashboard_image=self.settings.dashboard_image,
            # The wall-clock deadline only: active time is the operator's to count.
            deadline=study.spec.budget.deadline,
            queue_name=study.spec.workers.queue_name or self.settings.default_queue_name,
            dashboard_url=tenant.readonly_url if tenant else None,
            dashboard_password_key=tenant.readonly_password_key if tenant else None,
            dashboard_allowed_from=self.settings.dashboard_allowed_from,
            dashboard_pod_template=self.settings.dashboard_pod_template,
        )
