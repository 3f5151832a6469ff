"""Condition types, reasons, and a pure `set_condition` (metav1.Condition semantics)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from optuna_operator.api import Condition

__all__ = [
    "ConditionType",
    "ConditionUpdate",
    "Reason",
    "ReasonedError",
    "find",
    "now_rfc3339",
    "set_condition",
    "set_conditions",
]


class ConditionType(StrEnum):
    STORAGE_READY = "StorageReady"
    WORKERS_READY = "WorkersReady"
    DASHBOARD_AVAILABLE = "DashboardAvailable"
    SUSPENDED = "Suspended"
    # Only for studies whose worker Job waits in a Kueue queue.
    WORKERS_ADMITTED = "WorkersAdmitted"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    # True while the budget cannot work as meant (advice.py); a Warning event goes with it.
    BUDGET_ADVICE = "BudgetAdvice"


class Reason(StrEnum):
    # storage
    STUDY_CREATED = "StudyCreated"
    STUDY_READY = "StudyReady"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    NO_STORAGE_CONFIGURED = "NoStorageConfigured"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    DIRECTIONS_MISMATCH = "DirectionsMismatch"
    WARM_START_FAILED = "WarmStartFailed"
    STUDY_NOT_OWNED = "StudyNotOwned"
    LEGACY_STUDY_NOT_MIGRATED = "LegacyStudyNotMigrated"
    SECRET_CONFLICT = "SecretConflict"
    TENANT_PROVISIONING_FAILED = "TenantProvisioningFailed"
    TENANT_ROLE_CONFLICT = "TenantRoleConflict"
    INVALID_SPEC = "InvalidSpec"
    # workers
    WORKERS_RUNNING = "WorkersRunning"
    WORKERS_PENDING = "WorkersPending"
    WORKERS_STOPPED = "WorkersStopped"
    WORKERS_CRASHING = "WorkersCrashing"
    WORKER_PODS_REFUSED = "WorkerPodsRefused"
    JOB_FAILED = "JobFailed"
    CHILD_REJECTED = "ChildRejected"
    # Kueue
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    ADMITTED = "Admitted"
    NO_WORKER_JOB = "NoWorkerJob"
    CHILD_CONFLICT = "ChildConflict"
    # dashboard
    DASHBOARD_READY = "DashboardReady"
    DASHBOARD_PENDING = "DashboardPending"
    DASHBOARD_DISABLED = "DashboardDisabled"
    DASHBOARD_NEEDS_READ_ONLY_SECRET = "DashboardNeedsReadOnlySecret"
    # lifecycle
    SUSPENDED = "SuspendedBySpec"
    RUNNING = "Running"
    TRIAL_BUDGET_REACHED = "TrialBudgetReached"
    TIME_BUDGET_REACHED = "TimeBudgetReached"
    DEADLINE_REACHED = "DeadlineReached"
    GOAL_REACHED = "GoalReached"
    TOO_MANY_FAILED_TRIALS = "TooManyFailedTrials"
    STUDY_DELETED = "StudyDeleted"
    STUDY_RETAINED = "StudyRetained"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: list[Condition], type_: str) -> Condition | None:
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
    old = find(conditions, type_)
    transition = (
        old.last_transition_time
        if old is not None and old.status == status_text
        else (now or now_rfc3339())
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


class ReasonedError(Exception):
    """An error a condition reports: a CamelCase reason and a sentence the user can act
    on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
