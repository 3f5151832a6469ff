"""The real API server enforces the generated schema and CEL rules, with messages a user can
act on; every example is accepted and parses back into the models with defaults filled."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from optuna_operator.api import GROUP, PLURAL, VERSION, TuningStudy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

VALID: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "TuningStudy",
    "metadata": {"name": "v"},
    "spec": {
        "directions": ["minimize"],
        "objective": {
            "command": ["bash", "run.sh", "{opt}"],
            "searchSpace": [
                {"name": "opt", "categorical": {"choices": ["sgd", "adam"]}},
                {"name": "lr", "float": {"low": 0.001, "high": 0.1, "log": True}},
                {
                    "name": "momentum",
                    "float": {"low": 0.0, "high": 0.9},
                    "when": {"param": "opt", "in": ["sgd"]},
                },
                {"name": "layers", "int": {"low": 1, "high": 4}},
            ],
        },
        "budget": {"trials": 10},
    },
}


def _with(path: str, value: Any, *more: Any) -> dict[str, Any]:
    """VALID with fields replaced: path, value[, path, value...] (dotted paths, list indexes
    as numbers; a value of None deletes)."""
    body = copy.deepcopy(VALID)
    changes = [(path, value), *zip(more[::2], more[1::2], strict=True)]
    for dotted, new in changes:
        node: Any = body["spec"]
        keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        for key in keys[:-1]:
            node = node[key]
        if new is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = new
    return body


TWO = ["minimize", "maximize"]


FUNCTION = {"function": "examples.xgb_regression:objective"}
SS = "objective.searchSpace"

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no directions", _with("directions", []), "directions"),
    ("bad direction", _with("directions", ["up"]), 'Unsupported value: "up"'),
    (
        "function and command",
        _with("objective.function", "m:f"),
        "exactly one of function or command",
    ),
    ("neither function nor command", _with("objective", {}), "exactly one of function or command"),
    ("command without search space", _with("objective", {"command": ["x"]}), "needs a searchSpace"),
    (
        "function with search space",
        _with("objective", {**FUNCTION, "searchSpace": VALID["spec"]["objective"]["searchSpace"]}),
        "only used with command",
    ),
    (
        "function not module:attr",
        _with("objective", {"function": "train.py"}),
        "objective.function",
    ),
    (
        "float low >= high",
        _with(f"{SS}.1.float", {"low": 1.0, "high": 0.5}),
        "low must be less than high",
    ),
    (
        "float log with low 0",
        _with(f"{SS}.1.float", {"low": 0.0, "high": 1.0, "log": True}),
        "log scale needs low > 0",
    ),
    (
        "float step with log",
        _with(f"{SS}.1.float", {"low": 0.1, "high": 1.0, "log": True, "step": 0.1}),
        "step cannot be combined with log",
    ),
    (
        "float step too big",
        _with(f"{SS}.1.float", {"low": 0.0, "high": 1.0, "step": 2.0}),
        "step must fit in the range",
    ),
    ("float step zero", _with(f"{SS}.1.float", {"low": 0.0, "high": 1.0, "step": 0}), "step"),
    (
        "int low >= high",
        _with(f"{SS}.3.int", {"low": 4, "high": 4}),
        "int: low must be less than high",
    ),
    (
        "int log with low 0",
        _with(f"{SS}.3.int", {"low": 0, "high": 4, "log": True}),
        "int: log scale needs low > 0",
    ),
    (
        "int step too big",
        _with(f"{SS}.3.int", {"low": 0, "high": 4, "step": 5}),
        "int: step must fit",
    ),
    (
        "int log with step",
        _with(f"{SS}.3.int", {"low": 1, "high": 8, "log": True, "step": 2}),
        "log scale needs step 1",
    ),
    ("empty choices", _with(f"{SS}.0.categorical", {"choices": []}), "choices"),
    (
        "duplicate choices",
        _with(f"{SS}.0.categorical", {"choices": ["sgd", "sgd"]}),
        "Duplicate value",
    ),
    (
        "no range type",
        _with(f"{SS}.3", {"name": "layers"}),
        "exactly one of float, int or categorical",
    ),
    (
        "two range types",
        _with(f"{SS}.3.float", {"low": 0.0, "high": 1.0}),
        "exactly one of float, int or categorical",
    ),
    ("duplicate names", _with(f"{SS}.3.name", "lr"), "Duplicate value"),
    ("bad parameter name", _with(f"{SS}.3.name", "num-layers"), "should match"),
    (
        "when on unknown param",
        _with(f"{SS}.2.when", {"param": "nope", "in": ["sgd"]}),
        "when.param must name a categorical",
    ),
    (
        "when on float param",
        _with(f"{SS}.2.when", {"param": "lr", "in": ["sgd"]}),
        "when.param must name a categorical",
    ),
    (
        "when value not a choice",
        _with(f"{SS}.2.when", {"param": "opt", "in": ["rmsprop"]}),
        "must be one of the parent parameter's choices",
    ),
    (
        "when on itself",
        _with(f"{SS}.2.when", {"param": "momentum", "in": ["sgd"]}),
        "cannot depend on itself",
    ),
    ("metricNames length", _with("metricNames", ["a", "b"]), "one name per direction"),
    (
        "goal with two directions",
        _with("directions", TWO, "budget", {"trials": 5, "goal": 0.1}),
        "goal works only with a single direction",
    ),
    ("no budget", _with("budget", {"maxFailedTrials": 3}), "set trials or timeoutSeconds"),
    ("zero trials", _with("budget", {"trials": 0}), "budget.trials"),
    (
        "negative failed trials",
        _with("budget", {"trials": 5, "maxFailedTrials": -1}),
        "maxFailedTrials",
    ),
    (
        "NSGA with one direction",
        _with("sampler", {"type": "NSGAII"}),
        "need two or more directions",
    ),
    (
        "CMAES with two directions",
        _with("directions", TWO, "sampler", {"type": "CMAES"}),
        "single direction only",
    ),
    (
        "options of another sampler",
        _with("sampler", {"type": "Random", "tpe": {"nStartupTrials": 5}}),
        "sampler.tpe is only valid when sampler.type is TPE",
    ),
    ("unknown sampler", _with("sampler", {"type": "Bayes"}), 'Unsupported value: "Bayes"'),
    (
        "grid for a function without space",
        _with("objective", FUNCTION, "sampler", {"type": "Grid"}),
        "needs sampler.grid.searchSpace",
    ),
    (
        "options of another pruner",
        _with("pruner", {"type": "Median", "hyperband": {}}),
        "pruner.hyperband is only valid when pruner.type is Hyperband",
    ),
    (
        "percentile without percentile",
        _with("pruner", {"type": "Percentile"}),
        "needs pruner.percentile.percentile",
    ),
    (
        "percentile out of range",
        _with("pruner", {"type": "Percentile", "percentile": {"percentile": 150}}),
        "percentile",
    ),
    (
        "threshold without bounds",
        _with("pruner", {"type": "Threshold", "threshold": {}}),
        "needs lower or upper",
    ),
    (
        "patient without patience",
        _with("pruner", {"type": "Patient"}),
        "needs pruner.patient.patience",
    ),
    (
        "hyperband bad maxResource",
        _with("pruner", {"type": "Hyperband", "hyperband": {"maxResource": "lots"}}),
        "positive integer or 'auto'",
    ),
    (
        "pruning with two directions",
        _with("directions", TWO, "pruner", {"type": "Median"}),
        "pruning works only with a single direction",
    ),
    ("negative parallelism", _with("workers", {"parallelism": -1}), "parallelism"),
    (
        "bad resource quantity",
        _with("workers", {"resources": {"limits": {"cpu": "lots"}}}),
        "limits",
    ),
    ("bad deletion policy", _with("deletionPolicy", "Purge"), 'Unsupported value: "Purge"'),
    ("bad study name", _with("studyName", "has space"), "studyName"),
]


def _custom(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def _create(kube_api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return result


def test_there_are_at_least_30_invalid_cases() -> None:
    assert len(INVALID) >= 30


@pytest.mark.parametrize(("case", "body", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_with_an_actionable_message(
    kube_api: client.ApiClient, crd_installed: None, case: str, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(client.ApiException) as info:
        _create(kube_api, "default", body | {"metadata": {"name": "invalid"}})
    assert info.value.status == 422, info.value.body
    details = json.loads(info.value.body)["message"]
    assert message in details, f"{case}: {details}"


def test_the_valid_base_spec_is_accepted(
    kube_api: client.ApiClient, crd_installed: None, namespace: str
) -> None:
    created = _create(kube_api, namespace, VALID)
    assert created["spec"]["sampler"]["type"] == "TPE"


def test_long_names_are_rejected(kube_api: client.ApiClient, crd_installed: None) -> None:
    with pytest.raises(client.ApiException) as info:
        _create(kube_api, "default", VALID | {"metadata": {"name": "n" * 46}})
    assert "at most 45 characters" in info.value.body


def test_directions_and_study_name_are_immutable(
    kube_api: client.ApiClient, crd_installed: None, namespace: str
) -> None:
    _create(kube_api, namespace, VALID)
    for patch, message in [
        ({"spec": {"directions": ["maximize"]}}, "directions cannot change"),
        ({"spec": {"studyName": "other"}}, "studyName cannot change"),
    ]:
        with pytest.raises(client.ApiException) as info:
            _custom(kube_api).patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "v", patch
            )
        assert message in info.value.body


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted_and_defaults_filled(
    kube_api: client.ApiClient, crd_installed: None, namespace: str, path: Path
) -> None:
    body = yaml.safe_load(path.read_text())
    stored = _create(kube_api, namespace, body)
    study = TuningStudy.model_validate(stored)
    spec = stored["spec"]
    # Defaults come from the API server, not from the client.
    assert spec["deletionPolicy"] == "Retain"
    assert spec["workers"]["heartbeatIntervalSeconds"] == 30
    assert spec["budget"]["maxFailedTrials"] >= 0
    assert "type" in spec["sampler"] and "type" in spec["pruner"]
    assert study.spec.model_dump() == TuningStudy.model_validate(body).spec.model_dump()
