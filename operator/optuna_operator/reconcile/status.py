"""Step 5, status: pure functions derive the TuningStudy's status and the events to
record from the spec, the observations, the plan and what the act step did.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from optuna_operator.api import (
    PARETO_FRONT_LIMIT,
    Condition,
    DashboardStatus,
    PhaseName,
    TrialCounts,
    TuningStudy,
    TuningStudyStatus,
    WorkerCounts,
)
from optuna_operator.children import manifests
from optuna_operator.config import OPERATOR_VERSION
from optuna_operator.lifecycle.advice import Advice
from optuna_operator.lifecycle.conditions import ConditionType, Reason
from optuna_operator.reconcile import kueue
from optuna_operator.reconcile.decide import PENDING_WORKER_REASONS, settled_phase
from optuna_operator.reconcile.model import (
    Acted,
    Event,
    JobState,
    Observed,
    Phase,
    Plan,
    StorageProblem,
)
from optuna_operator.storage.study_store import (
    OPTUNA_VERSION,
    DirectionsMismatchError,
    NotOwnedError,
    StudyHandle,
    StudySummary,
    WarmStartError,
)

__all__ = [
    "ConditionUpdate",
    "build_status",
    "set_condition",
    "set_conditions",
    "storage_failure",
    "storage_failure_status",
]


def build_status(
    study: TuningStudy, observed: Observed, plan: Plan, acted: Acted
) -> tuple[TuningStudyStatus, list[Event]]:
    """The new status and the events that go with it. Pure."""
    generation = study.metadata.generation
    old = study.status
    status = old.model_copy(deep=True)
    status.study_name = study.study_name
    status.optuna_version = OPTUNA_VERSION
    status.operator_version = OPERATOR_VERSION
    status.observed_generation = generation

    # The conditions are set at the end, in the order they are decided, in one pass.
    updates: list[ConditionUpdate] = []

    def set_(type_: ConditionType, ok: bool | None, reason: str, message: str) -> None:
        updates.append((type_, ok, reason, message))

    handle, summary, seen = observed.handle, observed.summary, observed.assessment
    assert handle is not None and seen is not None
    dashboard = observed.desired.dashboard_name
    events: list[Event] = []
    if handle.created:
        events.append(Event("Normal", Reason.STUDY_CREATED, f"Created Optuna study {handle.name}"))
    set_(
        ConditionType.STORAGE_READY,
        True,
        Reason.STUDY_READY,
        f"Optuna study {handle.name} is ready",
    )
    status.start_time = status.start_time or handle.start_time
    events += _children_events(study, observed, plan, acted)
    _dashboard_status(study, dashboard, acted, set_, status, events)
    _progress(status, summary, acted.job, study.spec.budget.trials, _counted_copies(study, handle))
    _active_time(status, acted.job, observed.now, seen.active)
    events += _advice(study, seen.advice, set_)
    phase = _phase_conditions(study, observed, plan, acted, status, set_, events)
    status.reason = phase.ended_by
    events += _outcome(study, status, old, phase, acted, set_, observed.now)
    if acted.importances is not None:
        status.param_importances = acted.importances
        status.param_importances_trials = summary.finished
    best = summary.best
    previous_best = old.best_trial.number if old.best_trial else None
    if best is not None and len(study.spec.directions) == 1 and best.number != previous_best:
        message = f"Trial {best.number} is the best so far: {best.values[0]:.6g}"
        events.append(Event("Normal", "NewBestTrial", message))
    status.conditions = set_conditions(status.conditions, updates, generation)
    return status, events


def _advice(study: TuningStudy, advice: Advice | None, set_: Any) -> list[Event]:
    """The BudgetAdvice condition, and a Warning event when its advice is new."""
    if advice is None:
        set_(ConditionType.BUDGET_ADVICE, False, "BudgetFits", "No advice on the budget")
        return []
    new = _reason_changed(study.status, ConditionType.BUDGET_ADVICE, advice.reason)
    set_(ConditionType.BUDGET_ADVICE, True, advice.reason, advice.message)
    return [Event("Warning", advice.reason, advice.message)] if new else []


def _active_time(
    status: TuningStudyStatus, job: JobState | None, now: datetime, used: float
) -> None:
    """Count the time worker pods run (budget.timeoutSeconds): a run opens when the first
    worker is ready and closes into activeSeconds (`used`: the active time by `now`, as
    observe assessed it) when none is. Written only when a run opens or closes, so a
    refresh of a running study writes nothing new."""
    running = job is not None and job.ready > 0 and not job.suspended
    if running and status.active_since is None:
        status.active_since = now
        status.active_seconds = status.active_seconds or 0
    elif not running and status.active_since is not None:
        status.active_seconds, status.active_since = int(used), None


def _phase_conditions(
    study: TuningStudy,
    observed: Observed,
    plan: Plan,
    acted: Acted,
    status: TuningStudyStatus,
    set_: Any,
    events: list[Event],
) -> Phase:
    """The phase decide settles on once act has run, with the Suspended, Admitted and
    WorkersReady conditions, and a Warning when pending workers have a new reason."""
    phase, (workers_reason, workers_message) = settled_phase(study, observed, acted, plan.phase)
    job = acted.job
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
    set_(ConditionType.WORKERS_READY, ready > 0, workers_reason, workers_message)
    if phase.reason in PENDING_WORKER_REASONS and _reason_changed(
        study.status, ConditionType.WORKERS_READY, workers_reason, "False"
    ):
        events.append(Event("Warning", workers_reason, workers_message))
    return phase


def _outcome(
    study: TuningStudy,
    status: TuningStudyStatus,
    old: TuningStudyStatus,
    phase: Phase,
    acted: Acted,
    set_: Any,
    now: datetime,
) -> list[Event]:
    """Succeeded and Failed, the completion time, and the event of a phase just reached."""
    succeeded, failed = phase.phase == PhaseName.SUCCEEDED, phase.phase == PhaseName.FAILED
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
        status.completion_time = status.completion_time or now
    else:
        status.completion_time = None
    if phase.phase != old.phase and (succeeded or failed):
        return [Event("Normal" if succeeded else "Warning", phase.phase, phase.message)]
    if acted.rejected is not None and _reason_changed(old, ConditionType.FAILED, phase.reason):
        return [Event("Warning", phase.reason, phase.message)]
    return []


def _children_events(
    study: TuningStudy, observed: Observed, plan: Plan, acted: Acted
) -> list[Event]:
    """What the act step did to the worker Jobs, as events."""
    events = [
        Event("Normal", "ReplacingWorkers", f"Deleted Job {name}: the worker template changed")
        for name in plan.delete_jobs
    ]
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
    if acted.job_created and acted.job is not None:
        events.append(Event("Normal", "CreatedJob", f"Created Job {acted.job.name}"))
    return events


def _counted_copies(study: TuningStudy, handle: StudyHandle) -> tuple[int, int]:
    """(trials warm start copied in, how many of them are left out of the budget)."""
    warm = study.spec.warm_start
    return handle.copied, 0 if warm is None or warm.count_towards_budget else handle.copied


def _progress(
    status: TuningStudyStatus,
    summary: StudySummary,
    job: JobState | None,
    budget: int | None,
    copies: tuple[int, int] = (0, 0),
) -> None:
    """Trial counts, the best trial or Pareto front, and worker counts. Progress counts the
    trials the budget counts: warm-start copies only with countTowardsBudget."""
    copied, left_out = copies
    status.trials = TrialCounts(
        complete=summary.complete,
        pruned=summary.pruned,
        failed=summary.failed,
        running=summary.running,
        waiting=summary.waiting,
        budget=budget,
        copied=copied or None,
    )
    counted = summary.finished - left_out
    status.progress = f"{counted}/{budget}" if budget else str(counted)
    status.best_trial = summary.best
    status.pareto_front = summary.pareto_front[:PARETO_FRONT_LIMIT] or None
    status.workers = WorkerCounts(
        active=job.active if job else 0,
        succeeded=job.succeeded if job else 0,
        failed=job.failed if job else 0,
    )


def storage_failure_status(
    study: TuningStudy, reason: str, message: str
) -> tuple[TuningStudyStatus, list[Event]]:
    """Status when the storage or the study cannot be used: everything else is kept."""
    generation = study.metadata.generation
    events = []
    if _reason_changed(study.status, ConditionType.STORAGE_READY, reason, "False"):
        events.append(Event("Warning", reason, message))
    status = study.status.model_copy(deep=True)
    status.phase = status.phase or PhaseName.PENDING
    status.observed_generation = generation
    status.study_name = study.study_name
    status.conditions = set_conditions(
        status.conditions, [(ConditionType.STORAGE_READY, False, reason, message)], generation
    )
    return status, events


def _dashboard_status(
    study: TuningStudy,
    name: str,
    acted: Acted,
    set_: Any,
    status: TuningStudyStatus,
    events: list[Event],
) -> None:
    ns = study.metadata.namespace
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
    old = _find(status.conditions, type_)
    return old is None or old.reason != reason or old.status != expected_status


def storage_failure(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, StorageProblem):
        return exc.reason, exc.message
    if isinstance(exc, DirectionsMismatchError):
        return Reason.DIRECTIONS_MISMATCH, str(exc)
    if isinstance(exc, WarmStartError):
        return Reason.WARM_START_FAILED, str(exc)
    if isinstance(exc, NotOwnedError):
        return Reason.STUDY_NOT_OWNED, str(exc)
    return Reason.STORAGE_UNREACHABLE, f"Cannot use the storage: {exc}"


# ------------------------------------------------------------------ conditions
# How a condition is written (metav1.Condition semantics); the types and reasons are
# lifecycle/conditions.py's.


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[Condition]:
    """Return a new list with the condition set; the transition time moves only on a flip."""
    status_text: Literal["True", "False", "Unknown"] = (
        "Unknown" if status is None else ("True" if status else "False")
    )
    old = _find(conditions, type_)
    transition = (
        old.last_transition_time
        if old is not None and old.status == status_text
        else (now or _now_rfc3339())
    )
    new = Condition(
        type=type_,
        status=status_text,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]


# A condition to set: its type, status (None: Unknown), reason and message.
ConditionUpdate = tuple[str, bool | None, str, str]


def set_conditions(
    conditions: list[Condition],
    updates: Iterable[ConditionUpdate],
    generation: int | None,
    now: str | None = None,
) -> list[Condition]:
    """`set_condition` for each update in turn: a new list, the others left as they are."""
    for type_, status, reason, message in updates:
        conditions = set_condition(conditions, type_, status, reason, message, generation, now)
    return conditions
