"""The seed use case: XGBoost regression with a conditional (define-by-run) search space.

scikit-learn's bundled diabetes data replaces the Boston housing set, which was removed from
scikit-learn. Sized so one trial takes well under a second on one core: the demo runs ~40
trials in a few minutes. Every boosting round reports its held-out MSE, so the Median pruner
of the example TuningStudy prunes trials that fall behind.
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
    """Mean negative MSE of 3-fold CV; the study maximizes it.

    The folds train side by side (`xgb.cv`) and the mean held-out MSE of every boosting
    round is reported to the trial, so the study's pruner (Median in the example) stops a
    trial whose curve falls behind the others'.
    """
    import xgboost as xgb

    n_estimators = trial.suggest_int("n_estimators", 20, 100, step=10)
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.3, log=True),
        "max_depth": trial.suggest_int("max_depth", 2, 8),
        "booster": trial.suggest_categorical("booster", ["gbtree", "dart"]),
        "nthread": 1,  # several trial processes share the pod's cores
        "seed": 42,
        "disable_default_eval_metric": 1,  # the MSE below is the one metric
    }
    # Dropout only exists for dart; gbtree trials never sample (or store) these, and
    # passing them to gbtree would only make XGBoost warn that they are unused.
    if params["booster"] == "dart":
        params["rate_drop"] = trial.suggest_float("rate_drop", 0.05, 0.3)
        params["skip_drop"] = trial.suggest_float("skip_drop", 0.0, 0.5)
    features, target = _data()
    history = xgb.cv(
        params,
        xgb.DMatrix(features, label=target),
        num_boost_round=n_estimators,
        nfold=3,
        seed=42,
        custom_metric=_mse,
        callbacks=[_report_each_round(trial)],
        as_pandas=False,
    )
    return -float(history["test-mse-mean"][-1])


def _mse(predictions: Any, data: Any) -> tuple[str, float]:
    import numpy as np

    return "mse", float(np.mean((predictions - data.get_label()) ** 2))


def _report_each_round(trial: optuna.Trial) -> Any:
    """An XGBoost callback: the round's mean held-out negative MSE goes to the trial, and
    the trial ends as pruned when the pruner says so."""
    import xgboost as xgb

    class ReportEachRound(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            mean_mse = evals_log["test"]["mse"][-1][0]  # xgb.cv logs (mean, std)
            trial.report(-float(mean_mse), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after boosting round {epoch}")
            return False

    return ReportEachRound()
