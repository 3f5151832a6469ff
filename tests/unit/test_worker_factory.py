"""Sampler and pruner construction from the spec (no database)."""

from __future__ import annotations

import importlib.util
from typing import Any

import optuna
import pytest

from optuna_operator.api import Objective, Parameter, PrunerSpec, SamplerSpec
from optuna_operator.contract import ConfigError
from optuna_operator.worker.factory import build_pruner, build_sampler, grid_from_search_space

FUNCTION = Objective(function="train:objective")


def space(*params: dict[str, Any]) -> list[Parameter]:
    return [Parameter.model_validate(p) for p in params]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "TPE"}, optuna.samplers.TPESampler),
        (
            {"type": "CMAES", "cmaes": {"popsize": 8, "withMargin": True}},
            optuna.samplers.CmaEsSampler,
        ),
        ({"type": "NSGAII", "nsga": {"populationSize": 8}}, optuna.samplers.NSGAIISampler),
        ({"type": "NSGAIII"}, optuna.samplers.NSGAIIISampler),
        ({"type": "QMC", "qmc": {"qmcType": "halton"}}, optuna.samplers.QMCSampler),
        ({"type": "Random"}, optuna.samplers.RandomSampler),
        ({"type": "Grid", "grid": {"searchSpace": {"x": [1, 2]}}}, optuna.samplers.GridSampler),
        ({"type": "BruteForce"}, optuna.samplers.BruteForceSampler),
    ],
)
def test_every_sampler_type_is_built_explicitly(spec: dict[str, Any], expected: type) -> None:
    sampler = build_sampler(SamplerSpec.model_validate(spec), FUNCTION, seed=7)
    assert type(sampler) is expected


def test_tpe_options_reach_the_sampler() -> None:
    spec = SamplerSpec.model_validate(
        {"type": "TPE", "tpe": {"nStartupTrials": 3, "multivariate": False, "constantLiar": False}}
    )
    sampler = build_sampler(spec, FUNCTION, seed=1)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 3
    assert sampler._multivariate is False
    assert sampler._constant_liar is False


def test_same_seed_same_suggestions() -> None:
    def first_values(seed: int) -> list[float]:
        sampler = build_sampler(SamplerSpec(), FUNCTION, seed=seed)
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
        return [t.params["x"] for t in study.trials]

    assert first_values(11) == first_values(11)
    assert first_values(11) != first_values(12)


def test_gp_sampler_needs_torch() -> None:
    spec = SamplerSpec.model_validate({"type": "GP"})
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ConfigError, match="PyTorch"):
            build_sampler(spec, FUNCTION, seed=None)
    else:
        assert isinstance(build_sampler(spec, FUNCTION, seed=None), optuna.samplers.GPSampler)


def test_grid_for_command_objective_comes_from_search_space() -> None:
    objective = Objective.model_validate(
        {
            "command": ["train"],
            "searchSpace": [
                {"name": "opt", "categorical": {"choices": ["sgd", "adam"]}},
                {"name": "layers", "int": {"low": 1, "high": 7, "step": 3}},
                {"name": "drop", "float": {"low": 0.0, "high": 0.3, "step": 0.1}},
            ],
        }
    )
    sampler = build_sampler(SamplerSpec.model_validate({"type": "Grid"}), objective, seed=0)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    assert objective.search_space is not None
    assert grid_from_search_space(objective.search_space) == {
        "opt": ["sgd", "adam"],
        "layers": [1, 4, 7],
        "drop": [0.0, 0.1, 0.2, 0.3],
    }


def test_grid_rejects_continuous_float() -> None:
    with pytest.raises(ConfigError, match="cannot enumerate parameter 'lr'"):
        grid_from_search_space(space({"name": "lr", "float": {"low": 0.1, "high": 1.0}}))


def test_grid_without_values_for_a_function_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sampler.grid.searchSpace"):
        build_sampler(SamplerSpec.model_validate({"type": "Grid"}), FUNCTION, seed=0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "None"}, optuna.pruners.NopPruner),
        ({"type": "Median", "median": {"nStartupTrials": 2}}, optuna.pruners.MedianPruner),
        ({"type": "Percentile", "percentile": {"percentile": 25}}, optuna.pruners.PercentilePruner),
        ({"type": "SuccessiveHalving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"type": "Hyperband", "hyperband": {"maxResource": 27}}, optuna.pruners.HyperbandPruner),
        ({"type": "Threshold", "threshold": {"upper": 1.0}}, optuna.pruners.ThresholdPruner),
        ({"type": "Wilcoxon"}, optuna.pruners.WilcoxonPruner),
        ({"type": "Patient", "patient": {"patience": 2}}, optuna.pruners.PatientPruner),
    ],
)
def test_every_pruner_type(spec: dict[str, Any], expected: type) -> None:
    assert type(build_pruner(PrunerSpec.model_validate(spec))) is expected


def test_patient_wraps_the_inner_pruner() -> None:
    spec = PrunerSpec.model_validate(
        {"type": "Patient", "patient": {"patience": 3, "wrapped": {"type": "Median"}}}
    )
    pruner = build_pruner(spec)
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.MedianPruner)
    assert pruner._patience == 3


@pytest.mark.parametrize("kind", ["Percentile", "Threshold", "Patient"])
def test_pruner_without_required_options_is_a_config_error(kind: str) -> None:
    with pytest.raises(ConfigError):
        build_pruner(PrunerSpec.model_validate({"type": kind}))


def test_pruner_options_reach_optuna() -> None:
    median = build_pruner(
        PrunerSpec.model_validate(
            {"type": "Median", "median": {"nStartupTrials": 7, "nWarmupSteps": 3}}
        )
    )
    assert (median._n_startup_trials, median._n_warmup_steps) == (7, 3)  # type: ignore[attr-defined]
    band = build_pruner(
        PrunerSpec.model_validate({"type": "Hyperband", "hyperband": {"maxResource": 27}})
    )
    assert band._max_resource == 27  # type: ignore[attr-defined]
