"""The vocabulary of a study's conditions: their types and reasons, and the error that
carries a reason. How conditions are written (metav1.Condition semantics) is
reconcile/status.py's `set_condition`."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConditionType",
    "Reason",
    "ReasonedError",
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


class ReasonedError(Exception):
    """An error a condition reports: a CamelCase reason and a sentence the user can act
    on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
