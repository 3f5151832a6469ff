"""The Optuna internals the worker's storage code relies on, checked at start-up.

The exact trial budget, the one-transaction fail-and-retry and the heartbeat handling
(storage/engines.py, storage/worker_storage.py, storage/outage.py, worker/budget.py) override
or call private parts of Optuna's RDB storage, written against optuna==PINNED_OPTUNA. Another
Optuna version may rename or reshape them; then the worker must stop with a clear reason
before it runs a trial (a changed private method would otherwise break the budget silently
or fail deep inside a trial). Checked by name and parameter names, without importing
anything private at module level, so that a missing module is reported too.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

import optuna

from optuna_operator.contract import ConfigError

__all__ = ["PINNED_OPTUNA", "check_optuna_internals"]

log = logging.getLogger(__name__)

PINNED_OPTUNA = "5.0.0"

# module:attribute(parameter names); without parentheses it must only exist.
_CALLABLES = (
    "optuna.storages._rdb.storage:_create_scoped_session(scoped_session, ignore_integrity_error)",
    "optuna.storages:RDBStorage._get_prepared_new_trial(self, study_id, template_trial, session)",
    "optuna.storages:RDBStorage._create_new_trial(self, study_id, template_trial)",
    "optuna.storages:RDBStorage._get_stale_trial_ids(self, study_id)",
    "optuna.storages:RDBStorage._set_trial_attr_without_commit"
    "(self, session, model_cls, trial_id, key, value)",
    "optuna.storages:RDBStorage._build_frozen_trial_from_trial_model(self, trial)",
    "optuna.storages:RDBStorage.record_heartbeat(self, trial_id)",
    "optuna.storages:RDBStorage.set_trial_state_values(self, trial_id, state, values)",
    "optuna.storages._rdb.models:StudyModel.find_or_raise_by_id(study_id, session, for_update)",
    "optuna.storages._rdb.models:TrialModel.find_or_raise_by_id(trial_id, session, for_update)",
    "optuna.storages._rdb.models:TrialHeartbeatModel.where_trial_id(trial_id, session, for_update)",
    # The scan before every ask calls the storage's _get_stale_trial_ids through it.
    "optuna.storages:fail_stale_trials(study)",
    "optuna.exceptions:UpdateFinishedTrialError",
)

# The columns the slot claim, the heartbeats and the budget's counts query directly.
_COLUMNS = {
    "StudyModel": ("study_id",),
    "TrialModel": (
        "trial_id",
        "number",
        "study_id",
        "state",
        "datetime_start",
        "datetime_complete",
    ),
    "TrialHeartbeatModel": ("trial_id", "heartbeat"),
    "TrialUserAttributeModel": ("trial_id", "key", "value_json"),
    "TrialValueModel": ("trial_id", "objective", "value"),
}


def check_optuna_internals() -> None:
    """Raise ConfigError (exit code CONFIG: retrying cannot help) naming what the installed
    Optuna lacks; warn when it is not the pinned version but has everything."""
    problems = [p for p in map(_check_callable, _CALLABLES) if p]
    problems += _check_columns()
    if problems:
        raise ConfigError(
            f"Optuna {optuna.__version__} lacks private parts the worker's storage code uses "
            f"(written against optuna=={PINNED_OPTUNA}): {'; '.join(problems[:5])}. Use a "
            f"worker image with optuna=={PINNED_OPTUNA}"
        )
    if optuna.__version__ != PINNED_OPTUNA:
        log.warning(
            "Optuna %s, not the pinned %s; the private parts the worker uses are all there",
            optuna.__version__,
            PINNED_OPTUNA,
        )


def _resolve(module: str, path: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in path.split("."):
        target = getattr(target, part)
    return target


def _check_callable(entry: str) -> str | None:
    where, _, params_text = entry.partition("(")
    module, _, path = where.partition(":")
    name = f"{module}.{path}"
    try:
        target = _resolve(module, path)
    except (ImportError, AttributeError):
        return f"{name} is missing"
    if not params_text:
        return None
    wanted = tuple(p.strip() for p in params_text.rstrip(")").split(","))
    try:
        found = tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return f"{name} is not a function"
    if found != wanted:
        return f"{name} takes ({', '.join(found)}), not ({', '.join(wanted)})"
    return None


def _check_columns() -> list[str]:
    module = "optuna.storages._rdb.models"
    problems = []
    for model, columns in _COLUMNS.items():
        try:
            cls = _resolve(module, model)
        except (ImportError, AttributeError):
            problems.append(f"{module}.{model} is missing")
            continue
        missing = [c for c in columns if not hasattr(cls, c)]
        if missing:
            problems.append(f"{module}.{model} has no {', '.join(missing)}")
    return problems
