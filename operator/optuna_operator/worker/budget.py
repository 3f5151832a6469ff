"""The study-wide stopping rules (lifecycle/stopping.py), fed by one cheap SQL query each.

Optuna's MaxTrialsCallback loads every trial of the study to count them; studies here reach
100k trials, so the counts come from COUNT/EXISTS queries on the trials table instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import Engine, Float, and_, cast, exists, func, select

from optuna_operator.api import Budget, Direction
from optuna_operator.contract import ERROR_ATTR, STOP_REQUEST_ATTR
from optuna_operator.lifecycle.stopping import StopReason, goal_met, stop_reason, too_many_failures
from optuna_operator.storage.outage import OutageTolerantStorage, guarded_engine_call

__all__ = ["BudgetChecker", "StopReason", "TrialCounter"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialCounter:
    """Counts on one study's rows, through the worker's own (small) connection pool, retried
    through a database outage like the storage's own calls."""

    def __init__(self, storage: OutageTolerantStorage, study_id: int) -> None:
        self._engine: Engine = storage.engine
        self._guard = storage.guard
        self._study_id = study_id

    def _scalar(self, what: str, query: Any) -> Any:
        return guarded_engine_call(self._guard, what, self._engine, query)

    def finished(self) -> int:
        trials = models.TrialModel
        query = select(func.count(trials.trial_id)).where(
            trials.study_id == self._study_id, trials.state.in_(_FINISHED)
        )
        return int(self._scalar("counting finished trials", query))

    def failed_by_objective(self) -> int:
        trials = models.TrialModel
        attrs = models.TrialUserAttributeModel
        query = (
            select(func.count(trials.trial_id))
            .join(attrs, attrs.trial_id == trials.trial_id)
            .where(
                trials.study_id == self._study_id,
                trials.state == TrialState.FAIL,
                attrs.key == ERROR_ATTR,
            )
        )
        return int(self._scalar("counting failed trials", query))

    def stop_requested(self, timeout_seconds: int) -> bool:
        """Whether the operator asked the workers to stop because `timeout_seconds` of
        active time (which only it counts) ran out. A request written for another budget
        (the user since raised it) does not count."""
        attrs = models.StudySystemAttributeModel
        # max(): one row always (NULL without a request); (study, key) is unique anyway.
        query = select(func.max(attrs.value_json)).where(
            attrs.study_id == self._study_id, attrs.key == STOP_REQUEST_ATTR
        )
        raw = self._scalar("reading the operator's stop request", query)
        try:
            request = json.loads(raw) if raw else None
        except ValueError:
            return False
        return isinstance(request, dict) and request.get("timeoutSeconds") == timeout_seconds

    def reached(self, goal: float, direction: Direction) -> bool:
        """Whether any complete, feasible trial's first value is at least as good as the
        goal (a trial with a constraint value above 0 is infeasible: the status's best
        trial leaves it out too)."""
        trials = models.TrialModel
        values = models.TrialValueModel
        attrs = models.TrialSystemAttributeModel
        better = values.value <= goal if direction == Direction.MINIMIZE else values.value >= goal
        # Optuna stores each constraint as JSON text of a float under `constraints:<name>`.
        infeasible = exists().where(
            attrs.trial_id == trials.trial_id,
            attrs.key.startswith("constraints:"),
            cast(attrs.value_json, Float) > 0,
        )
        query = select(
            exists().where(
                and_(
                    values.trial_id == trials.trial_id,
                    trials.study_id == self._study_id,
                    trials.state == TrialState.COMPLETE,
                    values.objective == 0,
                    better,
                    ~infeasible,
                )
            )
        )
        return bool(self._scalar("checking the goal", query))


@dataclass
class BudgetChecker:
    """Answers "may this worker start another trial?" for the whole study."""

    counter: TrialCounter
    budget: Budget
    directions: list[Direction]
    deadline: datetime | None

    def too_many_failures(self, pending: int = 0) -> int | None:
        """The failure count when it exceeds budget.maxFailedTrials, else None. `pending`:
        failed trials of this process not recorded yet."""
        failed = self.counter.failed_by_objective() + pending
        return failed if too_many_failures(self.budget, failed) else None

    def stop_reason(
        self, count_trials: bool = True, latest: float | Sequence[float] | None = None
    ) -> StopReason | None:
        """Why the study needs no more trials, or None. `count_trials=False` leaves out the
        trial count: after each trial the worker storage's slot claim answers that. `latest`:
        the values of this process's trial that is not recorded yet."""
        goal, direction = self.budget.goal, self.directions[0]

        def goal_reached() -> bool:
            assert goal is not None  # asked only when there is a goal
            return _meets(latest, goal, direction) or self.counter.reached(goal, direction)

        return stop_reason(
            self.budget,
            self.directions,
            datetime.now(UTC),
            self.deadline,
            finished=self.counter.finished if count_trials else None,
            goal_reached=goal_reached,
            time_used=lambda: self.counter.stop_requested(self.budget.timeout_seconds or 0),
        )

    def seconds_left(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, (_aware(self.deadline) - datetime.now(UTC)).total_seconds())


def _meets(value: float | Sequence[float] | None, goal: float, direction: Direction) -> bool:
    """Whether a single-objective result is at least as good as the goal."""
    if value is None or isinstance(value, Sequence):
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return goal_met(goal, direction, number)


def _aware(moment: datetime) -> datetime:
    # A deadline without an offset is taken as UTC, as Kubernetes timestamps are.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
