"""Step 3, decide: a pure function of the spec and the observations says the study's phase,
what each child should do and when to look again (unit-tested without a cluster).

`_phase` chooses the phase from the budget, the database and the worker Job;
`settled_phase` amends it with what only act can learn; status.py writes the one settled
here. The stopping rules themselves are
lifecycle/stopping.py's, shared with the worker; observe applies them once
(`Observed.assessment`) and decide reads the verdict.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from optuna_operator.api import API_VERSION, KIND, PhaseName, StopReason, TuningStudy
from optuna_operator.lifecycle.conditions import Reason
from optuna_operator.lifecycle.stopping import FINISHED_PHASES, Assessment, assess
from optuna_operator.reconcile.model import (
    Acted,
    ChildAction,
    JobAction,
    JobState,
    Observed,
    Phase,
    Plan,
    applied_hash,
    owner_references,
)
from optuna_operator.storage.study_store import StudySummary

__all__ = [
    "PENDING_WORKER_REASONS",
    "child_action",
    "decide",
    "decide_phase",
    "namespace_owners",
    "owned_dashboard",
    "settled_phase",
    "study_owner_reference",
    "with_owners",
]

# The Succeeded condition's reason for each budget that ends a study.
_DONE_REASONS = {
    StopReason.BUDGET: Reason.TRIAL_BUDGET_REACHED,
    StopReason.GOAL: Reason.GOAL_REACHED,
    StopReason.TIME: Reason.TIME_BUDGET_REACHED,
    StopReason.DEADLINE: Reason.DEADLINE_REACHED,
}


def _done_message(study: TuningStudy, summary: StudySummary, seen: Assessment) -> str:
    budget, best = study.spec.budget, summary.best
    if seen.stop == StopReason.BUDGET:
        # Copies that do not count raised the budget the finished count is held against.
        own = summary.finished - ((seen.budget.trials or 0) - (budget.trials or 0))
        return f"{own} of {budget.trials} trials finished"
    if seen.stop == StopReason.GOAL and best is not None:
        return f"Trial {best.number} reached the goal {budget.goal} with {best.values[0]}"
    if seen.stop == StopReason.TIME:
        return f"The time budget of {budget.timeout_seconds}s of running workers was used"
    return f"The deadline {budget.deadline} passed"


def decide_phase(
    study: TuningStudy,
    summary: StudySummary,
    job: JobState | None,
    now: datetime,
    queue: str | None = None,
    copied: int = 0,
) -> Phase:
    """The study's phase from its budget, the database and the worker Job; `copied`:
    trials warm start copied in."""
    seen = assess(study.spec, study.status, summary, now, copied=copied)
    return _phase(study, summary, job, seen, queue)


def _phase(
    study: TuningStudy,
    summary: StudySummary,
    job: JobState | None,
    seen: Assessment,
    queue: str | None,
) -> Phase:
    stop = seen.stop
    if stop == StopReason.FAILURES:
        detail = f"; last error: {summary.last_error}" if summary.last_error else ""
        return Phase(
            PhaseName.FAILED,
            Reason.TOO_MANY_FAILED_TRIALS,
            f"{summary.failed_by_objective} trials failed, more than budget.maxFailedTrials "
            f"({study.spec.budget.max_failed_trials}){detail}",
            ended_by=stop,
        )
    if job is not None and job.failed_reason:
        return Phase(
            PhaseName.FAILED,
            Reason.JOB_FAILED,
            f"Worker Job {job.name} failed ({job.failed_reason}): {job.failed_message}",
        )
    if stop is not None:
        message = _done_message(study, summary, seen)
        if job is not None and job.active > 0 and not study.spec.suspend:
            return Phase(PhaseName.RUNNING, Reason.RUNNING, f"{message}; waiting for workers")
        return Phase(PhaseName.SUCCEEDED, _DONE_REASONS[stop], message, ended_by=stop)
    if study.spec.suspend:
        return Phase(PhaseName.SUSPENDED, Reason.SUSPENDED, "spec.suspend is true: no workers")
    if queue is not None and job is not None and job.suspended:
        return Phase(
            PhaseName.QUEUED,
            Reason.WAITING_FOR_ADMISSION,
            f"The worker Job waits for admission by Kueue in LocalQueue {queue}",
        )
    if job is not None and job.complete and not _slot_free(seen, summary):
        return Phase(
            PhaseName.RUNNING,
            Reason.RUNNING,
            f"{summary.running} running trials hold the last slots of budget.trials and their "
            "workers are gone: the stale-trial scan fails and retries them",
        )
    if job is None or job.ready == 0:
        return Phase(PhaseName.PENDING, Reason.WORKERS_PENDING, "Waiting for worker pods to start")
    return Phase(PhaseName.RUNNING, Reason.RUNNING, f"{job.ready} workers running")


def _slot_free(seen: Assessment, summary: StudySummary) -> bool:
    """Whether a new worker could get a trial: no trial budget, a trial waiting (a retry),
    or fewer running + finished trials than the budget (warm-start copies as it counts)."""
    trials = seen.budget.trials
    return trials is None or summary.waiting > 0 or summary.running + summary.finished < trials


# WorkersReady reasons that also say why a Pending study has no workers yet.
PENDING_WORKER_REASONS = (Reason.WORKERS_CRASHING, Reason.WORKER_PODS_REFUSED)


def settled_phase(
    study: TuningStudy, observed: Observed, acted: Acted, planned: Phase
) -> tuple[Phase, tuple[str, str]]:
    """The planned phase once act has run, and WorkersReady's reason and message. Only act
    can learn three things: the API server refused a child (the study fails), Kueue says
    why a queued Job waits (its words replace the plan's), and the Job's pods crash or are
    refused (a Pending study says so). Decided here, beside `_phase`, so that every phase
    the status shows is chosen in this file."""
    phase = planned
    if acted.rejected is not None:
        phase = Phase(PhaseName.FAILED, *acted.rejected)
    elif phase.phase == PhaseName.QUEUED and observed.admission is not None:
        phase = replace(phase, message=observed.admission.sentence())
    workers = _workers_condition(study, observed, acted, phase)
    if phase.phase == PhaseName.PENDING and workers[0] in PENDING_WORKER_REASONS:
        phase = Phase(PhaseName.PENDING, *workers)
    return phase, workers


def _workers_condition(
    study: TuningStudy, observed: Observed, acted: Acted, phase: Phase
) -> tuple[str, str]:
    """WorkersReady's reason and message: the first that applies, from a refused child to
    crashing pods."""
    job = acted.job
    ready = job.ready if job else 0
    if acted.rejected is not None:
        return acted.rejected
    if ready > 0:
        return Reason.WORKERS_RUNNING, f"{ready} of {study.spec.workers.parallelism} workers ready"
    if phase.phase in (*FINISHED_PHASES, PhaseName.SUSPENDED):
        return Reason.WORKERS_STOPPED, f"0 of {study.spec.workers.parallelism} workers ready"
    if phase.phase == PhaseName.QUEUED:
        return phase.reason, phase.message
    if observed.pods_refused is not None:
        return (
            Reason.WORKER_PODS_REFUSED,
            f"The Job cannot create worker pods: {observed.pods_refused}",
        )
    if job is not None and job.failed > 0:
        last = f"; last: {observed.workers_message}" if observed.workers_message else ""
        return (
            Reason.WORKERS_CRASHING,
            f"{job.failed} worker pods failed and are restarted by the Job{last}",
        )
    return Reason.WORKERS_PENDING, f"0 of {study.spec.workers.parallelism} workers ready"


def child_action(current: dict[str, Any] | None, desired: list[dict[str, Any]]) -> ChildAction:
    """Apply when what should exist (`desired`, its first object carrying the digest)
    differs from what was last applied to `current`, or has other owners; delete what
    should not exist."""
    if not desired:
        return "delete" if current is not None else "none"
    changed = applied_hash(current) != applied_hash(desired[0])
    return "apply" if changed or _owner_uids(current) != _owner_uids(desired[0]) else "none"


def _owner_uids(obj: dict[str, Any] | None) -> list[str]:
    return sorted(str(ref.get("uid")) for ref in owner_references(obj))


def study_owner_reference(uid: str, name: str) -> dict[str, Any]:
    """A reference from a namespace's dashboard to one study it serves: not its controller,
    so the dashboard goes (garbage collection) only when every study it serves is gone."""
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid}


def namespace_owners(current: dict[str, Any] | None, study: TuningStudy, wants: bool) -> list[Any]:
    """The namespace dashboard's owner references once `study` joined (wants) or left it:
    the others stay as they are (garbage collection drops those of deleted studies)."""
    uid = study.metadata.uid or ""
    others = [
        study_owner_reference(str(r["uid"]), str(r["name"]))
        for r in owner_references(current)
        if r.get("kind") == KIND and r.get("uid") != uid
    ]
    if wants:
        others.append(study_owner_reference(uid, study.metadata.name))
    return others


def with_owners(objects: list[dict[str, Any]], owners: list[Any]) -> list[dict[str, Any]]:
    """The objects owned by `owners`, sorted by uid: the same set of studies always gives
    the same objects, whichever of them reconciles."""
    refs = sorted(owners, key=lambda ref: str(ref["uid"]))
    return [{**obj, "metadata": {**obj["metadata"], "ownerReferences": refs}} for obj in objects]


def owned_dashboard(
    study: TuningStudy, objects: list[dict[str, Any]], current: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The dashboard that serves the study as this reconcile leaves it. The namespace's
    (default storage) is owned by every study that wants it: `current`'s other owners, and
    this study when it wants one; empty when none does, so the last one out removes it. A
    study's own dashboard is controlled by it already (children/manifests.py)."""
    if study.spec.storage is not None:
        return objects
    owners = namespace_owners(current, study, study.spec.dashboard.enabled)
    return with_owners(objects, owners) if owners else []


def _job_action(
    study: TuningStudy, observed: Observed, seen: Assessment, finished: bool
) -> JobAction:
    """What to do with the worker Job.

    A queued Job is created and never patched: Kueue owns `suspend` and what it injects on
    admission, and every re-apply would fight it. spec.suspend and spec changes delete it
    instead (deletion is how Kueue releases a Job's quota at once); the next pass creates
    the new one, suspended, at the back of its queue."""
    job = observed.job
    queued = observed.queue is not None
    changed = job is not None and job.applied_hash != applied_hash(observed.desired.job)
    if job is not None and job.failed_reason:
        return "none"  # the failure is the result; a spec change makes a new template
    if finished and (job is None or job.active == 0):
        # Bounded work is done: no new workers, and no queued Job left to be admitted later.
        return "stop" if queued and job is not None and job.suspended else "none"
    if job is not None and job.complete:
        # Workers exited but the study is not done (e.g. budget raised). Workers also leave
        # when live trials hold every slot: while those trials hold them, new workers would
        # only leave again; the stale-trial scan frees a dead worker's slot, then they start.
        return "restart" if _slot_free(seen, observed.summary) else "none"
    if queued and study.spec.suspend:
        return "stop" if job is not None else "none"
    if job is not None and changed and (queued or job.queue is not None):
        # Also a Job that had a queue and should have none: an apply would leave the label
        # (the operator created it, it never applied it) and fight Kueue over `suspend`.
        return "requeue"
    if job is None or changed:
        return "apply"
    return "none"


def _next_look(
    study: TuningStudy, observed: Observed, seen: Assessment, phase: Phase, interval: float
) -> float | None:
    """Seconds until the next periodic reconcile. Only while something moves: workers run
    or are expected, or trials of killed workers still need failing. Idle studies wake
    only on changes (a child created or deleted wakes its study through the watch). The
    time budget is checked when it runs out, not one interval later."""
    job = observed.job
    workers_gone = job is None or job.active == 0
    moving = (PhaseName.RUNNING, PhaseName.PENDING, PhaseName.QUEUED)
    if phase.phase not in moving and not (observed.summary.running and workers_gone):
        return None
    timeout = study.spec.budget.timeout_seconds
    if timeout is None or study.status.active_since is None:
        return interval
    return max(1.0, min(interval, timeout - seen.active))


def decide(study: TuningStudy, observed: Observed, interval: float) -> Plan:
    """The phase, what to do with each child, and when to look again. Pure: unit-tested
    without a cluster. Called only when the storage and the study are usable."""
    job, seen = observed.job, observed.assessment
    assert seen is not None, "observe assesses the budgets before decide runs"
    phase = _phase(study, observed.summary, job, seen, observed.queue)
    workers_gone = job is None or job.active == 0
    return Plan(
        phase=phase,
        job=_job_action(study, observed, seen, phase.phase in FINISHED_PHASES),
        delete_jobs=observed.stale_jobs,
        dashboard=child_action(
            observed.dashboard,
            owned_dashboard(study, observed.desired.dashboard, observed.dashboard),
        ),
        delete_old_dashboard=observed.old_dashboard is not None,
        fail_stale_trials=bool(observed.summary.running) and workers_gone,
        # Only the operator sees active time: running workers are told through the database.
        stop_workers=seen.stop == StopReason.TIME and not workers_gone,
        importances=phase.phase == PhaseName.SUCCEEDED
        and study.status.param_importances_trials != observed.summary.finished
        and len(study.spec.directions) == 1,
        requeue_after=_next_look(study, observed, seen, phase, interval),
    )
