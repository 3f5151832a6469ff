"""The XGBoost example reports every boosting round, so the pruner its TuningStudy sets acts
(without reports, a Median pruner never prunes anything)."""

from __future__ import annotations

import optuna
from examples.xgb_regression import objective
from optuna.trial import TrialState

GOOD = {"n_estimators": 40, "learning_rate": 0.3, "max_depth": 3, "booster": "gbtree"}


def test_each_round_is_reported_and_a_trial_that_falls_behind_is_pruned() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
    )
    study.enqueue_trial(GOOD)
    # The smallest learning rate learns far more slowly than the first trial did.
    study.enqueue_trial(GOOD | {"learning_rate": 1e-3})
    study.optimize(objective, n_trials=2)
    first, second = study.get_trials(deepcopy=False)
    assert first.state == TrialState.COMPLETE
    assert sorted(first.intermediate_values) == list(range(GOOD["n_estimators"]))
    assert first.value == first.intermediate_values[GOOD["n_estimators"] - 1]
    assert second.state == TrialState.PRUNED
    assert max(second.intermediate_values) < GOOD["n_estimators"] - 1
