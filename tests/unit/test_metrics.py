"""The operator's metrics: finished trials are a counter (rate() and increase() work on it),
current trial counts a gauge, and a deleted study's series go."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from optuna_operator import metrics
from optuna_operator.api import TuningStudy, TuningStudyStatus


def study(name: str) -> TuningStudy:
    return TuningStudy.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {
                "directions": ["minimize"],
                "objective": {"function": "m:f"},
                "budget": {"trials": 10},
            },
        }
    )


def status(complete: int, running: int) -> TuningStudyStatus:
    return TuningStudyStatus.model_validate(
        {
            "phase": "Running",
            "trials": {
                "complete": complete,
                "pruned": 1,
                "failed": 0,
                "running": running,
                "waiting": 0,
            },
        }
    )


def sample(name: str, study_name: str, state: str) -> float | None:
    labels = {"namespace": "team-a", "name": study_name, "state": state}
    return REGISTRY.get_sample_value(name, labels)


def test_finished_trials_are_a_counter_and_current_trials_a_gauge() -> None:
    metrics.record_study(study("m-counter"), status(complete=3, running=2))
    metrics.record_study(study("m-counter"), status(complete=5, running=1))
    assert sample("optuna_operator_study_trials_finished_total", "m-counter", "complete") == 5
    assert sample("optuna_operator_study_trials_finished_total", "m-counter", "pruned") == 1
    # Running trials are no count of events: the gauge has them, the counter does not.
    assert sample("optuna_operator_study_trials_finished_total", "m-counter", "running") is None
    assert sample("optuna_operator_study_trials", "m-counter", "running") == 1
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE optuna_operator_study_trials_finished_total counter" in text
    assert "# TYPE optuna_operator_study_trials gauge" in text


def test_a_deleted_studys_series_go() -> None:
    metrics.record_study(study("m-gone"), status(complete=2, running=0))
    metrics.forget("team-a", "m-gone")
    for state in ("complete", "pruned", "failed"):
        assert sample("optuna_operator_study_trials_finished_total", "m-gone", state) is None
        assert sample("optuna_operator_study_trials", "m-gone", state) is None
