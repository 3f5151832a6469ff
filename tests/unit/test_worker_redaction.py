"""The worker's trial attributes (stderr_tail, error, interrupted) never hold the storage
credential, nor any `scheme://user:password@`: they are stored redacted."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from optuna_operator.api import Parameter
from optuna_operator.contract import ERROR_ATTR, STDERR_ATTR, STORAGE_ENV
from optuna_operator.worker.command_objective import STDERR_TAIL_CHARS, CommandObjective
from optuna_operator.worker.function_objective import FunctionObjective
from optuna_operator.worker.signals import StopSignal

PASSWORD = "Sup3r-s3cret_pw"
URL = f"postgresql+psycopg2://optuna:{PASSWORD}@db.example:5432/optuna"
OTHER = "mysql://admin:hunter2@other-db:3306/x"
SPACE = [Parameter.model_validate({"name": "x", "float": {"low": 0.0, "high": 1.0}})]


def _study(tmp_path: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")


def _attrs(study: optuna.Study) -> dict[str, object]:
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == optuna.trial.TrialState.FAIL
    return dict(trial.user_attrs)


def _assert_clean(text: object) -> None:
    assert isinstance(text, str)
    for secret in (PASSWORD, "Sup3r", "s3cret", "hunter2"):
        assert secret not in text, text


def _command(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_a_commands_stderr_tail_and_error_are_stored_redacted(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        f"sys.stderr.write('connecting to {URL}\\n')\n"
        f"sys.stderr.write('also {OTHER}\\n')\n"
        f"sys.stderr.write(\"FATAL: password authentication failed: password='{PASSWORD}'\\n\")\n"
        f"sys.stderr.write('giving up on {PASSWORD}\\n')\n"
        "sys.exit(3)\n"
    )
    objective = CommandObjective(
        _command(script), SPACE, 1, None, StopSignal(), "s", "pod/0", storage_url=URL
    )
    study = _study(tmp_path)
    study.optimize(objective, n_trials=1, catch=(Exception,))

    attrs = _attrs(study)
    tail, error = attrs[STDERR_ATTR], attrs[ERROR_ATTR]
    _assert_clean(tail)
    _assert_clean(error)
    assert isinstance(tail, str) and isinstance(error, str)
    assert "connecting to postgresql://db.example:5432/optuna" in tail
    assert "mysql://admin:***@other-db:3306/x" in tail
    assert "password='***'" in tail
    assert error == "command exited with code 3: giving up on ***"


def test_a_commands_output_reaches_the_pod_log_redacted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    script = (
        "import sys\n"
        f"print('my storage is {URL}', flush=True)\n"
        f"sys.stderr.write('retrying with password={PASSWORD}\\n')\n"
        "print('optuna:result 0.5', flush=True)\n"
    )
    objective = CommandObjective(
        _command(script), SPACE, 1, None, StopSignal(), "s", "pod/0", storage_url=URL
    )
    _study(tmp_path).optimize(objective, n_trials=1)
    out, err = capfd.readouterr()
    _assert_clean(out)
    _assert_clean(err)
    assert "[trial 0] my storage is postgresql://db.example:5432/optuna" in out
    assert "[trial 0] retrying with password=***" in err


def test_the_tail_is_redacted_before_it_is_cut(tmp_path: Path) -> None:
    # The password straddles the cut STDERR_TAIL_CHARS from the end: cut first, its end
    # would stay.
    filler = "x" * (STDERR_TAIL_CHARS - 8)
    script = f"import sys\nsys.stderr.write('{PASSWORD} {filler}\\n')\nsys.exit(1)\n"
    objective = CommandObjective(
        _command(script), SPACE, 1, None, StopSignal(), "s", "pod/0", storage_url=URL
    )
    study = _study(tmp_path)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    tail = _attrs(study)[STDERR_ATTR]
    _assert_clean(tail)
    assert isinstance(tail, str) and tail.endswith(filler)
    for i in range(3, len(PASSWORD)):
        assert not tail.startswith(PASSWORD[-i:])


def test_the_url_defaults_to_the_workers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORAGE_ENV, URL)
    script = f"import sys\nsys.stderr.write('{PASSWORD}\\n')\nsys.exit(2)\n"
    objective = CommandObjective(_command(script), SPACE, 1, None, StopSignal(), "s", "pod/0")
    study = _study(tmp_path)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    assert _attrs(study)[STDERR_ATTR] == "***"


def test_a_functions_error_is_stored_redacted(tmp_path: Path) -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        raise RuntimeError(f"could not open {URL} with {PASSWORD}; see also {OTHER}")

    study = _study(tmp_path)
    study.optimize(
        FunctionObjective(objective, 1, StopSignal(), "pod/0", storage_url=URL),
        n_trials=1,
        catch=(Exception,),
    )
    error = _attrs(study)[ERROR_ATTR]
    _assert_clean(error)
    assert error == (
        "RuntimeError: could not open postgresql://db.example:5432/optuna with ***; "
        "see also mysql://admin:***@other-db:3306/x"
    )


def test_a_functions_bad_return_value_is_stored_redacted(tmp_path: Path) -> None:
    class Odd:
        def __repr__(self) -> str:
            return f"<result of {URL}>"

    study = _study(tmp_path)
    trial = study.ask()
    objective = FunctionObjective(lambda t: Odd(), 1, StopSignal(), "pod/0", storage_url=URL)
    objective(trial)  # Optuna fails the trial when told; the objective explains why
    error = study.get_trials(deepcopy=False)[0].user_attrs[ERROR_ATTR]
    _assert_clean(error)
    assert (
        error == "objective returned <result of postgresql://db.example:5432/optuna>, not a number"
    )
