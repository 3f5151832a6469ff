"""The trivial objective `make bench` times (the same as its plain-Optuna baseline), and the
environment a worker Job would give the pods that run it."""

import os
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def objective(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -10, 10) - 2) ** 2 + trial.suggest_float("y", -10, 10) ** 2


def slow(trial: optuna.Trial) -> float:
    """One trial a second: the scale benchmark's running studies stay running."""
    time.sleep(1.0)
    return objective(trial)


def worker_env(
    url: str, study_name: str, trials: int, processes_per_pod: int = 1
) -> dict[str, str]:
    """What a worker Job gives its pods, for a study of the bench's trivial objective."""
    from optuna_operator.api import WorkerConfig

    config = WorkerConfig.model_validate(
        {
            "studyName": study_name,
            "directions": ["minimize"],
            "objective": {"function": "bench_objective:objective"},
            "budget": {"trials": trials},
            "sampler": {"type": "TPE"},
            "pruner": {"type": "None"},
            "processesPerPod": processes_per_pod,
        }
    )
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'hack'}",
        "OPTUNA_OPERATOR_WORKER_CONFIG": config.model_dump_json(by_alias=True),
        "OPTUNA_STORAGE_URL": url,
        "POD_NAME": "bench",
    }
