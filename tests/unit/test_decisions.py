"""Pure decisions of the reconciler: phase from budget, database and Job; conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from optuna_operator.api import BestTrial, TuningStudy, TuningStudyStatus
from optuna_operator.contract import redact
from optuna_operator.reconcile import JobState, decide_phase
from optuna_operator.reconcile.status import set_condition
from optuna_operator.storage.study_store import StudySummary

START = datetime(2030, 1, 1, tzinfo=UTC)
RUNNING_JOB = JobState(name="w", active=2, ready=2)


def study(budget: dict[str, Any], **spec: Any) -> TuningStudy:
    body = {"directions": ["maximize"], "objective": {"function": "m:f"}, "budget": budget, **spec}
    return TuningStudy.model_validate({"metadata": {"name": "s"}, "spec": body})


def best(value: float) -> BestTrial:
    return BestTrial(number=3, values=[value], params={"x": 1})


def test_running_until_the_trial_budget_is_met() -> None:
    phase = decide_phase(study({"trials": 10}), StudySummary(complete=9), RUNNING_JOB, START)
    assert (phase.phase, phase.reason) == ("Running", "Running")


def test_pruned_trials_count_towards_the_budget() -> None:
    summary = StudySummary(complete=6, pruned=4)
    idle = JobState(name="w", succeeded=2, complete=True)
    phase = decide_phase(study({"trials": 10}), summary, idle, START)
    assert (phase.phase, phase.reason) == ("Succeeded", "TrialBudgetReached")


def test_waits_for_running_workers_before_succeeding() -> None:
    phase = decide_phase(study({"trials": 10}), StudySummary(complete=10), RUNNING_JOB, START)
    assert phase.phase == "Running" and "waiting for workers" in phase.message


def with_status(tuning: TuningStudy, **status: Any) -> TuningStudy:
    return tuning.model_copy(update={"status": TuningStudyStatus.model_validate(status)})


def test_time_budget_counts_active_time_only() -> None:
    later = START + timedelta(days=3)
    queued_for_days = with_status(study({"timeoutSeconds": 60}), activeSeconds=10)
    phase = decide_phase(queued_for_days, StudySummary(), None, later)
    assert phase.phase == "Pending"  # three days waiting used 10 s of the budget
    running = with_status(study({"timeoutSeconds": 60}), activeSeconds=10, activeSince=START)
    assert decide_phase(running, StudySummary(), None, START + timedelta(seconds=49)).phase == (
        "Pending"
    )
    phase = decide_phase(running, StudySummary(), None, START + timedelta(seconds=50))
    assert (phase.phase, phase.reason, phase.ended_by) == (
        "Succeeded",
        "TimeBudgetReached",
        "TimeBudget",
    )


def test_deadline_is_wall_clock() -> None:
    deadline = START + timedelta(hours=1)
    tuning = study({"trials": 10, "deadline": deadline.isoformat()})
    assert decide_phase(tuning, StudySummary(), None, deadline - timedelta(seconds=1)).phase == (
        "Pending"
    )
    phase = decide_phase(tuning, StudySummary(), None, deadline)
    assert (phase.phase, phase.reason, phase.ended_by) == (
        "Succeeded",
        "DeadlineReached",
        "Deadline",
    )


def test_goal_is_direction_aware() -> None:
    maximize = study({"trials": 100, "goal": 0.9})
    minimize = study({"trials": 100, "goal": 0.9}, directions=["minimize"])
    reached = StudySummary(complete=5, best=best(0.95))
    assert decide_phase(maximize, reached, None, START).reason == "GoalReached"
    assert decide_phase(minimize, reached, None, START).phase == "Pending"


def test_too_many_failed_trials_fail_with_the_last_error() -> None:
    summary = StudySummary(failed=4, failed_by_objective=3, last_error="ValueError: bad lr")
    phase = decide_phase(study({"trials": 10, "maxFailedTrials": 2}), summary, None, START)
    assert (phase.phase, phase.reason) == ("Failed", "TooManyFailedTrials")
    assert "ValueError: bad lr" in phase.message


def test_failed_job_carries_the_worker_message() -> None:
    job = JobState(
        name="w",
        failed_reason="PodFailurePolicy",
        failed_message="ModuleNotFoundError: No module named 'train'",
    )
    phase = decide_phase(study({"trials": 10}), StudySummary(), job, START)
    assert phase.phase == "Failed" and "No module named 'train'" in phase.message


def test_suspended() -> None:
    phase = decide_phase(study({"trials": 10}, suspend=True), StudySummary(), None, START)
    assert phase.phase == "Suspended"


def test_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Succeeded", False, "Running", "not yet", 1, now="t1")
    same = set_condition(first, "Succeeded", False, "Running", "still not", 2, now="t2")
    flipped = set_condition(same, "Succeeded", True, "TrialBudgetReached", "done", 2, now="t3")
    assert same[0].last_transition_time == "t1" and same[0].message == "still not"
    assert flipped[0].last_transition_time == "t3" and len(flipped) == 1


def test_redact_removes_passwords() -> None:
    url = "postgresql+psycopg2://optuna:s3cret@db:5432/optuna"
    assert "s3cret" not in redact(f"could not connect to {url}")
    assert "s3cret" not in redact(f"could not connect to {url}", url)


def test_status_merge_patch_removes_stale_nested_keys() -> None:
    from optuna_operator.sync import merge_patch

    old = {"bestTrial": {"number": 1, "params": {"booster": "dart", "rate_drop": 0.1}}, "x": 1}
    new = {"bestTrial": {"number": 2, "params": {"booster": "gbtree"}}}
    assert merge_patch(old, new) == {
        "x": None,
        "bestTrial": {"number": 2, "params": {"booster": "gbtree", "rate_drop": None}},
    }
    assert merge_patch(new, new) == {}


def test_pareto_front_matches_brute_force() -> None:
    import random

    from optuna_operator.storage.summary import dominates as _dominates
    from optuna_operator.storage.summary import non_dominated as _non_dominated

    rng = random.Random(0)
    signs = (1, -1, 1)
    candidates = {i: (i, tuple(float(rng.randint(0, 9)) for _ in signs)) for i in range(300)}
    brute = {
        i
        for i, (_, v) in candidates.items()
        if not any(_dominates(w, v, signs) for j, (_, w) in candidates.items() if j != i)
    }
    assert set(_non_dominated(candidates, signs)) == brute
