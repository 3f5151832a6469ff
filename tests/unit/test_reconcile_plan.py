"""The reconcile's pure steps: `decide` (child actions, requeue) and `build_status`, and the
controller's work queue; no cluster, no database."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from optuna_operator.api import BestTrial, PhaseName, TuningStudy, TuningStudyStatus
from optuna_operator.children.applied import APPLIED_HASH_ANNOTATION
from optuna_operator.children.desired import Desired
from optuna_operator.lifecycle.stopping import assess
from optuna_operator.reconcile import (
    Acted,
    JobState,
    Observed,
    Phase,
    Plan,
    StorageRef,
    build_status,
    decide,
    termination_message,
)
from optuna_operator.reconcile.decide import settled_phase, study_owner_reference
from optuna_operator.reconcile.kueue import Admission
from optuna_operator.storage.study_store import StudyHandle, StudySummary
from optuna_operator.workqueue import WorkQueue

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HANDLE = StudyHandle(1, "ns.s", (), NOW, created=False)
STORAGE = StorageRef("s-storage", "url", "postgresql+psycopg2://u:p@h/db")
INTERVAL = 10.0


def study(**spec: Any) -> TuningStudy:
    body = {
        "directions": ["maximize"],
        "objective": {"function": "m:f"},
        "budget": {"trials": 10},
        "dashboard": {"enabled": False},
        # No startup trials: the BudgetAdvice of a 10-trial TPE study is tested on its own.
        "sampler": {"type": "Random"},
        **spec,
    }
    return TuningStudy.model_validate({"metadata": {"name": "s", "namespace": "ns"}, "spec": body})


def observed(
    summary: StudySummary | None = None,
    job: JobState | None = None,
    stale: tuple[str, ...] = (),
    dashboard: dict[str, Any] | None = None,
) -> Observed:
    return Observed(
        now=NOW,
        storage=STORAGE,
        handle=HANDLE,
        summary=summary or StudySummary(),
        job=job,
        stale_jobs=stale,
        dashboard=dashboard,
    )


def assessed(s: TuningStudy, o: Observed) -> Observed:
    """`o` as observe completes it: the budgets assessed and the children built."""
    hashed = {"metadata": {"annotations": {APPLIED_HASH_ANNOTATION: "job-hash"}}}
    # The namespace's dashboard (default storage), without owners: decide adds them.
    dashboard = {"metadata": {"annotations": {APPLIED_HASH_ANNOTATION: "dash-hash"}}}
    assessment = assess(s.spec, s.status, o.summary, o.now, copied=HANDLE.copied)
    return replace(o, assessment=assessment, desired=Desired(job=hashed, dashboard=[dashboard]))


def plan_for(s: TuningStudy, o: Observed) -> Plan:
    return decide(s, assessed(s, o), INTERVAL)


def running(**fields: Any) -> JobState:
    return JobState(
        **{"name": "s-workers-1", "active": 2, "ready": 2, "applied_hash": "job-hash", **fields}
    )


def test_a_study_without_workers_gets_a_job_and_a_refresh() -> None:
    plan = plan_for(study(), observed())
    assert (plan.job, plan.requeue_after, plan.phase.phase) == ("apply", INTERVAL, "Pending")


def test_an_unchanged_job_is_not_sent_again() -> None:
    plan = plan_for(study(), observed(StudySummary(complete=3), running()))
    assert (plan.job, plan.phase.phase, plan.requeue_after) == ("none", "Running", INTERVAL)


def test_a_changed_manifest_is_applied() -> None:
    plan = plan_for(study(), observed(job=running(applied_hash="old")))
    assert plan.job == "apply"


def test_jobs_of_an_older_template_are_deleted() -> None:
    plan = plan_for(study(), observed(job=running(), stale=("s-workers-0",)))
    assert plan.delete_jobs == ("s-workers-0",) and plan.job == "none"


def test_a_completed_job_of_an_unfinished_study_restarts() -> None:
    done = running(active=0, ready=0, succeeded=2, complete=True)
    plan = plan_for(study(), observed(StudySummary(complete=5), done))
    assert plan.job == "restart"


def test_workers_that_left_are_not_restarted_while_live_trials_hold_every_slot() -> None:
    left = running(active=0, ready=0, succeeded=2, complete=True)
    held = observed(StudySummary(complete=9, running=1), left)
    plan = plan_for(study(), held)
    assert (plan.job, plan.phase.phase, plan.requeue_after) == ("none", "Running", INTERVAL)
    assert "hold the last slots" in plan.phase.message and plan.fail_stale_trials
    # The stale scan failed that trial and enqueued its retry: new workers get a slot.
    retried = observed(StudySummary(complete=9, failed=1, waiting=1), left)
    assert plan_for(study(), retried).job == "restart"


def test_a_finished_study_gets_no_workers_and_no_refresh() -> None:
    done = running(active=0, ready=0, succeeded=2, complete=True)
    plan = plan_for(study(), observed(StudySummary(complete=10), done))
    assert (plan.job, plan.phase.phase, plan.requeue_after) == ("none", "Succeeded", None)
    assert plan.importances


def test_importances_are_computed_again_when_a_study_finishes_with_more_trials() -> None:
    done = running(active=0, ready=0, succeeded=2, complete=True)
    finished = study().model_copy(
        update={
            "status": TuningStudyStatus(param_importances={"x": 1.0}, param_importances_trials=10)
        }
    )
    assert not plan_for(finished, observed(StudySummary(complete=10), done)).importances
    # budget.trials raised from 10 to 20, and the study finished again
    more = finished.model_copy(update={"spec": study(budget={"trials": 20}).spec})
    plan = plan_for(more, observed(StudySummary(complete=20), done))
    assert plan.importances
    status, _ = build_status(
        more,
        assessed(more, observed(StudySummary(complete=20), done)),
        plan,
        Acted(job=done, importances={"x": 0.5}),
    )
    assert (status.param_importances, status.param_importances_trials) == ({"x": 0.5}, 20)


def test_a_finished_study_waits_for_running_workers() -> None:
    plan = plan_for(study(), observed(StudySummary(complete=10), running()))
    assert (plan.phase.phase, plan.requeue_after) == ("Running", INTERVAL)


def test_a_failed_job_is_left_as_the_result() -> None:
    failed = running(active=0, ready=0, failed_reason="PodFailurePolicy", failed_message="x")
    plan = plan_for(study(), observed(job=failed))
    assert (plan.job, plan.phase.phase, plan.requeue_after) == ("none", "Failed", None)


def test_a_suspended_study_is_idle_once_its_trials_are_settled() -> None:
    suspended = running(active=0, ready=0)
    plan = plan_for(study(suspend=True), observed(StudySummary(complete=3), suspended))
    assert (plan.phase.phase, plan.requeue_after, plan.fail_stale_trials) == (
        "Suspended",
        None,
        False,
    )
    stale = observed(StudySummary(complete=3, running=1), suspended)
    plan = plan_for(study(suspend=True), stale)
    assert plan.fail_stale_trials and plan.requeue_after == INTERVAL


def test_dashboard_applied_when_missing_and_deleted_when_disabled() -> None:
    enabled = study(dashboard={"enabled": True})
    assert plan_for(enabled, observed()).dashboard == "apply"
    current = {
        "metadata": {
            "annotations": {"optuna-operator.io/applied-hash": "dash-hash"},
            "ownerReferences": [study_owner_reference("", "s")],  # this study's (no uid here)
        }
    }
    assert plan_for(enabled, observed(dashboard=current)).dashboard == "none"
    assert plan_for(study(), observed(dashboard=current)).dashboard == "delete"
    assert plan_for(study(), observed()).dashboard == "none"


def test_a_dashboard_of_its_own_from_before_0_2_goes() -> None:
    old = {"metadata": {"name": "s-dashboard"}}
    assert plan_for(study(), replace(observed(), old_dashboard=old)).delete_old_dashboard
    assert not plan_for(study(), observed()).delete_old_dashboard


def test_a_refused_job_fails_the_study_with_the_api_servers_reason() -> None:
    s = study()
    o = observed()
    message = "The API server refused Job s-workers-1: spec.template: Invalid value"
    status, events = build_status(
        s, assessed(s, o), plan_for(s, o), Acted(job=None, rejected=("ChildRejected", message))
    )
    assert status.phase == "Failed"
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert (failed.reason, failed.message) == ("ChildRejected", message)
    workers = next(c for c in status.conditions if c.type == "WorkersReady")
    assert workers.status == "False" and workers.reason == "ChildRejected"
    assert [(e.type, e.reason) for e in events] == [("Warning", "Failed")]


QUEUED = Phase(PhaseName.QUEUED, "WaitingForAdmission", "The worker Job waits in LocalQueue q")
PENDING = Phase(PhaseName.PENDING, "WorkersPending", "Waiting for worker pods to start")
WAITING = Admission("q", "cq", admitted=False, message="insufficient quota for nvidia.com/gpu")
REFUSED = ("ChildRejected", "The API server refused Job s-workers-1: spec.template: Invalid")


@pytest.mark.parametrize(
    ("planned", "acted", "seen", "phase", "workers"),
    [
        # What the plan said stands when act learned nothing new.
        (
            PENDING,
            Acted(job=running(active=1, ready=1)),
            {},
            PENDING,
            ("WorkersRunning", "1 of 1 workers ready"),
        ),
        # A child the API server refused fails the study, whatever was planned.
        (
            PENDING,
            Acted(job=None, rejected=REFUSED),
            {},
            Phase(PhaseName.FAILED, *REFUSED),
            REFUSED,
        ),
        # Kueue's own words replace the plan's, in the phase and in WorkersReady.
        (
            QUEUED,
            Acted(job=running(ready=0, active=0)),
            {"admission": WAITING},
            Phase(PhaseName.QUEUED, QUEUED.reason, WAITING.sentence()),
            (QUEUED.reason, WAITING.sentence()),
        ),
        # Pending workers say why: the Job cannot create pods, or they crash.
        (
            PENDING,
            Acted(job=running(ready=0)),
            {"pods_refused": "forbidden: exceeded quota"},
            Phase(
                PhaseName.PENDING,
                "WorkerPodsRefused",
                "The Job cannot create worker pods: forbidden: exceeded quota",
            ),
            ("WorkerPodsRefused", "The Job cannot create worker pods: forbidden: exceeded quota"),
        ),
        (
            PENDING,
            Acted(job=running(ready=0, failed=2)),
            {},
            Phase(
                PhaseName.PENDING,
                "WorkersCrashing",
                "2 worker pods failed and are restarted by the Job",
            ),
            ("WorkersCrashing", "2 worker pods failed and are restarted by the Job"),
        ),
        # A finished study's workers are stopped, not crashing.
        (
            Phase(PhaseName.SUCCEEDED, "TrialBudgetReached", "10 of 10 trials finished"),
            Acted(job=running(ready=0, failed=2)),
            {},
            Phase(PhaseName.SUCCEEDED, "TrialBudgetReached", "10 of 10 trials finished"),
            ("WorkersStopped", "0 of 1 workers ready"),
        ),
    ],
)
def test_the_phase_settles_on_what_act_learned(
    planned: Phase,
    acted: Acted,
    seen: dict[str, Any],
    phase: Phase,
    workers: tuple[str, str],
) -> None:
    o = replace(observed(), **seen)
    assert settled_phase(study(), o, acted, planned) == (phase, workers)


def test_crashing_workers_are_named_with_their_exit_code() -> None:
    s = study()
    crashing = running(active=1, ready=0, failed=3)
    o = Observed(
        now=NOW,
        storage=STORAGE,
        handle=HANDLE,
        job=crashing,
        workers_message="exit code 1 (error): RuntimeError: CUDA error",
    )
    status, _ = build_status(s, assessed(s, o), plan_for(s, o), Acted(job=crashing))
    workers = next(c for c in status.conditions if c.type == "WorkersReady")
    assert workers.reason == "WorkersCrashing"
    assert "3 worker pods failed" in workers.message and "CUDA error" in workers.message


def test_new_best_trial_event_only_when_the_best_changes() -> None:
    s = study()
    best = BestTrial(number=4, values=[1.0], params={})
    o = observed(StudySummary(complete=5, best=best), running())
    status, events = build_status(s, assessed(s, o), plan_for(s, o), Acted(job=running()))
    assert [e.reason for e in events] == ["NewBestTrial"]
    again = s.model_copy(update={"status": status})
    _, events = build_status(again, assessed(again, o), plan_for(again, o), Acted(job=running()))
    assert events == []


def test_work_queue_hands_a_key_to_one_worker_at_a_time() -> None:
    async def scenario() -> list[str]:
        queue, order = WorkQueue(), []
        queue.add(("ns", "a"))
        queue.add(("ns", "a"))  # deduplicated
        queue.add(("ns", "b"), delay=0.05)
        first = await queue.get()
        order.append(first[1])
        queue.add(first)  # queued again while being processed: held back until done
        second = await queue.get()
        order.append(second[1])
        queue.done(first)
        third = await queue.get()
        order.append(third[1])
        assert len(queue) == 0
        return order

    assert asyncio.run(scenario()) == ["a", "b", "a"]


def test_one_namespace_never_holds_more_than_its_share_of_the_workers() -> None:
    async def scenario() -> list[Any]:
        queue = WorkQueue(per_namespace=2)
        for name in ("h1", "h2", "h3"):
            queue.add(("hanging", name))
        queue.add(("healthy", "a"), delay=0.01)
        out = [await queue.get(), await queue.get()]
        # The third of the hanging namespace waits for one of its two to finish; the other
        # tenant's study is handed out meanwhile.
        out.append(await asyncio.wait_for(queue.get(), 1))
        queue.done(out[0])
        out.append(await asyncio.wait_for(queue.get(), 1))
        return out

    assert asyncio.run(scenario()) == [
        ("hanging", "h1"),
        ("hanging", "h2"),
        ("healthy", "a"),
        ("hanging", "h3"),
    ]


def test_replaced_workers_are_not_reported_as_failures() -> None:
    def pod(code: int, at: str, message: str) -> dict[str, Any]:
        term = {"exitCode": code, "finishedAt": at, "message": message, "reason": "Error"}
        return {"status": {"containerStatuses": [{"state": {"terminated": term}}]}}

    pods = [
        pod(1, "2030-01-01T00:00:01Z", "Traceback...\nRuntimeError: CUDA error"),
        pod(5, "2030-01-01T00:00:09Z", "interrupted by SIGTERM"),
    ]
    message = termination_message(pods)
    assert message == "exit code 1 (error, Error): RuntimeError: CUDA error"


def test_budget_advice_when_startup_trials_take_half_the_budget() -> None:
    s = study(sampler={"type": "TPE"})
    o = observed(StudySummary(complete=2), running())
    status, events = build_status(s, assessed(s, o), plan_for(s, o), Acted(job=running()))
    advice = next(c for c in status.conditions if c.type == "BudgetAdvice")
    assert (advice.status, advice.reason) == ("True", "StartupTrialsDominate")
    assert "first 10 trials at random, 100% of budget.trials (10)" in advice.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "StartupTrialsDominate")]
    # Said once: the next pass, with the condition already True, records no event.
    _, events = build_status(
        s.model_copy(update={"status": status}),
        assessed(s, o),
        plan_for(s, o),
        Acted(job=running()),
    )
    assert [e.reason for e in events] == []
    fits = study(sampler={"type": "TPE"}, budget={"trials": 100})
    status, _ = build_status(fits, assessed(fits, o), plan_for(fits, o), Acted(job=running()))
    advice = next(c for c in status.conditions if c.type == "BudgetAdvice")
    assert (advice.status, advice.reason) == ("False", "BudgetFits")


def test_budget_advice_when_most_trials_are_pruned() -> None:
    s = study(budget={"trials": 100})
    o = observed(StudySummary(complete=2, pruned=9), running())
    status, _ = build_status(s, assessed(s, o), plan_for(s, o), Acted(job=running()))
    advice = next(c for c in status.conditions if c.type == "BudgetAdvice")
    assert (advice.status, advice.reason) == ("True", "MostTrialsPruned")
    assert advice.message.startswith("9 of 11 finished trials were pruned")


def test_budget_advice_when_a_pruner_never_gets_a_report() -> None:
    s = study(budget={"trials": 100}, pruner={"type": "Median"})
    silent = observed(StudySummary(complete=10, reported=False), running())
    status, _ = build_status(s, assessed(s, silent), plan_for(s, silent), Acted(job=running()))
    advice = next(c for c in status.conditions if c.type == "BudgetAdvice")
    assert (advice.status, advice.reason) == ("True", "PrunerNeverReports")
    assert "none of 10 finished trials reported" in advice.message
    reporting = observed(StudySummary(complete=10, reported=True), running())
    status, _ = build_status(
        s, assessed(s, reporting), plan_for(s, reporting), Acted(job=running())
    )
    advice = next(c for c in status.conditions if c.type == "BudgetAdvice")
    assert advice.status == "False"
