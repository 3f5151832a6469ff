"""The Argo CD health check the chart README gives for TuningStudies, run as Argo CD runs it:
gopher-lua (the interpreter Argo CD embeds) with Argo CD's libraries and `obj` global
(tests/unit/argocd_health/main.go), over statuses of every phase built from the API's model."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit import gobuild
from tests.unit.gobuild import cached_binary

from optuna_operator.api import PhaseName, TuningStudyStatus

ROOT = Path(__file__).resolve().parents[2]
RUNNER_SOURCE = Path(__file__).parent / "argocd_health" / "main.go"
# The gopher-lua Argo CD 2.x and 3.x build with.
GOPHER_LUA = "github.com/yuin/gopher-lua@v1.1.1"
KEY = "resource.customizations.health.tuning.optuna-operator.io_TuningStudy"
T0 = "2026-01-01T00:00:00Z"


def health_script() -> str:
    """The Lua in the chart README's argocd-cm example, exactly as a user would paste it."""
    readme = (ROOT / "charts" / "optuna-operator" / "README.md").read_text()
    found = re.search(r"```yaml\n(apiVersion: v1\nkind: ConfigMap\n.*?)```", readme, re.S)
    assert found, "the chart README has no argocd-cm example"
    script: str = yaml.safe_load(found.group(1))["data"][KEY]
    return script


def runner() -> Path:
    """The Lua runner, built once per source and gopher-lua version into the project's cache."""
    digest = hashlib.sha256(RUNNER_SOURCE.read_bytes() + GOPHER_LUA.encode()).hexdigest()[:12]
    binary = cached_binary(f"argocd-health-{digest}")
    if binary.is_file():
        return binary
    go = gobuild.go("the Argo CD health runner (gopher-lua)")
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(RUNNER_SOURCE, work)
        for step in (["mod", "init", "argocdhealth"], ["get", GOPHER_LUA]):
            subprocess.run([go, *step], cwd=work, check=True, capture_output=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            [go, "build", "-o", f"{binary}.tmp", "."], cwd=work, capture_output=True, text=True
        )
        assert built.returncode == 0, built.stderr
    Path(f"{binary}.tmp").rename(binary)
    return binary


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> Any:
    script = tmp_path_factory.mktemp("health") / "health.lua"
    script.write_text(health_script())
    binary = runner()

    def run(status: dict[str, Any] | None, generation: int = 2) -> dict[str, str]:
        obj = {"apiVersion": "tuning.optuna-operator.io/v1alpha1", "kind": "TuningStudy"}
        obj["metadata"] = {"name": "xgb", "namespace": "team-a", "generation": generation}
        if status is not None:
            obj["status"] = status
        done = subprocess.run(
            [str(binary), str(script)], input=json.dumps(obj), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        health: dict[str, str] = json.loads(done.stdout)
        return health

    return run


def condition(kind: str, status: str, reason: str, message: str, generation: int = 2) -> Any:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": T0,
    }


def status(phase: PhaseName, *conditions: Any, observed: int = 2) -> dict[str, Any]:
    wire = {"phase": phase.value, "observedGeneration": observed, "progress": "4/10"}
    wire["conditions"] = list(conditions)
    return TuningStudyStatus.model_validate(wire).to_wire()


DONE = "Trial budget reached: 10 of 10 trials finished."
BROKEN = "Objective raised in 6 trials, more than budget.maxFailedTrials (5)."
EXPECTED = {
    PhaseName.PENDING: ({}, {"status": "Progressing", "message": "Pending: 4/10 trials"}),
    PhaseName.QUEUED: ({}, {"status": "Progressing", "message": "Queued: 4/10 trials"}),
    PhaseName.RUNNING: ({}, {"status": "Progressing", "message": "Running: 4/10 trials"}),
    PhaseName.SUSPENDED: (
        {},
        {"status": "Suspended", "message": "spec.suspend is true (4/10 trials)"},
    ),
    PhaseName.SUCCEEDED: (
        {"Succeeded": ("True", "TrialBudgetReached", DONE)},
        {"status": "Healthy", "message": DONE},
    ),
    PhaseName.FAILED: (
        {"Failed": ("True", "TooManyFailedTrials", BROKEN)},
        {"status": "Degraded", "message": BROKEN},
    ),
}


def test_every_phase_has_a_case() -> None:
    assert set(EXPECTED) == set(PhaseName)


@pytest.mark.parametrize("phase", list(PhaseName), ids=str)
def test_health_of_each_phase(check: Any, phase: PhaseName) -> None:
    given, expected = EXPECTED[phase]
    conditions = [condition(kind, *args) for kind, args in given.items()]
    assert check(status(phase, *conditions)) == expected


def test_a_study_the_operator_has_not_seen_is_progressing(check: Any) -> None:
    assert check(None) == {"status": "Progressing", "message": "Waiting for the operator"}
    # A new spec (generation 3) not yet observed: the old Succeeded says nothing about it.
    done = condition("Succeeded", "True", "TrialBudgetReached", DONE)
    assert check(status(PhaseName.SUCCEEDED, done), generation=3) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 3",
    }


def test_a_refused_spec_is_degraded_at_once(check: Any) -> None:
    # InvalidSpec sets Failed for the new generation before status catches up with it.
    invalid = condition("Failed", "True", "InvalidSpec", "budget.trials must be positive", 3)
    health = check(status(PhaseName.RUNNING, invalid), generation=3)
    assert health == {"status": "Degraded", "message": "budget.trials must be positive"}


def test_broken_storage_of_a_running_study_is_degraded(check: Any) -> None:
    storage = condition("StorageReady", "False", "StorageUnreachable", "connection refused")
    assert check(status(PhaseName.RUNNING, storage)) == {
        "status": "Degraded",
        "message": "connection refused",
    }
