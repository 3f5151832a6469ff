"""A command objective's constraints (`optuna:constraint` lines, the result file's
`constraints`) reach the trial as Optuna's own, before the trial is told; malformed ones fail
the trial with the reason."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from optuna_operator.api import Parameter, TuningStudy
from optuna_operator.contract import ERROR_ATTR
from optuna_operator.worker.command_objective import CommandObjective
from optuna_operator.worker.function_objective import FunctionObjective
from optuna_operator.worker.signals import StopSignal

REPO = Path(__file__).resolve().parents[2]
SPACE = [Parameter.model_validate({"name": "x", "float": {"low": 0.0, "high": 1.0}})]


def _run(script: str, n_objectives: int = 1) -> optuna.trial.FrozenTrial:
    """One trial of `python -c script` in an in-memory study; the trial as stored."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * n_objectives)
    objective = CommandObjective(
        [sys.executable, "-c", script], SPACE, n_objectives, 30, StopSignal(), "s", "pod/0"
    )
    study.optimize(objective, n_trials=1, catch=(Exception,))
    (trial,) = study.get_trials(deepcopy=False)
    return trial


def test_constraint_lines_are_set_on_the_trial_and_the_last_value_wins() -> None:
    trial = _run(
        "print('optuna:constraint memory_gb 2.5')\n"
        "print('optuna:constraint memory_gb -0.5')\n"
        "print('optuna:constraint latency_ms 3')\n"
        "print('optuna:result 0.1 7')\n",
        n_objectives=2,
    )
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [0.1, 7.0]
    assert trial.constraints == {"memory_gb": -0.5, "latency_ms": 3.0}


def test_result_file_constraints_are_set_and_go_over_constraint_lines() -> None:
    trial = _run(
        "import json, os\n"
        "print('optuna:constraint a 1')\n"
        "print('optuna:constraint b 1')\n"
        "with open(os.environ['OPTUNA_RESULT_FILE'], 'w') as f:\n"
        "    json.dump({'values': [0.5], 'constraints': {'b': -2, 'c': 0}}, f)\n"
    )
    assert trial.state == TrialState.COMPLETE and trial.value == 0.5
    assert trial.constraints == {"a": 1.0, "b": -2.0, "c": 0.0}


def test_a_trial_without_constraint_lines_has_none() -> None:
    trial = _run("print('optuna:result 1')")
    assert trial.state == TrialState.COMPLETE and trial.constraints == {}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (
            "optuna:constraint memory_gb",
            "expected 'optuna:constraint <name> <value>', got 'optuna:constraint memory_gb'",
        ),
        ("optuna:constraint memory_gb lots", "'lots' is not a number"),
        ("optuna:constraint memory_gb nan", "NaN reported in 'optuna:constraint memory_gb nan'"),
    ],
)
def test_a_malformed_constraint_line_fails_the_trial_with_the_reason(line: str, error: str) -> None:
    trial = _run(f"print({line!r})\nprint('optuna:result 1')\n")
    assert trial.state == TrialState.FAIL
    assert error in trial.user_attrs[ERROR_ATTR]
    assert trial.constraints == {}


def test_a_failed_command_sets_no_constraint() -> None:
    trial = _run("print('optuna:constraint c -1')\nraise SystemExit(2)\n")
    assert trial.state == TrialState.FAIL and trial.constraints == {}


def test_the_constrained_command_example_keeps_too_big_models_off_the_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)  # the example's command names its script from the repository root
    body = yaml.safe_load((REPO / "examples" / "constrained-command.yaml").read_text())
    spec = TuningStudy.model_validate(body).spec
    assert spec.objective.command is not None and spec.objective.search_space is not None
    study = optuna.create_study(directions=[d.value for d in spec.directions])
    study.enqueue_trial({"width": 1024, "depth": 8})  # the most accurate, 16 GB
    study.enqueue_trial({"width": 16, "depth": 1})
    objective = CommandObjective(
        spec.objective.command, spec.objective.search_space, 2, 60, StopSignal(), "s", "pod/0"
    )
    study.optimize(objective, n_trials=2)
    big, small = study.trials
    assert big.constraints == {"memory_gb": 12.384}
    assert small.constraints == {"memory_gb": -3.968}
    assert [t.number for t in study.best_trials] == [small.number]


def test_a_functions_nan_constraint_fails_its_trial_with_optunas_reason() -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.set_constraint("memory_gb", float("nan"))
        return 1.0

    study = optuna.create_study()
    study.optimize(FunctionObjective(objective, 1, StopSignal(), "pod/0"), 1, catch=(Exception,))
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL and trial.constraints == {}
    assert trial.user_attrs[ERROR_ATTR] == (
        "ValueError: Attempted to set a constraint for 'memory_gb', but NaN is not allowed."
    )
