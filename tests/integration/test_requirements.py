"""objective.requirements through the operator: the worker pods pip-install what the
objective needs before the first trial, from the index their environment names (here a
local folder of wheels, as PIP_NO_INDEX + PIP_FIND_LINKS give an air-gapped cluster)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from tests.integration.studies import Studies, study_body
from tests.wheels import build_wheel


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    build_wheel(folder, "probe_pkg", "1.0", "ANSWER = 42\n")
    return folder


def _body(name: str, requirement: str, wheels: Path) -> dict[str, object]:
    return study_body(
        name,
        objective={
            "function": "tests.integration.objectives:uses_probe_pkg",
            "requirements": [requirement],
        },
        budget={"trials": 4},
        workers={
            "parallelism": 2,
            "env": [
                {"name": "PIP_NO_INDEX", "value": "1"},
                {"name": "PIP_FIND_LINKS", "value": str(wheels)},
            ],
        },
    )


def test_workers_install_the_objectives_requirements_before_the_first_trial(
    studies: Studies, wheels: Path
) -> None:
    studies.create(_body("reqs", "probe_pkg==1.0", wheels))
    status = studies.wait_phase("reqs", "Succeeded", timeout=240)
    assert status["trials"]["complete"] == 4, status
    trials = studies.optuna_study("reqs").trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all(t.user_attrs["answer"] == 42 for t in done)


def test_a_requirement_pip_cannot_install_fails_the_study_with_pips_message(
    studies: Studies, wheels: Path
) -> None:
    studies.create(_body("noreqs", "probe_pkg==2.0", wheels))
    studies.wait_phase("noreqs", "Failed", timeout=240)
    failed = studies.condition("noreqs", "Failed")
    assert failed is not None and failed["reason"] == "JobFailed", failed
    assert "objective.requirements: pip install failed" in failed["message"], failed["message"]
    assert "probe_pkg==2.0" in failed["message"], failed["message"]
