"""budget.goal counts feasible trials only, on the test bed's PostgreSQL: the workers' stop
decision (worker/budget.py) agrees with the status's best trial, which leaves infeasible
trials out (storage/summary.py)."""

from __future__ import annotations

import uuid

import optuna

from optuna_operator.api import Direction
from optuna_operator.storage.worker_storage import make_storage
from optuna_operator.worker.budget import TrialCounter


def _tell(study: optuna.Study, value: float, constraints: dict[str, float]) -> None:
    trial = study.ask()
    for key, bound in constraints.items():
        trial.set_constraint(key, bound)
    study.tell(trial, value)


def test_an_infeasible_trial_does_not_reach_the_goal(storage_url: str) -> None:
    name = f"goal-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage_url)
    storage = make_storage(storage_url, heartbeat_interval=30, application_name="test")
    counter = TrialCounter(storage, storage.get_study_id_from_name(name))
    try:
        _tell(study, 0.1, {"memory_gb": 2.5})  # better than the goal, but infeasible
        _tell(study, 0.9, {"memory_gb": -1.0})  # feasible, short of the goal
        assert not counter.reached(0.5, Direction.MINIMIZE)
        _tell(study, 0.4, {"memory_gb": 0.0, "latency": -3.0})  # feasible and at the goal
        assert counter.reached(0.5, Direction.MINIMIZE)
        assert study.best_trial.number == 2
    finally:
        storage.engine.dispose()
