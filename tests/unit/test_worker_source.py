"""objective.source: the worker imports a module from the text of a ConfigMap key."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from optuna_operator.contract import OBJECTIVE_SOURCE_ENV, ConfigError
from optuna_operator.worker.function_objective import load_function


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR is tmp_path; sys.path and sys.modules are restored after the test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    return tmp_path


def test_the_source_is_written_under_tmpdir_and_imported(tmpdir_here: Path) -> None:
    func = load_function("nb_objective_a:objective", "def objective(trial):\n    return 2.5\n")
    assert func(None) == 2.5
    (written,) = tmpdir_here.glob("optuna-objective-*/nb_objective_a.py")
    assert sys.path[0] == str(written.parent)


def test_the_source_comes_from_the_env_contract(
    tmpdir_here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OBJECTIVE_SOURCE_ENV, "def objective(trial):\n    return 7\n")
    assert load_function("nb_objective_b:objective")(None) == 7


def test_a_syntax_error_names_the_file_and_the_line(tmpdir_here: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_function("nb_objective_c:objective", "def objective(trial)\n    return 1\n")
    message = str(info.value)
    assert message.startswith("objective.source (nb_objective_c.py): SyntaxError"), message
    assert "line 1" in message


def test_a_missing_attribute_and_a_taken_name_are_config_errors(tmpdir_here: Path) -> None:
    with pytest.raises(ConfigError, match=r"nb_objective_d.py\): AttributeError.*'objective'"):
        load_function("nb_objective_d:objective", "def other(trial):\n    return 1\n")
    with pytest.raises(ConfigError, match="'json' is taken by an installed module"):
        load_function("json:objective", "def objective(trial):\n    return 1\n")
    assert not list(tmpdir_here.glob("*/json.py"))
