"""The seed use case: XGBoost regression with a conditional (define-by-run) search space.

scikit-learn's bundled diabetes data replaces the Boston housing set, which was removed from
scikit-learn. Sized so one trial takes well under a second on one core: the demo runs ~40
trials in a few minutes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import optuna

__all__ = ["DIRECTIONS", "METRIC_NAMES", "objective"]

# What objective returns, in order; the example TuningStudy must say the same
# (tests/unit/test_examples.py checks it).
DIRECTIONS = ["maximize"]
METRIC_NAMES = ["neg_mse"]


@cache
def _data() -> tuple[Any, Any]:
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    return features, target


def objective(trial: optuna.Trial) -> float:
    """Mean negative MSE of 3-fold CV; the study maximizes it."""
    import xgboost as xgb
    from sklearn.model_selection import cross_val_score

    n_estimators = trial.suggest_int("n_estimators", 20, 100, step=10)
    learning_rate = trial.suggest_float("learning_rate", 1e-3, 0.3, log=True)
    max_depth = trial.suggest_int("max_depth", 2, 8)
    booster = trial.suggest_categorical("booster", ["gbtree", "dart"])
    # Dropout only exists for dart; gbtree trials never sample (or store) these, and
    # passing them to gbtree would only make XGBoost warn that they are unused.
    dart: dict[str, float] = {}
    if booster == "dart":
        dart["rate_drop"] = trial.suggest_float("rate_drop", 0.05, 0.3)
        dart["skip_drop"] = trial.suggest_float("skip_drop", 0.0, 0.5)
    model = xgb.XGBRegressor(
        n_estimators=n_estimators,
        learning_rate=learning_rate,
        max_depth=max_depth,
        booster=booster,
        random_state=42,
        n_jobs=1,  # several trial processes share the pod's cores
        **dart,
    )
    features, target = _data()
    scores = cross_val_score(model, features, target, cv=3, scoring="neg_mean_squared_error")
    return float(scores.mean())
