"""The pure parts of the exact trial budget and the study-wide stopping rules; the slot
claims themselves race real worker processes on PostgreSQL in tests/integration."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.pool import QueuePool

from optuna_operator.api import Budget, Direction
from optuna_operator.contract import MAX_RETRIES
from optuna_operator.storage.engines import ping_after_idle, retry_of_stale_trial
from optuna_operator.storage.worker_storage import TrialSlotsTaken
from optuna_operator.worker.budget import BudgetChecker, StopReason


class Counts:
    """What the checker would read from the trials table."""

    def __init__(self, finished: int = 0, failed: int = 0, reached: bool = False) -> None:
        self.finished_trials, self.failed, self.goal_reached = finished, failed, reached
        self.queries = 0

    def finished(self) -> int:
        self.queries += 1
        return self.finished_trials

    def failed_by_objective(self) -> int:
        self.queries += 1
        return self.failed

    def reached(self, goal: float, direction: Direction) -> bool:
        self.queries += 1
        return self.goal_reached


def checker(counts: Counts, **budget: object) -> BudgetChecker:
    deadline = budget.pop("deadline", None)
    return BudgetChecker(
        counts,  # type: ignore[arg-type]
        Budget.model_validate(budget),
        [Direction.MINIMIZE],
        deadline,  # type: ignore[arg-type]
    )


def test_after_a_trial_the_budget_is_left_to_the_slot_claim() -> None:
    counts = Counts(finished=10)
    rules = checker(counts, trials=10)
    assert rules.stop_reason() == StopReason.BUDGET
    queries = counts.queries
    assert rules.stop_reason(count_trials=False) is None
    assert counts.queries == queries  # no query at all


def test_the_goal_counts_the_trial_not_recorded_yet() -> None:
    rules = checker(Counts(), goal=0.5)
    assert rules.stop_reason(count_trials=False, latest=0.7) is None
    assert rules.stop_reason(count_trials=False, latest=0.5) == StopReason.GOAL
    assert rules.stop_reason(count_trials=False, latest=None) is None
    assert checker(Counts(reached=True), goal=0.5).stop_reason(latest=0.9) == StopReason.GOAL


def test_deadline_needs_no_query() -> None:
    counts = Counts()
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert checker(counts, deadline=past).stop_reason(count_trials=False) == StopReason.DEADLINE
    assert counts.queries == 0


def test_a_pending_failure_counts_towards_max_failed_trials() -> None:
    rules = checker(Counts(failed=2), maxFailedTrials=2)
    assert rules.too_many_failures() is None
    assert rules.too_many_failures(pending=1) == 3


def test_a_waiting_trial_goes_before_a_new_one() -> None:
    # A free slot, but a retry waits for it: the worker asks again at once and starts it.
    taken = TrialSlotsTaken(held=9, waiting=1, budget=10)
    assert taken.waiting_trial_may_start
    assert "1 waiting trials go first" in str(taken)
    # Every slot held: wait for one to free up.
    assert not TrialSlotsTaken(held=10, waiting=1, budget=10).waiting_trial_may_start
    assert not TrialSlotsTaken(held=10, waiting=0, budget=10).waiting_trial_may_start


def test_a_stale_trial_is_retried_with_its_parameters_at_most_max_retries_times() -> None:
    failed = optuna.trial.create_trial(
        state=TrialState.FAIL,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"worker": "pod-a/0"},
    )
    failed.number = 7
    retry = retry_of_stale_trial(failed)
    assert retry is not None
    assert retry.state == TrialState.WAITING and retry.params == {"x": 0.5}
    # The attributes Optuna's RetryFailedTrialCallback writes.
    assert retry.system_attrs == {"failed_trial": 7, "retry_history": [7]}
    # The failed run's own attributes (its worker, an error) stay with it.
    assert retry.user_attrs == {}

    again = retry
    for number in range(8, 8 + MAX_RETRIES):
        again.number = number
        next_retry = retry_of_stale_trial(again)
        if next_retry is None:
            break
        assert next_retry.system_attrs["failed_trial"] == 7
        again = next_retry
    assert len(again.system_attrs["retry_history"]) == MAX_RETRIES
    assert retry_of_stale_trial(again) is None


def test_only_connections_idle_for_a_while_are_pinged(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    ping_after_idle(engine, idle_seconds=0.2)
    pings: list[object] = []
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(conn) or True)
    for _ in range(5):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    assert pings == []  # each checkout follows a recent use
    time.sleep(0.3)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert len(pings) == 1


def test_a_retry_does_not_inherit_the_failed_runs_constraints() -> None:
    failed = optuna.trial.create_trial(
        state=TrialState.FAIL,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        system_attrs={"constraints:memory_gb": 2.0, "constraints": [1.0], "kept": 1},
    )
    failed.number = 3
    retry = retry_of_stale_trial(failed)
    assert retry is not None
    # Optuna keeps a constraint's first value: the retry must set its own.
    assert retry.system_attrs == {"failed_trial": 3, "kept": 1, "retry_history": [3]}
