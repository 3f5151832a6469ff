"""`StudyClient.tune(fn)` from a user's script: the function's source travels in a ConfigMap
owned by the study, the stock worker runs it, and tune() returns the study's best trial."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from kubernetes import client
from tests.integration import tune_objectives
from tests.integration.studies import Studies, wait_for

from optuna_operator.api import GROUP, PLURAL, VERSION, Budget
from optuna_operator.cli import main
from optuna_operator.client import StudyClient
from optuna_operator.objective_source import StudyExistsError
from testbed import Bed

# A user's script, run as `python tune_quadratic.py NAMESPACE`: the objective lives in
# __main__, so tune() ships the function and the imports it uses (math), not the script,
# whose top level would call tune() again in every worker.
SCRIPT = """\
import json
import math
import sys

from optuna_operator.api import Budget
from optuna_operator.cli import main
from optuna_operator.client import StudyClient


def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    trial.set_user_attr("shipped_by", "tune")
    return -((x - 2) ** 2) + math.pi


with StudyClient.from_kubeconfig(namespace=sys.argv[1]) as studies:
    best = studies.tune(
        objective,
        name="tuned",
        directions=["maximize"],
        budget=Budget(trials=6),
        parallelism=2,
        seed=4,
        dashboard=False,
        timeout=240,
    )
print(json.dumps(best.model_dump(mode="json")))
"""


def run_script(bed: Bed, path: Path, namespace: str) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(bed.kubeconfig)}
    done = subprocess.run(
        [sys.executable, str(path), namespace],
        env=env,
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_tune_runs_a_script_function_on_the_stock_worker_and_returns_its_best(
    bed: Bed, studies: Studies, kube_api: client.ApiClient, tmp_path: Path
) -> None:
    ns = studies.namespace
    script = tmp_path / "tune_quadratic.py"
    script.write_text(SCRIPT)
    best = run_script(bed, script, ns)

    stored = studies.get("tuned")
    assert stored["status"]["phase"] == "Succeeded", stored["status"]
    assert stored["spec"]["objective"] == {
        "function": "objective:objective",
        "source": {"configMapKeyRef": {"name": "tuned-objective", "key": "objective.py"}},
    }
    assert stored["status"]["trials"]["complete"] == 6, stored["status"]
    assert best == stored["status"]["bestTrial"]  # number, values, params
    loaded = optuna.load_study(study_name=f"{ns}.tuned", storage=studies.storage_url())
    done = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6 and {t.user_attrs["shipped_by"] for t in done} == {"tune"}
    assert best["number"] == loaded.best_trial.number
    assert best["params"] == loaded.best_trial.params
    assert best["values"] == [pytest.approx(loaded.best_value)]
    assert loaded.best_value <= math.pi

    # The study owns its ConfigMap: a second tune() of that name is refused before it is
    # touched, and deleting the study deletes it.
    core = client.CoreV1Api(kube_api)
    config_map = core.read_namespaced_config_map("tuned-objective", ns)
    (owner,) = config_map.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == (
        "TuningStudy",
        "tuned",
        stored["metadata"]["uid"],
    )
    assert "def objective(trial):" in config_map.data["objective.py"]
    with pytest.raises(StudyExistsError, match=f"TuningStudy {ns}/tuned exists already"):
        StudyClient(kube_api, ns).tune(tune_objectives.front, name="tuned", budget=Budget(trials=1))
    again = core.read_namespaced_config_map("tuned-objective", ns)
    assert again.metadata.resource_version == config_map.metadata.resource_version

    studies.delete("tuned")
    wait_for(lambda: _gone(core, ns, "tuned-objective"), 120, "the study's ConfigMap to go")


def test_tune_of_a_module_function_returns_the_pareto_front(
    studies: Studies, kube_api: client.ApiClient
) -> None:
    sdk = StudyClient(kube_api, studies.namespace)
    front = sdk.tune(
        tune_objectives.front,
        name="tuned-front",
        directions=["maximize", "minimize"],
        budget=Budget(trials=5),
        sampler="NSGAII",
        seed=5,
        dashboard=False,
        timeout=240,
    )
    stored = studies.get("tuned-front")
    assert stored["spec"]["objective"]["function"] == "tune_objectives:front"
    assert isinstance(front, list) and 1 <= len(front) <= 5
    assert [t.model_dump(mode="json") for t in front] == stored["status"]["paretoFront"]
    custom = client.CustomObjectsApi(kube_api)
    assert (
        custom.get_namespaced_custom_object(
            GROUP, VERSION, studies.namespace, PLURAL, "tuned-front"
        )["status"]["trials"]["complete"]
        == 5
    )


def _gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_config_map(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_create_from_file_gives_the_configmap_to_the_study(
    bed: Bed,
    studies: Studies,
    kube_api: client.ApiClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI ships through the same code: the ConfigMap first, then the study, which then
    owns it; a study of that name that exists is refused in one line, its ConfigMap kept."""
    ns = studies.namespace
    path = tmp_path / "train.py"
    path.write_text("def objective(trial):\n    return trial.suggest_float('x', 0, 1)\n")
    argv = [
        "create", "owned", "-n", ns, "--kubeconfig", str(bed.kubeconfig),
        "--from-file", f"{path}:objective", "--trials", "1", "--no-dashboard",
    ]  # fmt: skip
    assert main(argv) == 0
    core = client.CoreV1Api(kube_api)
    config_map = core.read_namespaced_config_map("owned-objective", ns)
    (owner,) = config_map.metadata.owner_references
    assert (owner.name, owner.uid) == ("owned", studies.get("owned")["metadata"]["uid"])

    path.write_text("def objective(trial):\n    return 0.0\n")
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"optuna-operator create: TuningStudy {ns}/owned exists already and its workers read "
        "ConfigMap owned-objective: delete the study first or choose another name"
    ]
    kept = core.read_namespaced_config_map("owned-objective", ns)
    assert kept.data == config_map.data
