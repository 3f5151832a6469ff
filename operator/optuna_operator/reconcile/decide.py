"""Step 2, decide: a pure function of the spec and the observations says what each child
should do and when to look again (unit-tested without a cluster).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from optuna_operator.api import TuningStudy
from optuna_operator.applied import applied_hash
from optuna_operator.conditions import Reason
from optuna_operator.dashboards import decide_dashboard
from optuna_operator.lifecycle import (
    FINISHED_PHASES,
    StopReason,
    goal_met,
    stop_reason,
    too_many_failures,
)
from optuna_operator.reconcile.model import JobAction, JobState, Observed, Phase, Plan
from optuna_operator.storage.study_store import StudySummary

__all__ = [
    "decide",
    "decide_phase",
]


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
    if too_many_failures(budget, summary.failed_by_objective):
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
    best = summary.best
    stop = stop_reason(
        budget,
        list(study.spec.directions),
        now,
        start + timedelta(seconds=budget.timeout_seconds) if budget.timeout_seconds else None,
        finished=lambda: summary.finished,
        goal_reached=lambda: (
            best is not None and goal_met(budget.goal, study.spec.directions[0], best.values[0])
        ),
    )
    done: tuple[Reason, str] | None = None
    if stop == StopReason.BUDGET:
        done = (
            Reason.TRIAL_BUDGET_REACHED,
            f"{summary.finished} of {budget.trials} trials finished",
        )
    elif stop == StopReason.GOAL and best is not None:
        done = (
            Reason.GOAL_REACHED,
            f"Trial {best.number} reached the goal {budget.goal} with {best.values[0]}",
        )
    elif stop == StopReason.DEADLINE:
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
    finished = phase.phase in FINISHED_PHASES
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
