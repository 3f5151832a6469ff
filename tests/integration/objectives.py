"""Objectives the operator tests run in real worker processes (imported by module path)."""

from __future__ import annotations

import ctypes
import os
import time

import optuna


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    kind = trial.suggest_categorical("kind", ["plain", "shifted"])
    shift = trial.suggest_float("shift", 0, 2) if kind == "shifted" else 0.0
    return -((x - 2 - shift) ** 2)


def slow_quadratic(trial: optuna.Trial) -> float:
    time.sleep(0.4)
    return quadratic(trial)


def improving(trial: optuna.Trial) -> float:
    """Every trial beats the ones before it (minimize): the best trial keeps changing."""
    trial.suggest_float("x", 0, 1)
    trial.suggest_int("depth", 1, 8)
    time.sleep(0.3)
    return -float(trial.number)


def first_trial_hangs(trial: optuna.Trial) -> float:
    """Trial 0 hangs in native code, as a stuck training loop does; no bytecode runs."""
    x = trial.suggest_float("x", -10, 10)
    if trial.number == 0:
        ctypes.CDLL(None).sleep(600)
    time.sleep(0.2)
    return -(x**2)


def crash(trial: optuna.Trial) -> float:
    """The worker process dies mid-trial (a segfaulting CUDA kernel, an OOM kill)."""
    trial.suggest_float("x", 0, 1)
    print("about to crash", flush=True)
    os._exit(17)


def uses_probe_pkg(trial: optuna.Trial) -> float:
    """Needs `probe_pkg`, which no image has: objective.requirements installs it."""
    import probe_pkg  # type: ignore[import-not-found]

    trial.set_user_attr("answer", probe_pkg.ANSWER)
    return quadratic(trial)
