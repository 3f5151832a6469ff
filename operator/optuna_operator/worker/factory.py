"""Samplers and pruners built explicitly from the spec.

Optuna 5.0 changed several defaults (multivariate TPE with constant liar, TPE for several
objectives); building every object from the spec keeps a study's behaviour independent of
whichever Optuna version the worker image carries.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PatientPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
    ThresholdPruner,
    WilcoxonPruner,
)
from optuna.samplers import (
    BaseSampler,
    BruteForceSampler,
    CmaEsSampler,
    GPSampler,
    GridSampler,
    NSGAIIISampler,
    NSGAIISampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)
from pydantic.alias_generators import to_camel

from optuna_operator.api import (
    # Grids larger than this are a typo, not a plan; GridSampler would hold them all in memory.
    # The API server refuses them at apply time; the check here guards older objects.
    MAX_GRID_VALUES_PER_PARAMETER,
    BasePrunerSpec,
    CMAESOptions,
    GPOptions,
    HyperbandOptions,
    MedianOptions,
    Model,
    NSGAOptions,
    Objective,
    Parameter,
    PrunerSpec,
    PrunerType,
    QMCOptions,
    SamplerSpec,
    SamplerType,
    SuccessiveHalvingOptions,
    TPEOptions,
    WilcoxonOptions,
)
from optuna_operator.contract import ConfigError

__all__ = ["build_pruner", "build_sampler", "describe", "grid_from_search_space"]

GridValue = str | bool | int | float | None


def build_sampler(spec: SamplerSpec, objective: Objective, seed: int | None) -> BaseSampler:
    with _quiet():
        return _sampler(spec, objective, seed)


# As for pruners: option fields carry Optuna's argument names, so options pass straight on.
_SAMPLERS: dict[SamplerType, tuple[Callable[..., BaseSampler], str | None, type[Model] | None]] = {
    SamplerType.TPE: (TPESampler, "tpe", TPEOptions),
    SamplerType.CMAES: (CmaEsSampler, "cmaes", CMAESOptions),
    SamplerType.NSGAII: (NSGAIISampler, "nsga", NSGAOptions),
    SamplerType.NSGAIII: (NSGAIIISampler, "nsga", NSGAOptions),
    SamplerType.GP: (GPSampler, "gp", GPOptions),
    SamplerType.QMC: (QMCSampler, "qmc", QMCOptions),
    SamplerType.RANDOM: (RandomSampler, None, None),
    SamplerType.BRUTE_FORCE: (BruteForceSampler, None, None),
}


def _sampler(spec: SamplerSpec, objective: Objective, seed: int | None) -> BaseSampler:
    kind = spec.type
    if kind == SamplerType.GP and importlib.util.find_spec("torch") is None:
        # GPSampler imports torch only when it first samples; fail at start-up instead.
        raise ConfigError("sampler.type GP needs PyTorch in the worker image (pip install torch)")
    if kind in _SAMPLERS:
        sampler_class, field, default = _SAMPLERS[kind]
        options: dict[str, Any] = {}
        if field is not None and default is not None:
            options = (getattr(spec, field) or default()).model_dump()
        if not options.get("consider_endpoints", True):
            # Deprecated in Optuna 4.9: passing it at all warns, so only when asked for.
            del options["consider_endpoints"]
        return sampler_class(**options, seed=seed)
    if kind == SamplerType.GRID:
        if spec.grid is not None and spec.grid.search_space:
            grid: dict[str, Sequence[GridValue]] = {
                name: list(values) for name, values in spec.grid.search_space.items()
            }
        elif objective.search_space:
            grid = grid_from_search_space(objective.search_space)
        else:
            raise ConfigError(
                "sampler.type Grid needs sampler.grid.searchSpace for a function objective"
            )
        return GridSampler(grid, seed=seed)
    if kind == SamplerType.BRUTE_FORCE:
        return BruteForceSampler(seed=seed)
    raise ConfigError(f"unknown sampler.type {kind!r}")


def grid_from_search_space(space: Sequence[Parameter]) -> dict[str, Sequence[GridValue]]:
    """Every value of a declarative space: categorical choices, int ranges, stepped floats."""
    grid: dict[str, Sequence[GridValue]] = {}
    for param in space:
        if param.categorical is not None:
            grid[param.name] = list(param.categorical.choices)
        elif param.int_ is not None:
            rng = param.int_
            count = (rng.high - rng.low) // rng.step + 1
            _check_grid_size(param.name, count)
            grid[param.name] = list(range(rng.low, rng.high + 1, rng.step))
        elif param.float_ is not None and param.float_.step is not None:
            fr = param.float_
            step = fr.step
            assert step is not None
            count = int((fr.high - fr.low) / step + 1e-9) + 1
            _check_grid_size(param.name, count)
            # Rounding keeps 0.1 + 2 * 0.1 from becoming 0.30000000000000004.
            grid[param.name] = [round(fr.low + k * step, 12) for k in range(count)]
        else:
            raise ConfigError(
                f"sampler.type Grid cannot enumerate parameter {param.name!r}: use int, "
                "categorical or a float with step"
            )
    return grid


def _check_grid_size(name: str, count: int) -> None:
    if count > MAX_GRID_VALUES_PER_PARAMETER:
        raise ConfigError(
            f"sampler.type Grid: parameter {name!r} has {count} values "
            f"(more than {MAX_GRID_VALUES_PER_PARAMETER})"
        )


def build_pruner(spec: PrunerSpec) -> BasePruner:
    with _quiet():
        return _pruner(spec)


def _pruner(spec: PrunerSpec) -> BasePruner:
    if spec.type == PrunerType.PATIENT:
        patient = spec.patient
        if patient is None:
            raise ConfigError("pruner.type Patient needs pruner.patient.patience")
        wrapped = patient.wrapped
        inner = None if wrapped.type == PrunerType.NONE else _base_pruner(wrapped)
        return PatientPruner(inner, patience=patient.patience, min_delta=patient.min_delta)
    return _base_pruner(spec)


# The option fields are Optuna's own argument names, so each pruner is built from its options.
# A default of None means the options are required (a Percentile needs its percentile).
_PRUNERS: dict[PrunerType, tuple[type[BasePruner], str, type[Model] | None]] = {
    PrunerType.MEDIAN: (MedianPruner, "median", MedianOptions),
    PrunerType.PERCENTILE: (PercentilePruner, "percentile", None),
    PrunerType.SUCCESSIVE_HALVING: (
        SuccessiveHalvingPruner,
        "successive_halving",
        SuccessiveHalvingOptions,
    ),
    PrunerType.HYPERBAND: (HyperbandPruner, "hyperband", HyperbandOptions),
    PrunerType.THRESHOLD: (ThresholdPruner, "threshold", None),
    PrunerType.WILCOXON: (WilcoxonPruner, "wilcoxon", WilcoxonOptions),
}


def _base_pruner(spec: BasePrunerSpec) -> BasePruner:
    if spec.type == PrunerType.NONE:
        return NopPruner()
    if spec.type not in _PRUNERS:
        raise ConfigError(f"pruner.type {spec.type.value} cannot be used here")
    pruner_class, field, default = _PRUNERS[spec.type]
    options: Model | None = getattr(spec, field) or (default() if default else None)
    if options is None:
        raise ConfigError(f"pruner.type {spec.type.value} needs pruner.{to_camel(field)}")
    return pruner_class(**options.model_dump())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The user chose the algorithm in the spec; "X is experimental" on every pod start is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def describe(sampler: BaseSampler, pruner: BasePruner) -> str:
    """For the start-up log line: which algorithms and which Optuna actually run."""
    return (
        f"sampler={type(sampler).__name__} pruner={type(pruner).__name__} "
        f"optuna={optuna.__version__}"
    )
