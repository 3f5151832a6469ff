"""A study's lifecycle rules, in one place the operator and the worker both import: the
phase names, when a study needs no more trials, and when it has failed.

The worker asks `stop_reason` before and after each trial (with counts from cheap SQL
queries, asked only when a rule needs them); the operator asks it for the status (with the
counts it summarized). One function, so the two can never disagree on when a study is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from optuna_operator.api import (
    BestTrial,
    Budget,
    Direction,
    PhaseName,
    StopReason,
    TuningStudySpec,
    TuningStudyStatus,
    WarmStartSpec,
)
from optuna_operator.lifecycle.advice import Advice, budget_advice

__all__ = [
    "FINISHED_PHASES",
    "Assessment",
    "Counts",
    "PhaseName",
    "StopReason",
    "active_seconds",
    "assess",
    "goal_met",
    "stop_reason",
    "too_many_failures",
    "trial_budget",
]

FINISHED_PHASES = (PhaseName.SUCCEEDED, PhaseName.FAILED)


def goal_met(goal: float | None, direction: Direction, value: float | None) -> bool:
    """Whether a single objective value is at least as good as the goal."""
    if goal is None or value is None:
        return False
    return value >= goal if direction == Direction.MAXIMIZE else value <= goal


def too_many_failures(budget: Budget, failed_by_objective: int) -> bool:
    """More trials failed by their objective than budget.maxFailedTrials allows."""
    return failed_by_objective > budget.max_failed_trials


def stop_reason(
    budget: Budget,
    directions: list[Direction],
    now: datetime,
    deadline: datetime | None,
    finished: Callable[[], int] | None,
    goal_reached: Callable[[], bool],
    time_used: Callable[[], bool] = lambda: False,
) -> StopReason | None:
    """Why the study needs no more trials, or None. The counts are callables, asked only
    when their rule applies (the worker queries the database for them); `finished=None`
    leaves the trial count out (after a trial the worker's slot claim answers it).

    `deadline` is budget.deadline (wall clock). `time_used` says whether budget.timeoutSeconds
    of active time is used up: the operator counts it (status.activeSeconds), the workers
    read the operator's stop request from the database."""
    if finished is not None and budget.trials is not None and finished() >= budget.trials:
        return StopReason.BUDGET
    if budget.goal is not None and len(directions) == 1 and goal_reached():
        return StopReason.GOAL
    if budget.timeout_seconds is not None and time_used():
        return StopReason.TIME
    if deadline is not None and now >= _aware(deadline):
        return StopReason.DEADLINE
    return None


def trial_budget(budget: Budget, warm_start: WarmStartSpec | None, copied: int) -> Budget:
    """The budget the finished count (warm-start copies included) is held against: the
    `copied` trials are added to budget.trials unless warmStart.countTowardsBudget says they
    count. The operator's status and the workers' slot claim both use it."""
    if budget.trials is None or not copied or (warm_start and warm_start.count_towards_budget):
        return budget
    return budget.model_copy(update={"trials": budget.trials + copied})


def active_seconds(active: int | None, since: datetime | None, now: datetime) -> float:
    """The study's active time at `now`: the seconds counted so far (status.activeSeconds)
    plus the run of workers still going (since status.activeSince)."""
    running = (now - _aware(since)).total_seconds() if since is not None else 0.0
    return (active or 0) + max(0.0, running)


@dataclass(frozen=True)
class Assessment:
    """The operator's one look at a study's budgets at a moment.

    `budget` is the budget the finished count is held against (warm-start copies added as
    `trial_budget` says), `stop` the budget that ended the study (None while it runs),
    `active` the seconds of active time used so far and `advice` what the budget cannot do
    as the user means it (None when it fits)."""

    budget: Budget
    stop: StopReason | None
    active: float
    advice: Advice | None = None


class Counts(Protocol):
    """What `assess` reads of a study's trials: the operator's summary of them."""

    @property
    def finished(self) -> int: ...
    @property
    def failed_by_objective(self) -> int: ...
    @property
    def pruned(self) -> int: ...
    @property
    def reported(self) -> bool: ...  # whether any finished trial reported a value
    @property
    def best(self) -> BestTrial | None: ...


def assess(
    spec: TuningStudySpec,
    status: TuningStudyStatus,
    counts: Counts,
    now: datetime,
    *,
    copied: int,
) -> Assessment:
    """Every stopping rule over the operator's counts, evaluated once per reconcile: too
    many failures first, then `stop_reason` (trials, goal, active time from the status,
    deadline); and the budget advice. `copied`: trials warm start copied in."""
    directions = list(spec.directions)
    counted = trial_budget(spec.budget, spec.warm_start, copied)
    used = active_seconds(status.active_seconds, status.active_since, now)
    finished, best = counts.finished, counts.best
    best_value = best.values[0] if best is not None else None
    stop: StopReason | None = StopReason.FAILURES
    if not too_many_failures(counted, counts.failed_by_objective):
        stop = stop_reason(
            counted,
            directions,
            now,
            counted.deadline,
            finished=lambda: finished,
            goal_reached=lambda: goal_met(counted.goal, directions[0], best_value),
            time_used=lambda: used >= (counted.timeout_seconds or 0),
        )
    advice = budget_advice(spec, finished, counts.pruned, counts.reported)
    return Assessment(counted, stop, used, advice)


def _aware(moment: datetime) -> datetime:
    # A deadline without an offset is taken as UTC, as Kubernetes timestamps are.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
