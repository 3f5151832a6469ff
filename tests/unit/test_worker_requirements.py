"""objective.requirements: which specifiers the API takes, and the worker's pip install into
the pod's /tmp (real pip, from a local folder of wheels as on an air-gapped cluster)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.wheels import build_wheel

from optuna_operator.api.objective import REQUIREMENT_PATTERN
from optuna_operator.contract import ConfigError
from optuna_operator.worker.requirements import install_requirements


@pytest.mark.parametrize(
    "spec",
    ["xgboost>=2,<4", "scikit-learn[alldeps]==1.5.2", "numpy", "torch==2.1.0+cpu", "pkg ~= 1.2"],
)
def test_requirement_specifiers_are_accepted(spec: str) -> None:
    assert re.fullmatch(REQUIREMENT_PATTERN, spec)


@pytest.mark.parametrize(
    "spec",
    [
        "--index-url=https://elsewhere.example/simple",  # an option would redirect pip
        "-e .",
        "git+https://example.com/repo.git",
        "pkg @ https://example.com/pkg.whl",
        "./local-folder",
        'pkg; python_version < "3"',
        "two names",
    ],
)
def test_options_urls_files_and_markers_are_refused(spec: str) -> None:
    assert not re.fullmatch(REQUIREMENT_PATTERN, spec)


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip reads only a local folder of wheels, through its usual environment variables."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "probe_pkg", "1.0", "ANSWER = 42\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    return wheels


def test_requirements_install_once_and_come_first_on_both_paths(
    local_index: Path, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    target = install_requirements(["probe_pkg==1.0"], root)
    assert target is not None and (target / "probe_pkg" / "__init__.py").exists()
    assert sys.path[0] == str(target)
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(target)
    # A command objective (a child process) imports it through PYTHONPATH.
    child = subprocess.run(
        [sys.executable, "-c", "import probe_pkg; print(probe_pkg.ANSWER)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "42"
    # A second process of the pod (or a restarted container) finds them installed.
    (local_index / "probe_pkg-1.0-py3-none-any.whl").unlink()
    assert install_requirements(["probe_pkg==1.0"], root) == target


def test_a_failed_install_is_a_configuration_error_naming_the_package(
    local_index: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"objective\.requirements: pip install failed: .*absent"):
        install_requirements(["absent-package-xyz==9"], tmp_path / "cache")


def test_no_requirements_install_nothing(tmp_path: Path) -> None:
    assert install_requirements(None, tmp_path) is None
    assert not any(tmp_path.iterdir())
