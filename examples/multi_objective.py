"""Two objectives: accuracy (maximize) against prediction latency (minimize).

Directions in the TuningStudy: [maximize, minimize]; the function returns a tuple in that
order. Digits data bundled with scikit-learn, nothing downloaded.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import optuna

__all__ = ["DIRECTIONS", "METRIC_NAMES", "objective"]

# What objective returns, in order; the example TuningStudy must say the same
# (tests/unit/test_examples.py checks it).
DIRECTIONS = ["maximize", "minimize"]
METRIC_NAMES = ["accuracy", "latency_ms"]


@cache
def _split() -> tuple[Any, Any, Any, Any]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, target = load_digits(return_X_y=True)
    parts: tuple[Any, Any, Any, Any] = tuple(
        train_test_split(features, target, test_size=0.3, random_state=0)
    )
    return parts


def objective(trial: optuna.Trial) -> tuple[float, float]:
    """(validation accuracy, milliseconds to predict 1000 samples)."""
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(
        n_estimators=trial.suggest_int("n_estimators", 5, 80, log=True),
        max_depth=trial.suggest_int("max_depth", 2, 16),
        max_features=trial.suggest_categorical("max_features", ["sqrt", "log2"]),
        random_state=0,
        n_jobs=1,
    )
    x_train, x_test, y_train, y_test = _split()
    model.fit(x_train, y_train)
    started = time.perf_counter()
    accuracy = float(model.score(x_test, y_test))
    latency_ms = (time.perf_counter() - started) * 1000.0 * 1000.0 / len(x_test)
    return accuracy, latency_ms
