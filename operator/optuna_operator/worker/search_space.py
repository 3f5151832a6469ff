"""Sampling a declarative search space (command objectives) with trial.suggest_*."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

from optuna_operator.api import Parameter, ParameterCondition

__all__ = ["condition_holds", "sample"]


def sample(trial: optuna.Trial, space: Sequence[Parameter]) -> dict[str, Any]:
    """The trial's parameters, in search-space order; skipped conditional ones are absent."""
    params: dict[str, Any] = {}
    for param in space:
        if param.when is not None and not condition_holds(param.when, params):
            continue
        params[param.name] = _suggest(trial, param)
    return params


def condition_holds(when: ParameterCondition, params: dict[str, Any]) -> bool:
    """A child is sampled only when its parent was sampled with one of the listed values.

    A parent that was itself skipped hides the whole branch. Booleans compare only with
    booleans, so `in: [1]` does not match `true`.
    """
    if when.param not in params:
        return False
    value = params[when.param]
    return any(_same(value, allowed) for allowed in when.in_)


def _same(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _suggest(trial: optuna.Trial, param: Parameter) -> Any:
    if param.float_ is not None:
        fr = param.float_
        return trial.suggest_float(param.name, fr.low, fr.high, log=fr.log, step=fr.step)
    if param.int_ is not None:
        ir = param.int_
        return trial.suggest_int(param.name, ir.low, ir.high, step=ir.step, log=ir.log)
    if param.categorical is not None:
        return trial.suggest_categorical(param.name, list(param.categorical.choices))
    raise ValueError(f"parameter {param.name!r} has no float, int or categorical range")
