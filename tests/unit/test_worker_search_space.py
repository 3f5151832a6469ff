"""Declarative search-space sampling, settings parsing and the exit message (no database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_operator.api import Parameter
from optuna_operator.contract import ConfigError
from optuna_operator.worker.function_objective import check_values, load_function
from optuna_operator.worker.search_space import sample
from optuna_operator.worker.settings import read_settings
from optuna_operator.worker.termination import report_exit

SPACE = [
    Parameter.model_validate(p)
    for p in (
        {"name": "optimizer", "categorical": {"choices": ["sgd", "adam", "rmsprop"]}},
        {
            "name": "momentum",
            "float": {"low": 0.0, "high": 0.99},
            "when": {"param": "optimizer", "in": ["sgd", "rmsprop"]},
        },
        {
            "name": "nesterov",
            "categorical": {"choices": ["yes", "no"]},
            "when": {"param": "optimizer", "in": ["sgd"]},
        },
        {
            "name": "dampening",
            "float": {"low": 0.0, "high": 0.5},
            "when": {"param": "nesterov", "in": ["no"]},
        },
        {"name": "lr", "float": {"low": 1e-4, "high": 1.0, "log": True}},
        {"name": "layers", "int": {"low": 2, "high": 10, "step": 2}},
    )
]


def test_conditional_children_follow_their_parents() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(sample(trial, SPACE))
        return 0.0

    study.optimize(objective, n_trials=200)
    for params in seen:
        assert ("momentum" in params) == (params["optimizer"] in ("sgd", "rmsprop"))
        assert ("nesterov" in params) == (params["optimizer"] == "sgd")
        # The API allows only one level, but a skipped parent would hide a grandchild too.
        assert ("dampening" in params) == (params.get("nesterov") == "no")
        assert params["layers"] in (2, 4, 6, 8, 10)
        assert 1e-4 <= params["lr"] <= 1.0
    assert {p["optimizer"] for p in seen} == {"sgd", "adam", "rmsprop"}
    assert any("dampening" in p for p in seen)


def config(**overrides: Any) -> dict[str, str]:
    body = {
        "studyName": "s",
        "directions": ["minimize"],
        "objective": {"function": "m:f"},
        "budget": {"trials": 3},
        "sampler": {"type": "TPE"},
        "pruner": {"type": "None"},
    } | overrides
    return {
        "OPTUNA_OPERATOR_WORKER_CONFIG": json.dumps(body),
        "OPTUNA_STORAGE_URL": "postgresql+psycopg2://u:secret@db:5432/optuna",
        "POD_NAME": "w-0",
        "OPTUNA_OPERATOR_WORKER_INDEX": "2",
    }


def test_settings_parse_the_operator_contract() -> None:
    settings = read_settings(config(processesPerPod=2, heartbeatIntervalSeconds=5))
    assert settings.config.processes_per_pod == 2
    assert settings.config.heartbeat_interval_seconds == 5
    assert settings.worker_index == 2
    assert settings.pod_name == "w-0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "OPTUNA_OPERATOR_WORKER_CONFIG is not set"),
        ({"OPTUNA_OPERATOR_WORKER_CONFIG": "{"}, "invalid OPTUNA_OPERATOR_WORKER_CONFIG"),
        (config(budget={"trials": 0}), "budget.trials"),
        ({**config(), "OPTUNA_STORAGE_URL": ""}, "OPTUNA_STORAGE_URL is not set"),
        ({**config(), "OPTUNA_OPERATOR_WORKER_INDEX": "x"}, "must be an integer"),
    ],
)
def test_bad_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_settings(env)


def test_load_function_reports_the_import_error() -> None:
    with pytest.raises(ConfigError, match=r"^ModuleNotFoundError: No module named 'no_such_mod'$"):
        load_function("no_such_mod:objective")
    with pytest.raises(ConfigError, match="AttributeError"):
        load_function("json:no_such_attribute")
    with pytest.raises(ConfigError, match="not callable"):
        load_function("json.decoder:WHITESPACE")
    assert load_function("json:dumps") is json.dumps


def test_check_values() -> None:
    assert check_values(1.0, 1) is None
    assert check_values((1, 2.5), 2) is None
    assert check_values(float("nan"), 1) == "objective returned NaN"
    assert "2 value(s)" in (check_values((1, 2), 1) or "")
    assert "not a number" in (check_values("x", 1) or "")


def test_report_exit_writes_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    log.touch()  # Kubernetes mounts it; an absent file is left absent
    report_exit("ModuleNotFoundError:\n  No module named 'train'", log)
    assert log.read_text() == "ModuleNotFoundError: No module named 'train'"
    assert capsys.readouterr().err.splitlines()[-1] == log.read_text()
    missing = tmp_path / "absent"
    report_exit("x", missing)
    assert not missing.exists()
