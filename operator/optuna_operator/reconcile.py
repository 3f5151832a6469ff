"""Level-based reconcile of one TuningStudy, read top to bottom:

1. observe: the storage and the Optuna study (database), the worker Jobs and the dashboard
   (from the watch caches the controller hands in, not from GETs);
2. decide: `decide`, a pure function of spec + observations, says what each child should do
   and when to look again;
3. act: apply or delete exactly what the plan names; nothing is sent when nothing differs;
4. status: `build_status`, a pure function, derives the status and the events.

`Reconciler.reconcile` runs these four steps. The controller (controller.py) decides *when*
it runs: on changes of the study or its children, and periodically only while work runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import optuna
from kubernetes.client.exceptions import ApiException

from optuna_operator import kueue, manifests
from optuna_operator.api import (
    PARETO_FRONT_LIMIT,
    BestTrial,
    DashboardStatus,
    Direction,
    TrialCounts,
    TuningStudy,
    TuningStudyStatus,
    WorkerCounts,
)
from optuna_operator.applied import (
    APPLIED_HASH_ANNOTATION,
    applied_hash,
    conflict_message,
    manifest_hash,
    with_hash,
)
from optuna_operator.conditions import ConditionType, Reason, find, set_condition
from optuna_operator.config import OPERATOR_VERSION, OperatorSettings
from optuna_operator.contract import REPLACE_EXIT_CODES, ExitCode, redact
from optuna_operator.dashboards import (
    DashboardAction,
    DashboardConflict,
    DashboardSender,
    decide_dashboard,
    desired_dashboard,
)
from optuna_operator.kube import Cluster
from optuna_operator.study_store import (
    DirectionsMismatchError,
    NotOwnedError,
    Owner,
    StorageError,
    StoreRegistry,
    StudyHandle,
    StudySummary,
    WarmStartError,
)
from optuna_operator.tenancy import Tenancy, TenancyError, TenantCredentials, TenantLimits

__all__ = [
    "APPLIED_HASH_ANNOTATION",
    "ChildConflict",
    "Children",
    "Event",
    "JobState",
    "Observed",
    "Outcome",
    "Plan",
    "Reconciler",
    "StorageProblem",
    "build_status",
    "decide",
    "decide_phase",
]

log = logging.getLogger(__name__)

# Secret values read for storage URLs are reused this long: a rotated password reaches new
# workers within a minute, and running studies do not GET a Secret on every refresh.
SECRET_TTL_SECONDS = 60.0

PhaseName = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"]
# requeue/stop delete a queued (Kueue) Job instead of patching it: see `decide`.
JobAction = Literal["none", "apply", "restart", "requeue", "stop"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the TuningStudy."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class JobState:
    """What the reconcile needs of a worker Job."""

    name: str
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None
    applied_hash: str | None = None
    suspended: bool = False
    uid: str = ""
    queue: str | None = None  # the Job's Kueue queue label


@dataclass(frozen=True)
class Phase:
    """The study's phase with the reason and message its conditions carry."""

    phase: PhaseName
    reason: str
    message: str


@dataclass(frozen=True)
class StorageRef:
    """The URL the operator connects with and the Secret the pods read it from; `tenant` is
    set when it is the namespace's own role (no spec.storage)."""

    secret: str
    key: str
    url: str
    tenant: TenantCredentials | None = None


class StorageProblem(Exception):
    """The storage cannot be used for a reason the user can fix; shown as a condition."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Children:
    """The study's children as the controller's watch caches hold them."""

    jobs: tuple[dict[str, Any], ...] = ()
    # The study's own dashboard Deployment (own storage; before 0.2, every study's).
    dashboard: dict[str, Any] | None = None
    # The namespace's dashboard Deployment (default storage), shared by its studies.
    namespace_dashboard: dict[str, Any] | None = None


@dataclass(frozen=True)
class Observed:
    """Everything `decide` and `build_status` look at, gathered before any change."""

    now: datetime
    storage: StorageRef | None = None
    storage_failure: tuple[str, str] | None = None  # reason, message
    handle: StudyHandle | None = None
    summary: StudySummary = field(default_factory=StudySummary)
    job: JobState | None = None  # the Job with the desired template, if any
    stale_jobs: tuple[str, ...] = ()  # worker Jobs of an older template
    # The dashboard Deployment that serves the study (the namespace's with the default
    # storage), and a study's own one left from before 0.2 that must go.
    dashboard: dict[str, Any] | None = None
    old_dashboard: dict[str, Any] | None = None
    workers_message: str | None = None  # why worker pods last failed, when some did
    pods_refused: str | None = None  # why the Job controller cannot create worker pods
    # The children as they should be, each carrying APPLIED_HASH_ANNOTATION.
    desired_job: dict[str, Any] = field(default_factory=dict)
    # Deployment, Service and NetworkPolicy; empty when no dashboard should serve it.
    desired_dashboard: list[dict[str, Any]] = field(default_factory=list)
    context: manifests.ChildContext | None = None  # what the children were built from
    queue: str | None = None  # Kueue LocalQueue of the worker Job
    admission: kueue.Admission | None = None  # read while a queued Job is suspended


@dataclass(frozen=True)
class Plan:
    """What the act step does, decided once."""

    phase: Phase
    job: JobAction = "none"
    delete_jobs: tuple[str, ...] = ()
    dashboard: DashboardAction = "none"
    delete_old_dashboard: bool = False
    fail_stale_trials: bool = False
    importances: bool = False
    # Seconds until the next periodic reconcile; None: only changes wake this study.
    requeue_after: float | None = None


@dataclass(frozen=True)
class Acted:
    """What the act step found out: created children, the Job as applied, a refusal."""

    job: JobState | None
    job_created: bool = False
    dashboard: dict[str, Any] | None = None
    dashboard_created: bool = False
    # (reason, message) when a child could not be applied: the API server refused it, or
    # an object of that name belongs to someone else.
    rejected: tuple[str, str] | None = None
    importances: dict[str, float] | None = None
    applied: tuple[dict[str, Any], ...] = ()  # objects as stored, for the watch caches
    deleted: tuple[tuple[str, str], ...] = ()  # (kind, name)


@dataclass
class Outcome:
    """The result of one reconcile: the new status, events, and when to come back."""

    status: TuningStudyStatus
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    retry: bool = False  # something failed that a back-off retry may fix
    applied: tuple[dict[str, Any], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------------- pure decisions


def goal_reached(goal: float | None, direction: Direction, best: float | None) -> bool:
    """Whether a best value meets the goal in the study's direction."""
    if goal is None or best is None:
        return False
    return best >= goal if direction == Direction.MAXIMIZE else best <= goal


def decide_phase(
    study: TuningStudy,
    summary: StudySummary,
    job: JobState | None,
    now: datetime,
    start: datetime,
    queue: str | None = None,
) -> Phase:
    """The study's phase from its budget, the database and the worker Job."""
    budget = study.spec.budget
    if summary.failed_by_objective > budget.max_failed_trials:
        detail = f"; last error: {summary.last_error}" if summary.last_error else ""
        return Phase(
            "Failed",
            Reason.TOO_MANY_FAILED_TRIALS,
            f"{summary.failed_by_objective} trials failed, more than budget.maxFailedTrials "
            f"({budget.max_failed_trials}){detail}",
        )
    if job is not None and job.failed_reason:
        return Phase(
            "Failed",
            Reason.JOB_FAILED,
            f"Worker Job {job.name} failed ({job.failed_reason}): {job.failed_message}",
        )
    done: tuple[Reason, str] | None = None
    if budget.trials is not None and summary.finished >= budget.trials:
        done = (
            Reason.TRIAL_BUDGET_REACHED,
            f"{summary.finished} of {budget.trials} trials finished",
        )
    elif summary.best is not None and goal_reached(
        budget.goal, study.spec.directions[0], summary.best.values[0]
    ):
        done = (
            Reason.GOAL_REACHED,
            f"Trial {summary.best.number} reached the goal {budget.goal} "
            f"with {summary.best.values[0]}",
        )
    elif budget.timeout_seconds is not None and now >= start + timedelta(
        seconds=budget.timeout_seconds
    ):
        done = (Reason.TIME_BUDGET_REACHED, f"The time budget of {budget.timeout_seconds}s ran out")
    if done is not None:
        if job is not None and job.active > 0 and not study.spec.suspend:
            return Phase("Running", Reason.RUNNING, f"{done[1]}; waiting for workers to finish")
        return Phase("Succeeded", done[0], done[1])
    if study.spec.suspend:
        return Phase("Suspended", Reason.SUSPENDED, "spec.suspend is true: workers are stopped")
    if queue is not None and job is not None and job.suspended:
        return Phase(
            "Queued",
            Reason.WAITING_FOR_ADMISSION,
            f"The worker Job waits for admission by Kueue in LocalQueue {queue}",
        )
    if job is None or job.ready == 0:
        return Phase("Pending", Reason.WORKERS_PENDING, "Waiting for worker pods to start")
    return Phase("Running", Reason.RUNNING, f"{job.ready} workers running")


def decide(study: TuningStudy, observed: Observed, interval: float) -> Plan:
    """What to do with each child, and when to look again. Pure: unit-tested without a
    cluster. Called only when the storage and the study are usable."""
    assert observed.handle is not None
    job = observed.job
    phase = decide_phase(
        study, observed.summary, job, observed.now, observed.handle.start_time, observed.queue
    )
    finished = phase.phase in ("Succeeded", "Failed")
    # A queued Job is created and never patched: Kueue owns `suspend` and what it injects
    # on admission, and every re-apply would fight it. spec.suspend and spec changes delete
    # it instead (deletion is how Kueue releases a Job's quota at once); the next pass
    # creates the new one, suspended, at the back of its queue.
    queued = observed.queue is not None
    changed = job is not None and job.applied_hash != applied_hash(observed.desired_job)

    action: JobAction
    if job is not None and job.failed_reason:
        action = "none"  # the failure is the result; a spec change makes a new template
    elif finished and (job is None or job.active == 0):
        # Bounded work is done: no new workers, and no queued Job left to be admitted later.
        action = "stop" if queued and job is not None and job.suspended else "none"
    elif job is not None and job.complete:
        action = "restart"  # workers exited but the study is not done (e.g. budget raised)
    elif queued and study.spec.suspend:
        action = "stop" if job is not None else "none"
    elif job is not None and changed and (queued or job.queue is not None):
        # Also a Job that had a queue and should have none: an apply would leave the label
        # (the operator created it, it never applied it) and fight Kueue over `suspend`.
        action = "requeue"
    elif job is None or changed:
        action = "apply"
    else:
        action = "none"

    dashboard = decide_dashboard(observed.dashboard, observed.desired_dashboard)

    summary = observed.summary
    workers_gone = job is None or job.active == 0
    # Periodic refresh only while something moves: workers run or are expected, or trials
    # of killed workers still need failing. Idle studies wake only on changes (a child that
    # is created or deleted wakes its study through the watch).
    busy = phase.phase in ("Running", "Pending", "Queued") or bool(summary.running and workers_gone)
    return Plan(
        phase=phase,
        job=action,
        delete_jobs=observed.stale_jobs,
        dashboard=dashboard,
        delete_old_dashboard=observed.old_dashboard is not None,
        fail_stale_trials=bool(summary.running) and workers_gone,
        importances=phase.phase == "Succeeded"
        and study.status.param_importances is None
        and len(study.spec.directions) == 1,
        requeue_after=interval if busy else None,
    )


def build_status(
    study: TuningStudy, observed: Observed, plan: Plan, acted: Acted
) -> tuple[TuningStudyStatus, list[Event]]:
    """The new status and the events that go with it. Pure."""
    generation = study.metadata.generation
    old = study.status
    status = old.model_copy(deep=True)
    status.study_name = study.study_name
    status.optuna_version = optuna.__version__
    status.operator_version = OPERATOR_VERSION
    status.observed_generation = generation
    events: list[Event] = []

    def set_(type_: ConditionType, ok: bool | None, reason: str, message: str) -> None:
        status.conditions = set_condition(status.conditions, type_, ok, reason, message, generation)

    handle, summary = observed.handle, observed.summary
    assert handle is not None
    if handle.created:
        events.append(Event("Normal", Reason.STUDY_CREATED, f"Created Optuna study {handle.name}"))
    set_(
        ConditionType.STORAGE_READY,
        True,
        Reason.STUDY_READY,
        f"Optuna study {handle.name} is ready",
    )
    status.start_time = status.start_time or handle.start_time

    # Children
    for name in plan.delete_jobs:
        events.append(
            Event("Normal", "ReplacingWorkers", f"Deleted Job {name}: the worker template changed")
        )
    job = acted.job
    if plan.job == "restart" and observed.job is not None:
        events.append(
            Event("Normal", "RestartingWorkers", f"Deleted completed Job {observed.job.name}")
        )
    if plan.job in ("requeue", "stop") and observed.job is not None:
        why = (
            "the worker spec changed; its replacement waits for admission"
            if plan.job == "requeue"
            else "spec.suspend is true"
            if study.spec.suspend
            else "the study is done"
        )
        events.append(
            Event("Normal", "DeletedQueuedJob", f"Deleted Job {observed.job.name}: {why}")
        )
    if acted.job_created and job is not None:
        events.append(Event("Normal", "CreatedJob", f"Created Job {job.name}"))
    _dashboard_status(study, acted, set_, status, events)

    # Progress
    budget = study.spec.budget.trials
    status.trials = TrialCounts(
        complete=summary.complete,
        pruned=summary.pruned,
        failed=summary.failed,
        running=summary.running,
        waiting=summary.waiting,
        budget=budget,
    )
    status.progress = f"{summary.finished}/{budget}" if budget else str(summary.finished)
    status.best_trial = summary.best
    status.pareto_front = summary.pareto_front[:PARETO_FRONT_LIMIT] or None
    status.workers = WorkerCounts(
        active=job.active if job else 0,
        succeeded=job.succeeded if job else 0,
        failed=job.failed if job else 0,
    )

    # Phase and its conditions
    phase = plan.phase
    if acted.rejected is not None:
        phase = Phase("Failed", *acted.rejected)
    elif phase.phase == "Queued" and observed.admission is not None:
        phase = replace(phase, message=observed.admission.sentence())
    _admission_condition(study, observed, job, status, set_)
    status.phase = phase.phase
    suspend = study.spec.suspend
    set_(
        ConditionType.SUSPENDED,
        suspend,
        Reason.SUSPENDED if suspend else Reason.RUNNING,
        "spec.suspend is true" if suspend else "Workers may run",
    )
    ready = job.ready if job else 0
    workers_reason: str = Reason.WORKERS_PENDING
    workers_message = f"{ready} of {study.spec.workers.parallelism} workers ready"
    if acted.rejected is not None:
        workers_reason, workers_message = acted.rejected
    elif ready > 0:
        workers_reason = Reason.WORKERS_RUNNING
    elif phase.phase in ("Succeeded", "Failed", "Suspended"):
        workers_reason = Reason.WORKERS_STOPPED
    elif phase.phase == "Queued":
        workers_reason, workers_message = phase.reason, phase.message
    elif observed.pods_refused is not None:
        workers_reason = Reason.WORKER_PODS_REFUSED
        workers_message = f"The Job cannot create worker pods: {observed.pods_refused}"
    elif job is not None and job.failed > 0:
        workers_reason = Reason.WORKERS_CRASHING
        workers_message = f"{job.failed} worker pods failed and are restarted by the Job" + (
            f"; last: {observed.workers_message}" if observed.workers_message else ""
        )
    set_(ConditionType.WORKERS_READY, ready > 0, workers_reason, workers_message)
    if phase.phase == "Pending" and workers_reason in (
        Reason.WORKERS_CRASHING,
        Reason.WORKER_PODS_REFUSED,
    ):
        phase = Phase("Pending", workers_reason, workers_message)
        if _reason_changed(old, ConditionType.WORKERS_READY, workers_reason, "False"):
            events.append(Event("Warning", workers_reason, workers_message))
    succeeded, failed = phase.phase == "Succeeded", phase.phase == "Failed"
    set_(
        ConditionType.SUCCEEDED,
        succeeded,
        phase.reason if succeeded else Reason.RUNNING,
        phase.message if succeeded else "The study has not finished",
    )
    set_(
        ConditionType.FAILED,
        failed,
        phase.reason if failed else Reason.RUNNING,
        phase.message if failed else "No failure",
    )
    if succeeded or failed:
        status.completion_time = status.completion_time or observed.now
    else:
        status.completion_time = None
    if acted.importances is not None:
        status.param_importances = acted.importances
    if phase.phase != old.phase and (succeeded or failed):
        events.append(Event("Normal" if succeeded else "Warning", phase.phase, phase.message))
    elif acted.rejected is not None and _reason_changed(old, ConditionType.FAILED, phase.reason):
        events.append(Event("Warning", phase.reason, phase.message))
    best = summary.best
    previous_best = old.best_trial.number if old.best_trial else None
    if best is not None and len(study.spec.directions) == 1 and best.number != previous_best:
        events.append(
            Event(
                "Normal",
                "NewBestTrial",
                f"Trial {best.number} is the best so far: {best.values[0]:.6g}",
            )
        )
    return status, events


def storage_failure_status(
    study: TuningStudy, reason: str, message: str
) -> tuple[TuningStudyStatus, list[Event]]:
    """Status when the storage or the study cannot be used: everything else is kept."""
    generation = study.metadata.generation
    message = redact(message)
    status = study.status.model_copy(deep=True)
    status.conditions = set_condition(
        status.conditions, ConditionType.STORAGE_READY, False, reason, message, generation
    )
    status.phase = status.phase or "Pending"
    status.observed_generation = generation
    status.study_name = study.study_name
    events = []
    if _reason_changed(study.status, ConditionType.STORAGE_READY, reason, "False"):
        events.append(Event("Warning", reason, message))
    return status, events


def _dashboard_status(
    study: TuningStudy,
    acted: Acted,
    set_: Any,
    status: TuningStudyStatus,
    events: list[Event],
) -> None:
    ns, name = study.metadata.namespace, manifests.dashboard_name(study)
    if not study.spec.dashboard.enabled:
        status.dashboard = None
        set_(
            ConditionType.DASHBOARD_AVAILABLE,
            False,
            Reason.DASHBOARD_DISABLED,
            "spec.dashboard.enabled is false",
        )
        return
    if study.spec.storage is not None and study.spec.dashboard.secret_ref is None:
        status.dashboard = None
        set_(
            ConditionType.DASHBOARD_AVAILABLE,
            False,
            Reason.DASHBOARD_NEEDS_READ_ONLY_SECRET,
            "A study on its own storage gets a dashboard only with a read-only credential: "
            "set spec.dashboard.secretRef to a Secret holding the URL of a read-only role "
            "(the operator never gives a dashboard the read-write URL of spec.storage)",
        )
        return
    if acted.dashboard_created:
        events.append(
            Event(
                "Normal",
                "CreatedDashboard",
                f"Created Deployment, Service and NetworkPolicy {name}",
            )
        )
    url = f"http://{name}.{ns}.svc:{manifests.DASHBOARD_PORT}"
    status.dashboard = DashboardStatus(service=name, url=url)
    available = (((acted.dashboard or {}).get("status") or {}).get("availableReplicas") or 0) > 0
    if available:
        set_(
            ConditionType.DASHBOARD_AVAILABLE,
            True,
            Reason.DASHBOARD_READY,
            f"Dashboard at {url} (kubectl port-forward svc/{name} 8080)",
        )
    else:
        set_(
            ConditionType.DASHBOARD_AVAILABLE,
            False,
            Reason.DASHBOARD_PENDING,
            f"Waiting for Deployment {name} to become available",
        )


def _admission_condition(
    study: TuningStudy,
    observed: Observed,
    job: JobState | None,
    status: TuningStudyStatus,
    set_: Any,
) -> None:
    """WorkersAdmitted, for studies whose worker Job waits in a Kueue queue only."""
    queue = observed.queue
    if queue is None:
        status.conditions = [
            c for c in status.conditions if c.type != ConditionType.WORKERS_ADMITTED
        ]
        return
    if job is None:
        why = "spec.suspend is true" if study.spec.suspend else "there is no worker Job"
        set_(
            ConditionType.WORKERS_ADMITTED,
            False,
            Reason.NO_WORKER_JOB,
            f"Nothing waits in LocalQueue {queue}: {why}",
        )
    elif not job.suspended:
        set_(
            ConditionType.WORKERS_ADMITTED,
            True,
            Reason.ADMITTED,
            f"Job {job.name} was admitted by Kueue from LocalQueue {queue}",
        )
    else:
        admission = observed.admission or kueue.admission(queue, None, None)
        set_(
            ConditionType.WORKERS_ADMITTED,
            admission.admitted,
            Reason.ADMITTED if admission.admitted else Reason.WAITING_FOR_ADMISSION,
            admission.sentence(),
        )


def _reason_changed(
    status: TuningStudyStatus, type_: str, reason: str, expected_status: str = "True"
) -> bool:
    old = find(status.conditions, type_)
    return old is None or old.reason != reason or old.status != expected_status


# ---------------------------------------------------------------------- observations


def job_state(job: dict[str, Any]) -> JobState:
    """The fields of a Job object the reconcile acts on."""
    status = job.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    return JobState(
        name=job["metadata"]["name"],
        active=status.get("active", 0) or 0,
        ready=status.get("ready", 0) or 0,
        succeeded=status.get("succeeded", 0) or 0,
        failed=status.get("failed", 0) or 0,
        complete="Complete" in conditions,
        failed_reason=failed.get("reason", "Failed") if failed else None,
        failed_message=failed.get("message", "") if failed else None,
        applied_hash=applied_hash(job),
        suspended=bool((job.get("spec") or {}).get("suspend")),
        uid=str(job["metadata"].get("uid") or ""),
        queue=(job["metadata"].get("labels") or {}).get(manifests.QUEUE_LABEL),
    )


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
                text = str(term.get("message") or "").strip()
                last_line = text.splitlines()[-1] if text else ""
                try:
                    meaning = ExitCode(code).name.lower().replace("_", " ")
                except ValueError:
                    meaning = f"signal {code - 128}" if code > 128 else "error"
                detail = f"exit code {code} ({meaning}"
                detail += f", {term['reason']})" if term.get("reason") else ")"
                failures.append(
                    (str(term.get("finishedAt") or ""), f"{detail}: {last_line}"[:500].rstrip(": "))
                )
    if not failures:
        return None
    return sorted(failures)[-1][1]


# ---------------------------------------------------------------------- the reconciler


class ChildConflict(Exception):
    """An object with a child's name exists and is not controlled by this TuningStudy."""


def controller_uid(obj: dict[str, Any] | None) -> str | None:
    """The uid of the object's controlling owner, if any."""
    for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class Reconciler:
    """Runs observe -> decide -> act -> status for one study at a time; holds the clients
    and the small caches shared across studies (safe under concurrent reconciles)."""

    def __init__(self, cluster: Cluster, stores: StoreRegistry, settings: OperatorSettings) -> None:
        self.cluster = cluster
        self.stores = stores
        self.settings = settings
        # A rotated password leaves its old URL behind: drop its storage and caches.
        self.dashboards = DashboardSender(cluster)
        self.tenancy = Tenancy(
            cluster,
            on_rotate=lambda url: self.stores.drop_url(url),
            pooler=settings.worker_pooler,
            limits=TenantLimits(
                connection_limit=settings.tenant_connection_limit,
                statement_timeout_ms=settings.tenant_statement_timeout_ms,
                idle_in_transaction_timeout_ms=settings.tenant_idle_in_transaction_timeout_ms,
            ),
        )
        # (namespace, name, key) -> (value, read at monotonic time)
        self._secrets: dict[tuple[str, str, str], tuple[str | None, float]] = {}
        # (namespace, ConfigMap name) -> digest of the spec.export ConfigMap last applied
        self._exports: dict[tuple[str, str], str] = {}
        # (namespace, LocalQueue) -> (its ClusterQueue, read at monotonic time)
        self._cluster_queues: dict[tuple[str, str], tuple[str | None, float]] = {}
        # uids of studies whose 0.1.0 `<study>-storage` copy was looked at by this process
        self._scrubbed: set[str] = set()

    def close(self) -> None:
        """Close what the reconciler opened itself (the admin engines)."""
        self.tenancy.close()

    # ------------------------------------------------------------------ storage

    def resolve_storage(self, study: TuningStudy) -> StorageRef:
        """The storage URL of a study and the Secret its pods read it from: the user's
        Secret (spec.storage), or the namespace's own role, set up with the admin URL."""
        namespace = study.metadata.namespace
        if study.spec.storage is not None:
            ref = study.spec.storage.secret_ref
            url = self._read_secret(namespace, ref.name, ref.key)
            return StorageRef(ref.name, ref.key, url)
        default = self.settings.default_storage
        if default is None:
            raise StorageProblem(
                Reason.NO_STORAGE_CONFIGURED,
                "spec.storage is unset and the operator has no default storage; set "
                "spec.storage.secretRef to a Secret holding a postgresql+psycopg2:// URL",
            )
        admin_url = self._read_secret(default.namespace, default.name, default.key)
        try:
            creds = self.tenancy.ensure(namespace, admin_url)
        except TenancyError as exc:
            raise StorageProblem(Reason(exc.reason), exc.message) from None
        self._scrub_legacy_copy(study)
        return StorageRef(creds.secret, creds.url_key, creds.url, tenant=creds)

    def _scrub_legacy_copy(self, study: TuningStudy) -> None:
        """Operator 0.1.0 copied the admin URL into `<study>-storage`; empty that copy once
        per study and process, with the `patch` the operator already has (no `delete`;
        server-side apply cannot drop it: 0.1.0 wrote it as stringData). The empty Secret
        goes with its TuningStudy."""
        uid = study.metadata.uid or ""
        if uid in self._scrubbed:
            return
        name = f"{study.metadata.name}-storage"
        current = self.cluster.get("Secret", study.metadata.namespace, name)
        if current is not None and controller_uid(current) == uid and current.get("data"):
            self.cluster.merge_patch("Secret", study.metadata.namespace, name, {"data": None})
            log.info("Emptied Secret %s/%s of operator 0.1.0", study.metadata.namespace, name)
        self._scrubbed.add(uid)

    def _read_secret(self, namespace: str, name: str, key: str) -> str:
        cache_key = (namespace, name, key)
        cached = self._secrets.get(cache_key)
        if cached is not None and time.monotonic() - cached[1] < SECRET_TTL_SECONDS:
            value = cached[0]
        else:
            try:
                value = self.cluster.read_secret_value(namespace, name, key)
            except ApiException as exc:
                if exc.status in (403, 404):
                    self._secrets.pop(cache_key, None)
                    raise StorageProblem(
                        Reason.SECRET_NOT_FOUND,
                        f"Secret {name} not found in namespace {namespace}; create it with key "
                        f"{key!r} holding the storage URL",
                    ) from None
                raise
            if value:  # a missing key is looked up again next time: the user may add it
                self._secrets[cache_key] = (value, time.monotonic())
        if not value:
            raise StorageProblem(
                Reason.SECRET_KEY_MISSING,
                f"Secret {name} in namespace {namespace} has no key {key!r}; set "
                "spec.storage.secretRef.key or add the key",
            )
        return value

    def forget(self, study: TuningStudy) -> None:
        """Drop what is cached for a deleted study; its namespace's credentials are read
        again (a namespace being deleted deletes its studies, and one re-created under the
        same name must not reuse the old credentials or schema)."""
        ns = study.metadata.namespace
        self.tenancy.forget(ns)
        self._scrubbed.discard(study.metadata.uid or "")
        if study.spec.export is not None:
            self._exports.pop((ns, study.spec.export.config_map_name), None)
        self.stores.forget(study.study_name)

    # ------------------------------------------------------------------ the four steps

    def reconcile(
        self, study: TuningStudy, children: Children, now: datetime | None = None
    ) -> Outcome:
        """Observe, decide, act, and build the status of one study."""
        now = now or datetime.now(UTC)
        try:
            observed = self.observe(study, children, now)
        except (
            StorageProblem,
            StorageError,
            DirectionsMismatchError,
            WarmStartError,
            NotOwnedError,
        ) as exc:
            reason, message = _storage_failure(exc)
            status, events = storage_failure_status(study, reason, message)
            return Outcome(status, events, retry=True)
        plan = decide(study, observed, self.settings.status_interval)
        acted = self.act(study, observed, plan)
        status, events = build_status(study, observed, plan, acted)
        status, events = redact_status(
            status, events, observed.storage.url if observed.storage else None
        )
        return Outcome(
            status,
            events,
            requeue_after=plan.requeue_after,
            retry=acted.rejected is not None,
            applied=acted.applied,
            deleted=acted.deleted,
        )

    def observe(self, study: TuningStudy, children: Children, now: datetime) -> Observed:
        """Read the database and the cached children; raises on storage problems."""
        storage = self.resolve_storage(study)
        handle = self.stores.ensure_study(
            storage.url,
            study.study_name,
            list(study.spec.directions),
            study.spec.metric_names,
            study.spec.enqueue_trials,
            {
                "generation": study.metadata.generation,
                "operator_version": OPERATOR_VERSION,
                "optuna_version": optuna.__version__,
            },
            warm_start=study.spec.warm_start.study_name if study.spec.warm_start else None,
            owner=owner_of(study),
            adopt=study.spec.adopt_existing_study,
            before_create=(lambda: self._refuse_legacy(study)) if storage.tenant else None,
        )
        summary = self.stores.summarize(storage.url, handle)
        ctx = self._child_context(study, storage, handle)
        desired_job = with_hash(manifests.worker_job(study, ctx))
        desired_name = desired_job["metadata"]["name"]
        current: JobState | None = None
        stale = []
        for job in children.jobs:
            if job["metadata"].get("deletionTimestamp"):
                continue
            if controller_uid(job) != study.metadata.uid:
                # Not this resource's (e.g. of an earlier one of the same name): never
                # counted or deleted here; applying its name reports the conflict.
                continue
            if job["metadata"]["name"] == desired_name:
                current = job_state(job)
            else:
                stale.append(job["metadata"]["name"])
        workers_message = None
        if current is not None and (current.failed_reason or current.failed):
            pods = self.cluster.list_pods(
                study.metadata.namespace, f"batch.kubernetes.io/job-name={current.name}"
            )
            workers_message = termination_message(pods)
            if current.failed_reason:
                current = replace(current, failed_message=workers_message or current.failed_message)
        pods_refused = None
        if (
            current is not None
            and current.active == 0
            and not (
                current.complete or current.failed_reason or current.suspended or study.spec.suspend
            )
        ):
            # Quota, LimitRange or admission refusals reach only the Job's events.
            pods_refused = self.cluster.last_event_message(
                study.metadata.namespace, "Job", current.name, "FailedCreate"
            )
        # Default storage: the namespace's dashboard serves the study, and a dashboard of its
        # own from before 0.2 (on the same read-only role) goes.
        own_storage = study.spec.storage is not None
        serving = children.dashboard if own_storage else children.namespace_dashboard
        old_dashboard = None if own_storage else children.dashboard
        admission = None
        if ctx.queue_name is not None and current is not None and current.suspended:
            admission = self._admission(study.metadata.namespace, ctx.queue_name, current)
        return Observed(
            now=now,
            storage=storage,
            handle=handle,
            summary=summary,
            job=current,
            stale_jobs=tuple(sorted(stale)),
            dashboard=serving,
            old_dashboard=old_dashboard,
            workers_message=workers_message,
            pods_refused=pods_refused,
            desired_job=desired_job,
            desired_dashboard=desired_dashboard(study, ctx, serving),
            context=ctx,
            queue=ctx.queue_name,
            admission=admission,
        )

    def act(self, study: TuningStudy, observed: Observed, plan: Plan) -> Acted:
        """Apply or delete what the plan names; a child the API server refuses, or whose
        name another owner holds, is reported, not raised, so the status can say why."""
        ns = study.metadata.namespace
        assert observed.storage is not None and observed.handle is not None
        desired_job = observed.desired_job
        applied: list[dict[str, Any]] = []
        deleted: list[tuple[str, str]] = []
        for name in plan.delete_jobs:
            self.cluster.delete("Job", ns, name)
            deleted.append(("Job", name))
        job, job_created = observed.job, False
        rejected: tuple[str, str] | None = None
        if plan.job in ("restart", "requeue", "stop") and job is not None:
            self.cluster.delete("Job", ns, job.name)
            deleted.append(("Job", job.name))
            job = None
        elif plan.job == "apply":
            try:
                if job is None:  # not in the cache: a Job of that name may be someone else's
                    self._check_controlled(study, desired_job)
                send = self.cluster.create if observed.queue else self.cluster.apply
                stored, job_created = send(desired_job)
                applied.append(stored)
                job = job_state(stored)
            except ApiException as exc:
                rejected = (
                    Reason.CHILD_REJECTED,
                    _refusal(exc, "Job", desired_job["metadata"]["name"]),
                )
            except ChildConflict as exc:
                rejected = (Reason.CHILD_CONFLICT, str(exc))
        dashboard, dashboard_created = observed.dashboard, False
        if plan.delete_old_dashboard:
            # Made by an earlier release and controlled by this study (the watch caches
            # only such): the namespace's read-only dashboard replaces it.
            name = manifests.study_dashboard_name(study)
            for kind in ("Deployment", "Service"):
                self.cluster.delete(kind, ns, name)
                deleted.append((kind, name))
        if plan.dashboard != "none" and rejected is None:
            assert observed.context is not None
            try:
                sent = self.dashboards.send(
                    study,
                    observed.context,
                    plan.dashboard,
                    observed.desired_dashboard,
                    observed.dashboard,
                )
                dashboard, dashboard_created = sent.deployment, sent.created
                applied += sent.applied
                deleted += sent.deleted
            except ApiException as exc:
                name = manifests.dashboard_name(study)
                rejected = (Reason.CHILD_REJECTED, _refusal(exc, "Deployment", name))
            except DashboardConflict as exc:
                rejected = (Reason.CHILD_CONFLICT, str(exc))
        if plan.fail_stale_trials:
            try:
                self.stores.fail_stale_trials(
                    observed.storage.url,
                    observed.handle.name,
                    study.spec.workers.heartbeat_interval_seconds,
                )
            except StorageError as exc:  # the next refresh tries again
                log.warning("Could not fail stale trials of %s: %s", observed.handle.name, exc)
        importances = self._importances(observed.storage, study) if plan.importances else None
        if study.spec.export is not None and observed.summary.best is not None:
            self._export(study, observed.summary.best)
        return Acted(
            job=job,
            job_created=job_created,
            dashboard=dashboard,
            dashboard_created=dashboard_created,
            rejected=rejected,
            importances=importances,
            applied=tuple(applied),
            deleted=tuple(deleted),
        )

    # ------------------------------------------------------------------ helpers

    def _refuse_legacy(self, study: TuningStudy) -> None:
        """A study of operator 0.1.0 still under the admin role is not shadowed by a new,
        empty one: the user is told to migrate it."""
        default = self.settings.default_storage
        assert default is not None  # tenant storage exists only with a default storage
        admin_url = self._read_secret(default.namespace, default.name, default.key)
        try:
            legacy = self.tenancy.legacy_study_exists(admin_url, study.study_name)
        except TenancyError as exc:
            raise StorageProblem(Reason(exc.reason), exc.message) from None
        if not legacy:
            return
        raise StorageProblem(
            Reason.LEGACY_STUDY_NOT_MIGRATED,
            f"Optuna study {study.study_name} was made by operator 0.1.0 in the shared schema; "
            f"move it into namespace {study.metadata.namespace}'s schema with `optuna-operator "
            f"migrate --namespace {study.metadata.namespace}` (README: Upgrading from 0.1.0)",
        )

    def _check_controlled(
        self, study: TuningStudy, desired: dict[str, Any], cached: dict[str, Any] | None = None
    ) -> None:
        """Raise ChildConflict when an object of the child's name exists and is not
        controlled by this TuningStudy (uid): it is never taken over or deleted."""
        meta = desired["metadata"]
        current = cached or self.cluster.get(desired["kind"], meta["namespace"], meta["name"])
        if current is not None and controller_uid(current) != study.metadata.uid:
            raise ChildConflict(conflict_message(desired["kind"], meta["name"], current))

    def _child_context(
        self, study: TuningStudy, storage: StorageRef, handle: StudyHandle
    ) -> manifests.ChildContext:
        timeout = study.spec.budget.timeout_seconds
        start = handle.start_time
        tenant = storage.tenant
        return manifests.ChildContext(
            storage_secret=storage.secret,
            storage_key=storage.key,
            worker_image=self.settings.worker_image,
            dashboard_image=self.settings.dashboard_image,
            deadline=start + timedelta(seconds=timeout) if timeout else None,
            queue_name=study.spec.workers.queue_name or self.settings.default_queue_name,
            dashboard_url=tenant.readonly_url if tenant else None,
            dashboard_password_key=tenant.readonly_password_key if tenant else None,
            dashboard_allowed_from=self.settings.dashboard_allowed_from,
        )

    def _admission(self, namespace: str, queue: str, job: JobState) -> kueue.Admission:
        """Kueue's view of a suspended queued Job: its Workload, and the LocalQueue's
        ClusterQueue while the Workload has none. Read only while the Job is suspended."""
        for version in kueue.VERSIONS:
            try:
                workloads = self.cluster.list_path(
                    kueue.workloads_path(version, namespace), f"{kueue.JOB_UID_LABEL}={job.uid}"
                )
            except ApiException as exc:
                if exc.status == 404:
                    continue  # this version is not served; try the older one
                if exc.status == 403:
                    return kueue.Admission(
                        queue,
                        None,
                        False,
                        "the operator may not list Kueue Workloads (grant get/list on "
                        "workloads.kueue.x-k8s.io)",
                    )
                raise
            workload = workloads[0] if workloads else None
            return kueue.admission(queue, workload, self._cluster_queue(version, namespace, queue))
        return kueue.Admission(
            queue,
            None,
            False,
            "Kueue is not installed (the API server serves no workloads.kueue.x-k8s.io); "
            "the worker Job stays suspended",
        )

    def _cluster_queue(self, version: str, namespace: str, queue: str) -> str | None:
        """spec.clusterQueue of a LocalQueue, cached like Secrets: queues are rarely
        rewired, and a waiting study is refreshed every status interval."""
        key = (namespace, queue)
        cached = self._cluster_queues.get(key)
        if cached is not None and time.monotonic() - cached[1] < SECRET_TTL_SECONDS:
            return cached[0]
        try:
            local_queue = self.cluster.get_cluster_object(
                kueue.local_queue_path(version, namespace, queue)
            )
        except ApiException as exc:
            if exc.status != 403:
                raise
            local_queue = None
        name = ((local_queue or {}).get("spec") or {}).get("clusterQueue")
        self._cluster_queues[key] = (str(name) if name else None, time.monotonic())
        return str(name) if name else None

    def _export(self, study: TuningStudy, best: BestTrial) -> None:
        """Write the best trial to the spec.export ConfigMap when it changed. Not checked
        for a foreign owner like the other children: the operator never reads ConfigMaps,
        and the admission policy already requires the study's author to hold `update` on
        this one, so writing it lends the author nothing."""
        config_map = manifests.export_config_map(study, best)
        digest = manifest_hash(config_map)
        key = (study.metadata.namespace, config_map["metadata"]["name"])
        if self._exports.get(key) != digest:
            self.cluster.apply(config_map)
            self._exports[key] = digest

    def _importances(self, storage: StorageRef, study: TuningStudy) -> dict[str, float] | None:
        try:
            return self.stores.param_importances(storage.url, study.study_name) or None
        except Exception as exc:  # importance is a courtesy; never fail the study for it
            log.warning(
                "Could not compute parameter importances for %s: %s",
                study.study_name,
                type(exc).__name__,
            )
            return None

    def delete_study(self, study: TuningStudy) -> bool:
        """Delete the Optuna study (deletionPolicy Delete) when this resource owns it; False
        when it did not exist or belongs to someone else."""
        storage = self.resolve_storage(study)
        return self.stores.delete_study(storage.url, study.study_name, owner_of(study))


def owner_of(study: TuningStudy) -> Owner:
    """The owner record of a TuningStudy."""
    meta = study.metadata
    return Owner(meta.namespace, meta.name, meta.uid or "")


def redact_status(
    status: TuningStudyStatus, events: list[Event], url: str | None
) -> tuple[TuningStudyStatus, list[Event]]:
    """Condition and event messages with credentials removed: trial errors and refusals
    quote text the operator does not control."""
    for condition in status.conditions:
        condition.message = redact(condition.message, url)
    return status, [replace(e, message=redact(e.message, url)) for e in events]


def _refusal(exc: ApiException, kind: str, name: str) -> str:
    """The API server's reason for refusing a child, as a sentence for the status; errors
    that are not a refusal of this object (5xx, timeouts) are raised on."""
    if exc.status not in (400, 403, 404, 409, 422):
        raise exc
    try:
        detail = json.loads(exc.body or b"{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        detail = exc.reason
    return f"The API server refused {kind} {name}: {detail}"[:1000]


def _storage_failure(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, StorageProblem):
        return exc.reason, exc.message
    if isinstance(exc, DirectionsMismatchError):
        return Reason.DIRECTIONS_MISMATCH, str(exc)
    if isinstance(exc, WarmStartError):
        return Reason.WARM_START_FAILED, str(exc)
    if isinstance(exc, NotOwnedError):
        return Reason.STUDY_NOT_OWNED, str(exc)
    return Reason.STORAGE_UNREACHABLE, f"Cannot use the storage: {exc}"
