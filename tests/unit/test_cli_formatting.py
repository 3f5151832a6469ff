"""What the CLI prints and what the SDK builds, without a cluster."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from optuna_operator import cli
from optuna_operator.client import EventLine, StudyView, manifest, parse_parameter, quick_study
from optuna_operator.formatting import (
    age,
    best_output,
    progress_line,
    status_text,
    study_table,
)

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def view(name: str = "xgb", directions: list[str] | None = None, **status: Any) -> StudyView:
    directions = directions or ["maximize"]
    obj = {
        "apiVersion": "tuning.optuna-operator.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "directions": directions,
            "metricNames": ["neg_mse", "latency"][: len(directions)],
            "objective": {"function": "examples.xgb_regression:objective"},
            "budget": {"trials": 40},
        },
        "status": status,
    }
    return StudyView(StudyView.from_api(obj).study, NOW - timedelta(minutes=12))


RUNNING = {
    "phase": "Running",
    "studyName": "team-a.xgb",
    "progress": "8/40",
    "trials": {"complete": 7, "pruned": 1, "failed": 0, "running": 2, "waiting": 0, "budget": 40},
    "bestTrial": {
        "number": 5,
        "values": [-3414.97123],
        "params": {"booster": "dart", "lr": 0.05, "rate_drop": 0.1, "use_gpu": True},
    },
    "conditions": [
        {
            "type": "WorkersReady",
            "status": "True",
            "reason": "WorkersRunning",
            "message": "2 worker pods running",
            "lastTransitionTime": "2026-11-29T07:50:00Z",
        }
    ],
}


def test_age_reads_like_kubectl() -> None:
    assert age(NOW - timedelta(seconds=45), NOW) == "45s"
    assert age(NOW - timedelta(minutes=12, seconds=5), NOW) == "12m"
    assert age(NOW - timedelta(hours=3), NOW) == "3h"
    assert age(NOW - timedelta(days=2, hours=5), NOW) == "2d"
    assert age(None, NOW) == "-"


def test_study_table_has_phase_progress_running_best_and_age() -> None:
    text = study_table([view(**RUNNING), view("fresh")], NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "AGE"]
    assert lines[1].split() == ["xgb", "Running", "8/40", "2", "-3414.97", "(#5)", "12m"]
    assert lines[2].split() == ["fresh", "Pending", "0", "0", "-", "12m"]
    everywhere = study_table([view(**RUNNING)], NOW, all_namespaces=True)
    assert everywhere.splitlines()[1].split()[:2] == ["team-a", "xgb"]


def test_progress_line_names_the_metric() -> None:
    line = progress_line(view(**RUNNING))
    assert line == (
        "xgb  Running   trials    8/40  running 2  pruned 1  failed 0  best neg_mse -3414.97"
    )


def test_status_text_has_counts_best_conditions_and_events() -> None:
    events = [
        EventLine(NOW - timedelta(minutes=11), "Normal", "CreatedJob", "Created Job xgb-workers"),
        EventLine(NOW - timedelta(minutes=2), "Normal", "NewBestTrial", "Trial 5 is the best", 3),
    ]
    text = status_text(view(**RUNNING), events, NOW)
    assert "Phase:      Running" in text
    assert "Study:      team-a.xgb  (maximize neg_mse)" in text
    assert "complete 7, pruned 1, failed 0, running 2, waiting 0" in text
    assert "Best:       trial #5: neg_mse -3414.97" in text
    assert "booster = dart" in text
    assert "WorkersReady   True     WorkersRunning   2 worker pods running" in text
    assert "2m    Normal   NewBestTrial   Trial 5 is the best (x3)" in text


def test_best_json_and_yaml_carry_trial_values_and_params() -> None:
    doc = json.loads(best_output(view(**RUNNING), "json"))
    assert doc == {
        "study": "team-a.xgb",
        "trial": 5,
        "values": {"neg_mse": -3414.97123},
        "params": {"booster": "dart", "lr": 0.05, "rate_drop": 0.1, "use_gpu": True},
    }
    assert yaml.safe_load(best_output(view(**RUNNING), "yaml")) == doc


def test_best_json_with_an_infinite_value_is_strict_json() -> None:
    status = {**RUNNING, "bestTrial": {**RUNNING["bestTrial"], "values": ["Infinity"]}}
    doc = json.loads(best_output(view(**status), "json"), parse_constant=pytest.fail)
    assert doc["values"] == {"neg_mse": "Infinity"}


def test_best_env_sourced_in_a_shell_sets_the_parameters() -> None:
    status = {
        **RUNNING,
        "bestTrial": {
            **RUNNING["bestTrial"],
            "params": {"booster": "dart", "lr": 0.05, "layer.width": 64, "note": "it's $HOME; `x`"},
        },
    }
    env = best_output(view(**status), "env", prefix="HP_")
    out = subprocess.run(
        [
            "bash",
            "-c",
            f'{env}\nprintf \'%s|%s|%s|%s\' "$HP_BOOSTER" "$HP_LR" "$HP_LAYER_WIDTH" "$HP_NOTE"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "dart|0.05|64|it's $HOME; `x`"


def test_best_without_a_finished_trial_says_so() -> None:
    with pytest.raises(LookupError, match="no finished trial yet"):
        best_output(view(), "json")


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("x=float:-10:10", {"name": "x", "float": {"low": -10.0, "high": 10.0, "log": False}}),
        ("lr=float:1e-4:0.1:log", {"name": "lr", "float": {"low": 1e-4, "high": 0.1, "log": True}}),
        (
            "depth=int:2:10",
            {"name": "depth", "int": {"low": 2, "high": 10, "log": False, "step": 1}},
        ),
        ("b=cat:gbtree,dart,3", {"name": "b", "categorical": {"choices": ["gbtree", "dart", 3]}}),
    ],
)
def test_parameters_from_the_compact_cli_form(text: str, wire: dict[str, Any]) -> None:
    assert parse_parameter(text).to_wire() == wire


@pytest.mark.parametrize("text", ["x", "x=float:1", "x=float:1:2:3", "x=str:a", "1x=int:1:2"])
def test_bad_parameters_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_parameter(text)


def test_quick_study_is_validated_like_the_crd() -> None:
    study = quick_study(
        "quad",
        namespace="team-a",
        command=["python3", "obj.py", "{x}"],
        search_space=[parse_parameter("x=float:-10:10")],
        directions=["maximize"],
        trials=30,
        parallelism=2,
        seed=3,
        storage_secret="db:uri",
    )
    body = manifest(study)
    assert body["metadata"] == {"name": "quad", "namespace": "team-a"}
    assert "status" not in body
    spec = body["spec"]
    assert spec["budget"]["trials"] == 30 and spec["workers"]["parallelism"] == 2
    assert spec["storage"] == {"secretRef": {"name": "db", "key": "uri"}}
    with pytest.raises(ValidationError):
        quick_study("bad", function="m:f", directions=["sideways"])
    with pytest.raises(ValidationError):
        quick_study("bad", function="m:f", parallelism=-1)


def test_kubectl_plugin_has_the_user_commands_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.kubectl_main(["--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: kubectl optuna")
    for command in ("list", "status", "trials", "best", "logs", "dashboard", "create", "wait"):
        assert command in usage
    assert "run" not in usage.split("{")[1].split("}")[0].split(",")


def test_create_dry_run_prints_an_appliable_study(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "create",
            "quad",
            "--command",
            "python3 obj.py {x}",
            "--param",
            "x=float:-1:1",
            "--trials",
            "5",
            "--direction",
            "maximize",
            "--dry-run",
        ]
    )
    assert code == 0
    body = yaml.safe_load(capsys.readouterr().out)
    assert body["kind"] == "TuningStudy" and "namespace" not in body["metadata"]
    assert body["spec"]["objective"]["command"] == ["python3", "obj.py", "{x}"]
    assert body["spec"]["directions"] == ["maximize"]


def test_create_refuses_a_bad_parameter_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create", "q", "--command", "x", "--param", "x=float:1", "--dry-run"]) == 2
    assert "create: 'x=float:1': expected" in capsys.readouterr().err


def test_dashboard_port_forwards_the_service_through_the_api_server() -> None:
    args = argparse.Namespace(port=9000, kubeconfig="/k", context="ctx")
    assert cli.dashboard_command(args, "xgb-dashboard", "team-a") == [
        "kubectl",
        "port-forward",
        "-n",
        "team-a",
        "svc/xgb-dashboard",
        "9000:8080",
        "--kubeconfig",
        "/k",
        "--context",
        "ctx",
    ]


def test_create_dry_run_prints_only_what_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    """YAML meant for Git: the flags given plus apiVersion, kind and metadata; every default
    stays the API's (a later default applies to the study too)."""
    code = cli.main(["create", "quad", "--function", "m:f", "--trials", "5", "--dry-run"])
    assert code == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "apiVersion": "tuning.optuna-operator.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "quad"},
        "spec": {
            "directions": ["minimize"],  # required: the CLI's default
            "objective": {"function": "m:f"},
            "budget": {"trials": 5},
        },
    }
    argv = ["create", "q", "-n", "team-a", "--function", "m:f", "--timeout-seconds", "60"]
    argv += ["--sampler", "CMAES", "--pruner", "Median", "--parallelism", "3", "--no-dashboard"]
    assert cli.main([*argv, "--dry-run"]) == 0
    body = yaml.safe_load(capsys.readouterr().out)
    assert body["metadata"] == {"name": "q", "namespace": "team-a"}
    assert body["spec"] == {
        "directions": ["minimize"],
        "objective": {"function": "m:f"},
        "budget": {"timeoutSeconds": 60},
        "sampler": {"type": "CMAES"},
        "pruner": {"type": "Median"},
        "workers": {"parallelism": 3},
        "dashboard": {"enabled": False},
    }


def test_create_offers_the_apis_sampler_and_pruner_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from optuna_operator.api import PrunerType, SamplerType

    with pytest.raises(SystemExit):
        cli.main(["create", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(t.value for t in SamplerType) + "}" in usage
    assert "{" + ",".join(t.value for t in PrunerType) + "}" in usage
    assert "CmaEs" not in usage
    with pytest.raises(SystemExit) as refused:
        cli.main(["create", "q", "--function", "m:f", "--sampler", "CmaEs", "--dry-run"])
    assert refused.value.code == 2
    assert "invalid choice: 'CmaEs'" in capsys.readouterr().err


def complete(script: str, *words: str) -> list[str]:
    """What bash offers for the command line `words` (the last one being completed)."""
    line = " ".join(shlex.quote(w) for w in words)
    driver = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
        'kubectl() { echo "quad xgb"; }\n'  # stands in for the cluster's studies
        '_optuna_operator_complete; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, check=True)
    return [w for w in out.stdout.splitlines() if w]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_completes_commands_options_choices_and_studies(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    if shell == "zsh":
        # zsh runs the same function through bashcompinit; bash checks the rest.
        first, _, script = script.partition("\n")
        assert first == "autoload -U +X bashcompinit && bashcompinit"
    assert "complete -o default -F _optuna_operator_complete optuna-operator kubectl-optuna" in (
        script
    )
    assert complete(script, "optuna-operator", "cr") == ["crds", "create"]
    assert "CMAES" in complete(script, "optuna-operator", "create", "--sampler", "")
    assert complete(script, "optuna-operator", "create", "--pruner", "Me") == ["Median"]
    assert complete(script, "optuna-operator", "create", "--pr") == ["--pruner"]
    assert complete(script, "optuna-operator", "completion", "") == ["bash", "zsh"]
    assert complete(script, "optuna-operator", "status", "") == ["quad", "xgb"]
    assert complete(script, "optuna-operator", "status", "-n", "x", "q") == ["quad"]
    # A free value (a path, a number) is left to bash's default completion.
    assert complete(script, "optuna-operator", "list", "--kubeconfig", "") == []
