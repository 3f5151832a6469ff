"""What the reconcile steps hand each other: observations, the plan, what was done,
the outcome. Plain frozen dataclasses, and the reader of a worker Job they are built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from optuna_operator.api import StopReason, TuningStudyStatus
from optuna_operator.children import manifests
from optuna_operator.children.applied import APPLIED_HASH_ANNOTATION
from optuna_operator.children.desired import Desired
from optuna_operator.lifecycle.conditions import ReasonedError
from optuna_operator.lifecycle.stopping import Assessment, PhaseName
from optuna_operator.reconcile import kueue
from optuna_operator.storage.study_store import StudyHandle, StudySummary
from optuna_operator.storage.tenancy import TenantCredentials

__all__ = [
    "Acted",
    "ChildAction",
    "ChildConflict",
    "Children",
    "Event",
    "JobAction",
    "JobState",
    "Observed",
    "Outcome",
    "Phase",
    "PhaseName",
    "Plan",
    "Sent",
    "StorageProblem",
    "StorageRef",
    "applied_hash",
    "controller_uid",
    "owner_references",
]


# requeue/stop delete a queued (Kueue) Job instead of patching it: see `decide`.
JobAction = Literal["none", "apply", "restart", "requeue", "stop"]
# What to do with a child whose manifests are compared by digest (the dashboard).
ChildAction = Literal["none", "apply", "delete"]


def applied_hash(obj: dict[str, Any] | None) -> str | None:
    """The digest the operator last applied to `obj` (children/applied.py), if any."""
    if obj is None:
        return None
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(APPLIED_HASH_ANNOTATION)
    return str(value) if value is not None else None


def owner_references(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The object's owner references (none for a missing object)."""
    return list(((obj or {}).get("metadata") or {}).get("ownerReferences") or [])


def controller_uid(obj: dict[str, Any] | None) -> str | None:
    """The uid of the object's controlling owner, if any."""
    for ref in owner_references(obj):
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


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

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> JobState:
        """The fields of a Job object the reconcile acts on."""
        status = job.get("status") or {}
        conditions = {
            c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"
        }
        failed = conditions.get("Failed")
        return cls(
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


@dataclass(frozen=True)
class Phase:
    """The study's phase with the reason and message its conditions carry."""

    phase: PhaseName
    reason: str
    message: str
    # Which budget ended the study (status.reason); None while it runs or when it failed
    # for another cause.
    ended_by: StopReason | None = None


@dataclass(frozen=True)
class StorageRef:
    """The URL the operator connects with and the Secret the pods read it from; `tenant` is
    set when it is the namespace's own role (no spec.storage)."""

    secret: str
    key: str
    url: str
    tenant: TenantCredentials | None = None


class StorageProblem(ReasonedError):
    """The storage cannot be used for a reason the user can fix; shown as a condition."""


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
    # How far the study is through its budgets (lifecycle's rules), from the summary.
    assessment: Assessment | None = None
    job: JobState | None = None  # the Job with the desired template, if any
    stale_jobs: tuple[str, ...] = ()  # worker Jobs of an older template
    # The dashboard Deployment that serves the study (the namespace's with the default
    # storage), and a study's own one left from before 0.2 that must go.
    dashboard: dict[str, Any] | None = None
    old_dashboard: dict[str, Any] | None = None
    workers_message: str | None = None  # why worker pods last failed, when some did
    pods_refused: str | None = None  # why the Job controller cannot create worker pods
    # The children as they should be, each carrying APPLIED_HASH_ANNOTATION.
    desired: Desired = field(default_factory=Desired)
    queue: str | None = None  # Kueue LocalQueue of the worker Job
    admission: kueue.Admission | None = None  # read while a queued Job is suspended


@dataclass(frozen=True)
class Plan:
    """What the act step does, decided once."""

    phase: Phase
    job: JobAction = "none"
    delete_jobs: tuple[str, ...] = ()
    dashboard: ChildAction = "none"
    delete_old_dashboard: bool = False
    fail_stale_trials: bool = False
    # The time budget ran out while workers run: they are told through the database.
    stop_workers: bool = False
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
    """The result of one reconcile: the new status, events, and when to come back. Their
    messages are as built: the writer (sync.py) removes credentials, `storage_url`'s too,
    from everything it sends."""

    status: TuningStudyStatus
    events: list[Event] = field(default_factory=list)
    storage_url: str | None = None  # the URL the study's messages may quote
    requeue_after: float | None = None
    retry: bool = False  # something failed that a back-off retry may fix
    applied: tuple[dict[str, Any], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()


class ChildConflict(Exception):
    """An object with a child's name exists and is not this TuningStudy's: it is never
    taken over or deleted, and the status says whose it is."""

    @classmethod
    def about(cls, kind: str, name: str, current: dict[str, Any]) -> ChildConflict:
        """The conflict over `current`, with a message for the status."""
        owners = [
            f"{r.get('kind')} {r.get('name')}"
            for r in owner_references(current)
            if r.get("controller")
        ]
        held = f"is controlled by {owners[0]}" if owners else "was not created by this TuningStudy"
        return cls(
            f"{kind} {name} already exists and {held}; the operator does not take it over: "
            "delete or rename it"
        )


@dataclass(frozen=True)
class Sent:
    """The dashboard Deployment after sending (None: deleted or none), and what changed."""

    deployment: dict[str, Any] | None
    created: bool = False
    applied: tuple[dict[str, Any], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()
