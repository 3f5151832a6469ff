"""The trivial objective `make bench` times (the same as its plain-Optuna baseline)."""

import time

import optuna


def objective(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -10, 10) - 2) ** 2 + trial.suggest_float("y", -10, 10) ** 2


def slow(trial: optuna.Trial) -> float:
    """One trial a second: the scale benchmark's running studies stay running."""
    time.sleep(1.0)
    return objective(trial)
