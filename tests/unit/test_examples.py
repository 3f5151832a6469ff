"""The example TuningStudies: valid against the API models, and optimizing what their
objectives return (a study that maximizes a loss searches for the worst model)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from optuna_operator import __version__
from optuna_operator.api import TuningStudy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FUNCTION_STUDIES = [
    p
    for p in sorted(EXAMPLES.glob("*.yaml"))
    if "function" in yaml.safe_load(p.read_text())["spec"]["objective"]
]


@pytest.mark.parametrize("path", FUNCTION_STUDIES, ids=lambda p: p.name)
def test_directions_and_metric_names_match_what_the_objective_returns(path: Path) -> None:
    study = TuningStudy.model_validate(yaml.safe_load(path.read_text()))
    assert study.spec.objective.function is not None
    module_name, _, attribute = study.spec.objective.function.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))
    assert [d.value for d in study.spec.directions] == module.DIRECTIONS, path.name
    assert study.spec.metric_names == module.METRIC_NAMES, path.name


def test_pytorch_example_minimizes_the_validation_mse() -> None:
    study = TuningStudy.model_validate(yaml.safe_load((EXAMPLES / "gpu-pytorch.yaml").read_text()))
    assert [d.value for d in study.spec.directions] == ["minimize"]
    assert study.spec.metric_names == ["val_mse"]


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(EXAMPLES.glob("*.yaml")) if p.name != "gpu-pytorch.yaml"],
    ids=lambda p: p.name,
)
def test_examples_run_on_a_default_install_through_the_released_examples_image(path: Path) -> None:
    """The default worker image holds no examples/: each example names the worker-examples
    image of this release, so `kubectl apply -f examples/...` works on a default install.
    (gpu-pytorch.yaml names the user's own PyTorch image.)"""
    study = TuningStudy.model_validate(yaml.safe_load(path.read_text()))
    assert study.spec.workers.image == f"ghcr.io/optuna-operator/worker-examples:{__version__}"
