"""The user's side against the real bed and the operator: the SDK (submit, wait, best, Pareto
front, the Optuna study behind it), the CLI run as the kubectl plugin `kubectl optuna`, and
`kubectl explain` on the status."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from kubernetes import client
from tests.integration.studies import OperatorProcess, Studies, tenant_url

from optuna_operator.client import StudyClient, StudyFailedError, StudyView, quick_study
from testbed import Bed

QUADRATIC = "tests.integration.objectives:quadratic"


def kubectl(bed: Bed, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """kubectl from the bed with kubectl-optuna (this venv's bin) on PATH: a real plugin."""
    env = {
        **os.environ,
        "KUBECONFIG": str(bed.kubeconfig),
        "PATH": f"{bed.bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["kubectl", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture
def sdk(kube_api: client.ApiClient, namespace: str, operator: OperatorProcess) -> StudyClient:
    if not operator.alive():
        operator.start()
    return StudyClient(kube_api, namespace)


def test_sdk_submits_waits_and_reads_the_best_trial(
    sdk: StudyClient, kube_api: client.ApiClient
) -> None:
    study = quick_study(
        "sdk-quad",
        function=QUADRATIC,
        directions=["maximize"],
        metric_names=["score"],
        trials=8,
        seed=1,
        dashboard=False,
    )
    submitted = sdk.submit(study)
    assert submitted.namespace == sdk.namespace
    seen: list[StudyView] = []
    done = sdk.wait("sdk-quad", timeout=240, poll_interval=0.5, on_update=seen.append)
    assert done.phase == "Succeeded"
    assert seen[-1].phase == "Succeeded" and len(seen) >= 2

    best = sdk.best_trial("sdk-quad")
    assert best is not None
    # The namespace's own credential: its studies live in its schema.
    loaded = sdk.load_optuna_study("sdk-quad", tenant_url(kube_api, sdk.namespace))
    assert best.number == loaded.best_trial.number
    assert best.params == loaded.best_trial.params
    assert best.values == [pytest.approx(loaded.best_value)]
    assert sdk.pareto_front("sdk-quad") == []
    assert [v.name for v in sdk.list_studies()] == ["sdk-quad"]
    assert any(e.reason == "Succeeded" for e in sdk.events("sdk-quad"))


def test_sdk_reads_the_pareto_front_of_a_multi_objective_study(sdk: StudyClient) -> None:
    sdk.submit(
        quick_study(
            "sdk-front",
            function="examples.multi_objective:objective",
            directions=["maximize", "minimize"],
            trials=6,
            seed=7,
            sampler="NSGAII",
            dashboard=False,
        )
    )
    sdk.wait("sdk-front", timeout=240, poll_interval=0.5)
    front = sdk.pareto_front("sdk-front")
    assert 1 <= len(front) <= 6
    assert all(len(t.values) == 2 for t in front)


def test_sdk_wait_raises_with_the_failed_condition(sdk: StudyClient) -> None:
    sdk.submit(quick_study("sdk-broken", function="no_such_module:f", trials=3, dashboard=False))
    with pytest.raises(StudyFailedError, match="no_such_module"):
        sdk.wait("sdk-broken", timeout=240, poll_interval=0.5)


def test_kubectl_optuna_create_wait_list_status_best_trials(bed: Bed, studies: Studies) -> None:
    ns = studies.namespace
    created = kubectl(
        bed, "optuna", "create", "cli-quad", "-n", ns,
        "--command", "python3 -c \"print('optuna:result', -({x} - 2) ** 2)\"",
        "--param", "x=float:-10:10", "--direction", "maximize", "--metric-name", "score",
        "--trials", "6", "--seed", "3", "--no-dashboard", "--wait", "--timeout", "240",
    )  # fmt: skip
    assert f"cli-quad created in namespace {ns}" in created.stdout
    # Not a terminal: the live line becomes one line per change, ending with Succeeded.
    assert "Succeeded" in created.stdout and "best score" in created.stdout

    listed = kubectl(bed, "optuna", "list", "-n", ns).stdout.splitlines()
    assert listed[0].split()[:5] == ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST"]
    row = listed[1].split()
    assert row[:2] == ["cli-quad", "Succeeded"] and row[2].endswith("/6")
    everywhere = kubectl(bed, "optuna", "list", "-A").stdout.splitlines()
    assert any(line.split()[:2] == [ns, "cli-quad"] for line in everywhere)

    status = kubectl(bed, "optuna", "status", "cli-quad", "-n", ns).stdout
    assert "Phase:      Succeeded" in status
    assert re.search(r"Succeeded\s+True\s+TrialBudgetReached", status), status
    assert "Events:" in status and "CreatedJob" in status

    loaded = optuna.load_study(study_name=f"{ns}.cli-quad", storage=studies.storage_url())
    best = json.loads(kubectl(bed, "optuna", "best", "cli-quad", "-n", ns, "-o", "json").stdout)
    assert best["trial"] == loaded.best_trial.number
    assert best["params"] == loaded.best_trial.params
    assert best["values"] == {"score": pytest.approx(loaded.best_value)}

    # `best -o env` sourced in a shell sets the parameters.
    env = kubectl(bed, "optuna", "best", "cli-quad", "-n", ns, "-o", "env").stdout
    sourced = subprocess.run(
        ["bash", "-c", f'{env}\necho "$X"'], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert float(sourced) == pytest.approx(loaded.best_trial.params["x"])

    # Every trial comes from the namespace's dashboard (tests/node/test_trials.py); a study
    # without one says so in one line and what status holds instead.
    trials = kubectl(bed, "optuna", "trials", "cli-quad", "-n", ns, check=False)
    assert trials.returncode == 1, trials
    assert "has no dashboard to read trials from" in trials.stderr, trials.stderr
    assert "status holds the best trial" in trials.stderr, trials.stderr

    waited = kubectl(bed, "optuna", "wait", "cli-quad", "-n", ns, "--timeout", "30")
    assert f"trial: {loaded.best_trial.number}" in waited.stdout


def test_kubectl_optuna_names_what_is_missing(bed: Bed, namespace: str) -> None:
    missing = kubectl(bed, "optuna", "status", "nope", "-n", namespace, check=False)
    assert missing.returncode == 1
    assert "TuningStudy 'nope' not found" in missing.stderr


def test_kubectl_explain_describes_the_status(bed: Bed, crd_installed: None) -> None:
    explained = kubectl(bed, "explain", "tuningstudy.status.bestTrial").stdout
    assert "Best trial so far" in explained
    assert "Optuna trial number" in explained
    conditions = kubectl(bed, "explain", "tuningstudy.status.conditions").stdout
    assert "one per type" in conditions


def test_create_dry_run_yaml_applies_and_the_api_fills_the_defaults(
    bed: Bed, namespace: str, crd_installed: None, tmp_path: Path
) -> None:
    """The minimal YAML of `create --dry-run` (only what was given) is what the API server
    takes, with the pruner and sampler names the CLI offers; the server fills the rest."""
    printed = kubectl(
        bed, "optuna", "create", "git-quad", "--function", QUADRATIC, "--trials", "4",
        "--sampler", "CMAES", "--pruner", "Median", "--dry-run",
    ).stdout  # fmt: skip
    assert "workers" not in printed and "deletionPolicy" not in printed
    path = bed.kubeconfig.parent / f"{namespace}-git-quad.yaml"
    path.write_text(printed)
    kubectl(bed, "apply", "-n", namespace, "-f", str(path))
    got = kubectl(bed, "get", "tuningstudy", "git-quad", "-n", namespace, "-o", "json")
    stored = json.loads(got.stdout)
    assert stored["spec"]["sampler"]["type"] == "CMAES"
    assert stored["spec"]["pruner"]["type"] == "Median"
    assert stored["spec"]["workers"]["parallelism"] == 1  # the API's default, not the CLI's

    # Shell completion offers the study's name, read through the same kubectl.
    script = kubectl(bed, "optuna", "completion", "bash").stdout
    # HOME too: without one, kubectl writes its discovery cache to ./.kube in the checkout.
    env = {
        "KUBECONFIG": str(bed.kubeconfig),
        "PATH": f"{bed.bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
    }
    driver = (
        f"{script}\nCOMP_WORDS=(kubectl-optuna status -n {namespace} git); COMP_CWORD=4\n"
        '_optuna_operator_complete; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    offered = subprocess.run(
        ["bash", "-c", driver], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert offered == ["git-quad"]


def test_an_unreachable_cluster_is_one_line_and_exit_code_4(tmp_path: Path) -> None:
    # A bound socket that does not listen refuses every connection, and holding it keeps
    # any other process from taking the port while the test runs.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                    "users": [{"name": "u", "user": {}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        cli = str(Path(sys.executable).parent / "optuna-operator")
        for argv in (
            ["list"],
            ["status", "quad"],
            ["create", "q", "--function", "m:f", "--trials", "1"],
        ):
            done = subprocess.run(
                [cli, *argv, "--kubeconfig", str(kubeconfig)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 4, done.stderr
            assert done.stdout == ""
            assert done.stderr.splitlines() == [
                f"optuna-operator {argv[0]}: cannot reach the Kubernetes API at "
                f"https://127.0.0.1:{port}: Connection refused (is the cluster up? check --context)"
            ]


NOTEBOOK_OBJECTIVE = """\
import math


def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    trial.set_user_attr("shipped_by", "configmap")
    return -((x - 2) ** 2) + math.pi
"""


def test_create_from_file_runs_a_notebook_objective_on_the_stock_worker(
    bed: Bed, studies: Studies, tmp_path: Path
) -> None:
    """`create --from-file`: the file goes into a ConfigMap, the study names it in
    objective.source and the default worker image setting runs it; nothing of that name is
    anywhere on the worker's path but the ConfigMap."""
    ns = studies.namespace
    path = tmp_path / "notebook_quadratic.py"
    path.write_text(NOTEBOOK_OBJECTIVE)
    created = kubectl(
        bed, "optuna", "create", "nb-quad", "-n", ns, "--from-file", f"{path}:objective",
        "--direction", "maximize", "--trials", "5", "--seed", "2", "--no-dashboard",
        "--wait", "--timeout", "240",
    )  # fmt: skip
    assert f"configmap/nb-quad-objective with notebook_quadratic.py applied in namespace {ns}" in (
        created.stdout
    )
    assert "Succeeded" in created.stdout, created.stdout + created.stderr
    stored = json.loads(
        kubectl(bed, "get", "tuningstudy", "nb-quad", "-n", ns, "-o", "json").stdout
    )
    assert stored["spec"]["objective"] == {
        "function": "notebook_quadratic:objective",
        "source": {
            "configMapKeyRef": {"name": "nb-quad-objective", "key": "notebook_quadratic.py"}
        },
    }
    assert stored["status"]["trials"]["complete"] == 5, stored["status"]
    loaded = optuna.load_study(study_name=f"{ns}.nb-quad", storage=studies.storage_url())
    done = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 5 and all(t.user_attrs["shipped_by"] == "configmap" for t in done)
    assert loaded.best_value <= math.pi

    # The API server refuses a key that is not the module of objective.function.
    mismatched = tmp_path / "mismatched.yaml"
    mismatched.write_text(
        kubectl(bed, "optuna", "create", "nb-bad", "--from-file", f"{path}:objective",
                "--dry-run").stdout.replace("function: notebook_quadratic:", "function: train:")
    )  # fmt: skip
    refused = kubectl(bed, "apply", "-n", ns, "-f", str(mismatched), check=False)
    assert refused.returncode != 0
    assert "objective.source.configMapKeyRef.key must be the module of" in refused.stderr
