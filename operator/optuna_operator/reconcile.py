"""Level-based reconcile: derive every child and the status from the spec and what is observed.

One entry point, `Reconciler.reconcile`, runs on create, update, resume and a timer.
Decisions that need no I/O (`decide_phase`, `status_for`) are pure functions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import optuna
from kubernetes.client.exceptions import ApiException

from optuna_operator import manifests
from optuna_operator.api import (
    PARETO_FRONT_LIMIT,
    DashboardStatus,
    Direction,
    TrialCounts,
    TuningStudy,
    TuningStudyStatus,
    WorkerCounts,
)
from optuna_operator.conditions import ConditionType, Reason, set_condition
from optuna_operator.config import OPERATOR_VERSION, OperatorSettings
from optuna_operator.kube import Cluster
from optuna_operator.study_store import (
    DirectionsMismatchError,
    StorageError,
    StoreRegistry,
    StudyHandle,
    StudySummary,
)

__all__ = ["Event", "JobState", "Outcome", "Reconciler", "decide_phase"]

log = logging.getLogger(__name__)

BEST_EVENT_MIN_INTERVAL = 60.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: TuningStudyStatus
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class JobState:
    name: str
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None


PhaseName = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]


@dataclass(frozen=True)
class Phase:
    phase: PhaseName
    reason: str
    message: str


@dataclass
class StatusDraft:
    """The status being rebuilt in one reconcile; conditions carry its generation."""

    status: TuningStudyStatus
    generation: int | None

    def set(self, type_: ConditionType, ok: bool | None, reason: str, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_, ok, reason, message, self.generation
        )


@dataclass(frozen=True)
class StorageRef:
    """Where the URL came from; `copy_from_default` means the pods need a copied Secret."""

    secret: str
    key: str
    url: str
    copy_from_default: bool


class StorageProblem(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def goal_reached(goal: float | None, direction: Direction, best: float | None) -> bool:
    if goal is None or best is None:
        return False
    return best >= goal if direction == Direction.MAXIMIZE else best <= goal


def decide_phase(
    study: TuningStudy,
    summary: StudySummary,
    job: JobState | None,
    now: datetime,
    start: datetime,
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
    if job is None or job.ready == 0:
        return Phase("Pending", Reason.WORKERS_PENDING, "Waiting for worker pods to start")
    return Phase("Running", Reason.RUNNING, f"{job.ready} workers running")


def _job_state(job: dict[str, Any]) -> JobState:
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
    )


def _termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The most recent worker error, as the kubelet copied it into the pod status."""
    messages = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") and term.get("message"):
                messages.append((str(term.get("finishedAt") or ""), str(term["message"]).strip()))
    if not messages:
        return None
    last_line: str = sorted(messages)[-1][1].splitlines()[-1]
    return last_line[:500]


class Reconciler:
    def __init__(self, cluster: Cluster, stores: StoreRegistry, settings: OperatorSettings) -> None:
        self.cluster = cluster
        self.stores = stores
        self.settings = settings
        self._last_best: dict[str, tuple[int, float]] = {}

    # ------------------------------------------------------------------ storage

    def resolve_storage(self, study: TuningStudy) -> StorageRef:
        namespace = study.metadata.namespace
        if study.spec.storage is not None:
            ref = study.spec.storage.secret_ref
            url = self._read_secret(namespace, ref.name, ref.key)
            return StorageRef(ref.name, ref.key, url, copy_from_default=False)
        default = self.settings.default_storage
        if default is None:
            raise StorageProblem(
                Reason.NO_STORAGE_CONFIGURED,
                "spec.storage is unset and the operator has no default storage; set "
                "spec.storage.secretRef to a Secret holding a postgresql+psycopg2:// URL",
            )
        url = self._read_secret(default.namespace, default.name, default.key)
        return StorageRef(f"{study.metadata.name}-storage", default.key, url, True)

    def _read_secret(self, namespace: str, name: str, key: str) -> str:
        try:
            value = self.cluster.read_secret_value(namespace, name, key)
        except ApiException as exc:
            if exc.status in (403, 404):
                raise StorageProblem(
                    Reason.SECRET_NOT_FOUND,
                    f"Secret {name} not found in namespace {namespace}; create it with key "
                    f"{key!r} holding the storage URL",
                ) from None
            raise
        if not value:
            raise StorageProblem(
                Reason.SECRET_KEY_MISSING,
                f"Secret {name} in namespace {namespace} has no key {key!r}; set "
                "spec.storage.secretRef.key or add the key",
            )
        return value

    # ------------------------------------------------------------------ main loop

    def reconcile(self, study: TuningStudy, now: datetime | None = None) -> Outcome:
        now = now or datetime.now(UTC)
        generation = study.metadata.generation
        draft = StatusDraft(study.status.model_copy(deep=True), generation)
        status = draft.status
        status.study_name = study.study_name
        status.optuna_version = optuna.__version__
        status.operator_version = OPERATOR_VERSION
        events: list[Event] = []

        try:
            storage = self.resolve_storage(study)
            handle = self.stores.ensure_study(
                storage.url,
                study.study_name,
                list(study.spec.directions),
                study.spec.metric_names,
                study.spec.enqueue_trials,
                {
                    "generation": generation,
                    "operator_version": OPERATOR_VERSION,
                    "optuna_version": optuna.__version__,
                },
            )
            summary = self.stores.summarize(storage.url, handle)
        except (StorageProblem, StorageError, DirectionsMismatchError) as exc:
            reason, message = _storage_failure(exc)
            draft.set(ConditionType.STORAGE_READY, False, reason, message)
            if status.phase is None:
                status.phase = "Pending"
            status.observed_generation = generation
            if _changed_reason(study.status, ConditionType.STORAGE_READY, reason):
                events.append(Event("Warning", reason, message))
            return Outcome(status, events)

        if handle.created:
            events.append(
                Event("Normal", Reason.STUDY_CREATED, f"Created Optuna study {handle.name}")
            )
        draft.set(
            ConditionType.STORAGE_READY,
            True,
            Reason.STUDY_READY,
            f"Optuna study {handle.name} is ready",
        )
        status.start_time = status.start_time or handle.start_time

        ctx = self._child_context(study, storage, handle)
        job = self._reconcile_workers(study, ctx, storage, handle, summary, now, events)
        if summary.running and (job is None or job.active == 0):
            # Trials of killed workers stay RUNNING until someone fails them; the next
            # refresh shows them failed and their parameters queued again.
            try:
                self.stores.fail_stale_trials(
                    storage.url, handle.name, study.spec.workers.heartbeat_interval_seconds
                )
            except StorageError as exc:  # the next refresh tries again
                log.warning("Could not fail stale trials of %s: %s", handle.name, exc)
        phase = decide_phase(study, summary, job, now, handle.start_time)
        self._reconcile_dashboard(study, ctx, draft, events)
        self._write_progress(study, status, summary, job)
        self._write_phase(study, draft, phase, events, storage, job)
        self._best_trial_event(study, summary, events)
        status.observed_generation = generation
        return Outcome(status, events)

    # ------------------------------------------------------------------ children

    def _child_context(
        self, study: TuningStudy, storage: StorageRef, handle: StudyHandle
    ) -> manifests.ChildContext:
        timeout = study.spec.budget.timeout_seconds
        return manifests.ChildContext(
            storage_secret=storage.secret,
            storage_key=storage.key,
            worker_image=self.settings.worker_image,
            dashboard_image=self.settings.dashboard_image,
            deadline=handle.start_time + timedelta(seconds=timeout) if timeout else None,
        )

    def _reconcile_workers(
        self,
        study: TuningStudy,
        ctx: manifests.ChildContext,
        storage: StorageRef,
        handle: StudyHandle,
        summary: StudySummary,
        now: datetime,
        events: list[Event],
    ) -> JobState | None:
        ns = study.metadata.namespace
        if storage.copy_from_default:
            self.cluster.apply(manifests.storage_secret_copy(study, storage.key, storage.url))
        desired = manifests.worker_job(study, ctx)
        desired_name = desired["metadata"]["name"]
        selector = (
            f"{manifests.STUDY_LABEL}={study.metadata.name},app.kubernetes.io/component=worker"
        )
        current: dict[str, Any] | None = None
        for job in self.cluster.list_objects("Job", ns, selector):
            if job["metadata"]["name"] == desired_name and not job["metadata"].get(
                "deletionTimestamp"
            ):
                current = job
            elif not job["metadata"].get("deletionTimestamp"):
                # The pod template changed (objective, image...): old workers make way.
                self.cluster.delete("Job", ns, job["metadata"]["name"])
                events.append(
                    Event(
                        "Normal",
                        "ReplacingWorkers",
                        f"Deleted Job {job['metadata']['name']}: the worker template changed",
                    )
                )
        state = _job_state(current) if current else None
        provisional = decide_phase(study, summary, state, now, handle.start_time)
        if state is not None and state.failed_reason:
            pods = self.cluster.list_pods(ns, f"batch.kubernetes.io/job-name={state.name}")
            message = _termination_message(pods) or state.failed_message
            return JobState(**{**state.__dict__, "failed_message": message})
        if provisional.phase in ("Succeeded", "Failed") and (state is None or state.active == 0):
            return state  # bounded work is done: no new workers
        if state is not None and state.complete:
            # Workers exited but the study is not done (e.g. the budget was raised).
            self.cluster.delete("Job", ns, state.name)
            events.append(
                Event("Normal", "RestartingWorkers", f"Deleted completed Job {state.name}")
            )
            return None
        applied = self.cluster.apply(desired)
        if current is None:
            events.append(Event("Normal", "CreatedJob", f"Created Job {desired_name}"))
        return _job_state(applied)

    def _reconcile_dashboard(
        self,
        study: TuningStudy,
        ctx: manifests.ChildContext,
        draft: StatusDraft,
        events: list[Event],
    ) -> None:
        ns, name = study.metadata.namespace, manifests.dashboard_name(study)
        if not study.spec.dashboard.enabled:
            self.cluster.delete("Deployment", ns, name)
            self.cluster.delete("Service", ns, name)
            draft.status.dashboard = None
            draft.set(
                ConditionType.DASHBOARD_AVAILABLE,
                False,
                Reason.DASHBOARD_DISABLED,
                "spec.dashboard.enabled is false",
            )
            return
        existed = self.cluster.get("Deployment", ns, name) is not None
        deployment = self.cluster.apply(manifests.dashboard_deployment(study, ctx))
        self.cluster.apply(manifests.dashboard_service(study))
        if not existed:
            events.append(
                Event("Normal", "CreatedDashboard", f"Created Deployment and Service {name}")
            )
        url = f"http://{name}.{ns}.svc:{manifests.DASHBOARD_PORT}"
        draft.status.dashboard = DashboardStatus(service=name, url=url)
        available = ((deployment.get("status") or {}).get("availableReplicas") or 0) > 0
        if available:
            draft.set(
                ConditionType.DASHBOARD_AVAILABLE,
                True,
                Reason.DASHBOARD_READY,
                f"Dashboard at {url} (kubectl port-forward svc/{name} 8080)",
            )
        else:
            draft.set(
                ConditionType.DASHBOARD_AVAILABLE,
                False,
                Reason.DASHBOARD_PENDING,
                f"Waiting for Deployment {name} to become available",
            )

    # ------------------------------------------------------------------ status

    @staticmethod
    def _write_progress(
        study: TuningStudy, status: TuningStudyStatus, summary: StudySummary, job: JobState | None
    ) -> None:
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

    def _write_phase(
        self,
        study: TuningStudy,
        draft: StatusDraft,
        phase: Phase,
        events: list[Event],
        storage: StorageRef,
        job: JobState | None,
    ) -> None:
        status = draft.status
        previous = study.status.phase
        status.phase = phase.phase
        draft.set(
            ConditionType.SUSPENDED,
            study.spec.suspend,
            Reason.SUSPENDED if study.spec.suspend else Reason.RUNNING,
            "spec.suspend is true" if study.spec.suspend else "Workers may run",
        )
        running = job is not None and job.ready > 0
        draft.set(
            ConditionType.WORKERS_READY,
            running,
            Reason.WORKERS_RUNNING
            if running
            else Reason.WORKERS_STOPPED
            if phase.phase in ("Succeeded", "Failed", "Suspended")
            else Reason.WORKERS_PENDING,
            f"{job.ready if job else 0} of {study.spec.workers.parallelism} workers ready",
        )
        succeeded, failed = phase.phase == "Succeeded", phase.phase == "Failed"
        draft.set(
            ConditionType.SUCCEEDED,
            succeeded,
            phase.reason if succeeded else Reason.RUNNING,
            phase.message if succeeded else "The study has not finished",
        )
        draft.set(
            ConditionType.FAILED,
            failed,
            phase.reason if failed else Reason.RUNNING,
            phase.message if failed else "No failure",
        )
        if phase.phase in ("Succeeded", "Failed"):
            status.completion_time = status.completion_time or datetime.now(UTC)
        else:
            status.completion_time = None
        if phase.phase != previous and phase.phase in ("Succeeded", "Failed"):
            events.append(Event("Normal" if succeeded else "Warning", phase.phase, phase.message))
            if succeeded and status.param_importances is None:
                status.param_importances = self._importances(storage, study)

    def _importances(self, storage: StorageRef, study: TuningStudy) -> dict[str, float] | None:
        if len(study.spec.directions) != 1:
            return None
        try:
            return self.stores.param_importances(storage.url, study.study_name) or None
        except Exception as exc:  # importance is a courtesy; never fail the study for it
            log.warning(
                "Could not compute parameter importances for %s: %s",
                study.study_name,
                type(exc).__name__,
            )
            return None

    def _best_trial_event(
        self, study: TuningStudy, summary: StudySummary, events: list[Event]
    ) -> None:
        best = summary.best
        if best is None or len(study.spec.directions) != 1:
            return
        key = study.metadata.uid or study.study_name
        last = self._last_best.get(key)
        now = time.monotonic()
        if last is not None and (last[0] == best.number or now - last[1] < BEST_EVENT_MIN_INTERVAL):
            return
        self._last_best[key] = (best.number, now)
        events.append(
            Event(
                "Normal",
                "NewBestTrial",
                f"Trial {best.number} is the best so far: {best.values[0]:.6g}",
            )
        )

    # ------------------------------------------------------------------ deletion

    def delete_study(self, study: TuningStudy) -> bool:
        storage = self.resolve_storage(study)
        return self.stores.delete_study(storage.url, study.study_name)


def _storage_failure(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, StorageProblem):
        return exc.reason, exc.message
    if isinstance(exc, DirectionsMismatchError):
        return Reason.DIRECTIONS_MISMATCH, str(exc)
    return Reason.STORAGE_UNREACHABLE, f"Cannot use the storage: {exc}"


def _changed_reason(status: TuningStudyStatus, type_: str, reason: str) -> bool:
    old = next((c for c in status.conditions if c.type == type_), None)
    return old is None or old.reason != reason or old.status != "False"
