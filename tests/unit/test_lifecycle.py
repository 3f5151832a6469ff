"""The stopping rules the operator's status and the worker's stop decision share: one
table, one function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from optuna_operator.api import Budget, Direction
from optuna_operator.lifecycle.stopping import (
    StopReason,
    active_seconds,
    goal_met,
    stop_reason,
    too_many_failures,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PAST, FUTURE = NOW - timedelta(seconds=1), NOW + timedelta(hours=1)
ONE, TWO = [Direction.MINIMIZE], [Direction.MINIMIZE, Direction.MAXIMIZE]


@pytest.mark.parametrize(
    ("budget", "directions", "deadline", "finished", "goal", "expected"),
    [
        ({"trials": 10}, ONE, None, 9, False, None),
        ({"trials": 10}, ONE, None, 10, False, StopReason.BUDGET),
        ({"trials": 10}, ONE, None, None, False, None),  # count left to the slot claim
        ({"trials": 10, "goal": 0.5}, ONE, None, 3, True, StopReason.GOAL),
        ({"trials": 10, "goal": 0.5}, TWO, None, 3, True, None),  # goal: one direction only
        ({"trials": 10, "goal": 0.5}, ONE, None, 3, False, None),
        ({"trials": 10}, ONE, PAST, 3, False, StopReason.DEADLINE),
        ({"trials": 10}, ONE, FUTURE, 3, False, None),
        ({"trials": 10}, ONE, PAST.replace(tzinfo=None), 3, False, StopReason.DEADLINE),
        ({"trials": 10, "goal": 0.5}, ONE, PAST, 10, True, StopReason.BUDGET),  # first rule
    ],
)
def test_stop_reason(
    budget: dict[str, Any],
    directions: list[Direction],
    deadline: datetime | None,
    finished: int | None,
    goal: bool,
    expected: StopReason | None,
) -> None:
    count = None if finished is None else (lambda: finished)
    got = stop_reason(Budget.model_validate(budget), directions, NOW, deadline, count, lambda: goal)
    assert got == expected


def test_time_budget_is_asked_only_with_a_timeout() -> None:
    timed = Budget.model_validate({"timeoutSeconds": 60})
    assert stop_reason(timed, ONE, NOW, None, None, lambda: False, lambda: True) == (
        StopReason.TIME
    )
    assert stop_reason(timed, ONE, NOW, None, None, lambda: False, lambda: False) is None
    untimed = Budget.model_validate({"trials": 10})
    assert stop_reason(untimed, ONE, NOW, None, None, lambda: False, lambda: True) is None


def test_active_time_adds_the_open_run() -> None:
    assert active_seconds(None, None, NOW) == 0
    assert active_seconds(30, None, NOW) == 30
    assert active_seconds(30, NOW - timedelta(seconds=15), NOW) == 45


def test_counts_are_asked_only_when_their_rule_applies() -> None:
    asked: list[str] = []

    def finished() -> int:
        asked.append("finished")
        return 0

    def goal() -> bool:
        asked.append("goal")
        return False

    stop_reason(Budget.model_validate({"timeoutSeconds": 60}), ONE, NOW, None, finished, goal)
    assert asked == []


@pytest.mark.parametrize(
    ("direction", "value", "met"),
    [
        (Direction.MINIMIZE, 0.4, True),
        (Direction.MINIMIZE, 0.6, False),
        (Direction.MAXIMIZE, 0.6, True),
        (Direction.MAXIMIZE, 0.5, True),
        (Direction.MAXIMIZE, None, False),
    ],
)
def test_goal_met(direction: Direction, value: float | None, met: bool) -> None:
    assert goal_met(0.5, direction, value) is met


def test_failures_beyond_the_budget_fail_the_study() -> None:
    budget = Budget.model_validate({"trials": 5, "maxFailedTrials": 2})
    assert not too_many_failures(budget, 2)
    assert too_many_failures(budget, 3)
