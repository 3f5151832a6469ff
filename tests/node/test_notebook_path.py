"""From a notebook to a study in real containers, with no image built: `create --from-file`
of a plain Python file and `StudyClient.tune()` from a script both run on the chart's stock
worker image (no examples/, none of the user's code in it) and reach Succeeded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.node.conftest import STUDY_NS, Kube

# A file as a notebook user writes it: nothing of it is in the worker image.
NOTEBOOK_FILE = """\
import math


def objective(trial):
    x = trial.suggest_float("x", -4, 4)
    trial.set_user_attr("ran_in", "from-file")
    return (x - 1) ** 2 + math.e
"""

# A user's script run from a laptop: tune() ships the function and the imports it uses.
SCRIPT = """\
import json
import math
import sys

from optuna_operator.api import Budget
from optuna_operator.client import StudyClient


def objective(trial):
    x = trial.suggest_float("x", -4, 4)
    return (x + 1) ** 2 + math.pi


studies = StudyClient.from_kubeconfig(sys.argv[1], namespace=sys.argv[2])
best = studies.tune(objective, name="node-tuned", directions=["minimize"],
                    budget=Budget(trials=4), parallelism=2, seed=5, dashboard=False, timeout=540)
print(json.dumps(best.model_dump(mode="json")))
"""


def _cli(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    """`optuna-operator` as a user runs it, with the bed's kubeconfig."""
    return subprocess.run(
        [sys.executable, "-m", "optuna_operator.cli", *args,
         "--kubeconfig", str(kube.bed.kubeconfig)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip


def _status(kube: Kube, name: str) -> dict[str, Any]:
    return dict(kube.get("ts", name, "-n", STUDY_NS).get("status") or {})


def test_create_from_file_runs_on_the_stock_worker_image(
    kube: Kube, chart: str, tmp_path: Path
) -> None:
    path = tmp_path / "notebook_objective.py"
    path.write_text(NOTEBOOK_FILE)
    done = _cli(
        kube, "create", "node-from-file", "-n", STUDY_NS, "--from-file", f"{path}:objective",
        "--direction", "minimize", "--trials", "4", "--parallelism", "2", "--seed", "4",
        "--no-dashboard", "--wait", "--timeout", "540",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    status = _status(kube, "node-from-file")
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert status["trials"]["complete"] == 4, status["trials"]
    spec = kube.get("ts", "node-from-file", "-n", STUDY_NS)["spec"]
    assert "image" not in spec["workers"], spec["workers"]  # the chart's stock worker image
    assert spec["objective"]["source"]["configMapKeyRef"]["key"] == "notebook_objective.py"


def test_tune_from_a_script_runs_on_the_stock_worker_image(
    kube: Kube, chart: str, tmp_path: Path
) -> None:
    script = tmp_path / "tune_script.py"
    script.write_text(SCRIPT)
    ran = subprocess.run(
        [sys.executable, str(script), str(kube.bed.kubeconfig), STUDY_NS],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    best = json.loads(ran.stdout.strip().splitlines()[-1])
    status = _status(kube, "node-tuned")
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert status["trials"]["complete"] == 4, status["trials"]
    assert best["values"] == status["bestTrial"]["values"]
    assert best["values"][0] >= 3.14159
