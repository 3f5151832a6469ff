"""Objectives that `StudyClient.tune` ships as a whole module file (test_tune.py): this file
travels in a ConfigMap and the worker imports it as `tune_objectives`."""

from __future__ import annotations

import optuna


def front(trial: optuna.Trial) -> tuple[float, float]:
    """Two objectives of one parameter, opposed: every trial is on the Pareto front."""
    x = trial.suggest_float("x", 0, 2)
    return x, (x - 2) ** 2
