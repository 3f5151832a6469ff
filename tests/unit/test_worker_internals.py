"""The start-up check of the Optuna internals the worker's storage code relies on."""

from __future__ import annotations

import pytest
from optuna.storages import RDBStorage

from optuna_operator.contract import ConfigError
from optuna_operator.worker import internals
from optuna_operator.worker.internals import PINNED_OPTUNA, check_optuna_internals


def test_the_installed_optuna_has_every_internal_the_worker_uses() -> None:
    check_optuna_internals()


def test_a_missing_private_method_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RDBStorage, "_get_prepared_new_trial")
    with pytest.raises(ConfigError) as raised:
        check_optuna_internals()
    message = str(raised.value)
    assert "optuna.storages.RDBStorage._get_prepared_new_trial is missing" in message
    assert f"optuna=={PINNED_OPTUNA}" in message


def test_a_reshaped_private_method_and_a_missing_column_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def reshaped(self: RDBStorage, study_id: int, session: object) -> None:
        raise AssertionError("never called")

    monkeypatch.setattr(RDBStorage, "_get_prepared_new_trial", reshaped)
    # A mapped column cannot be removed from its class; a column the check wants can be added.
    monkeypatch.setattr(internals, "_COLUMNS", {"TrialHeartbeatModel": ("trial_id", "beat")})
    with pytest.raises(ConfigError) as raised:
        check_optuna_internals()
    message = str(raised.value)
    assert (
        "RDBStorage._get_prepared_new_trial takes (self, study_id, session), not "
        "(self, study_id, template_trial, session)"
    ) in message
    assert "TrialHeartbeatModel has no beat" in message
