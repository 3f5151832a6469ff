"""`trials NAME` and `StudyClient.trials()`: every trial from the namespace's dashboard through
the API server's service proxy.

The dashboard here is the real optuna-dashboard app (the version the tests install) serving a
real Optuna study, behind a stand-in for the API server that routes
`/api/v1/namespaces/NS/services/SVC:PORT/proxy/...` to it and answers the TuningStudy, a
forbidden user and a Service without endpoints as the API server does. The real API server,
RBAC and a dashboard pod are in tests/integration/test_trials_access.py and
tests/node/test_trials.py.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution
from optuna_dashboard import wsgi

from optuna_operator import cli
from optuna_operator.client import DASHBOARD_PORT, StudyClient, StudyView
from optuna_operator.formatting import trials_output, trials_table
from optuna_operator.trials import (
    Trial,
    TrialsUnavailableError,
    dashboard_study_id,
    filter_states,
    parse_trial,
    parse_trials,
    proxy_path,
    sort_trials,
)

NS = "team-a"
STUDY = "quad"
OPTUNA_NAME = f"{NS}.{STUDY}"
SERVICE = "optuna-dashboard"
GOOD_TOKEN = "viewer-of-team-a"
FORBIDDEN_TOKEN = "viewer-of-team-b"


def run_study() -> optuna.Study:
    """Trials of every state, every parameter type, a conditional parameter, an infinite
    value and a constraint."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=OPTUNA_NAME, direction="minimize")

    def objective(trial: optuna.Trial) -> float:
        optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        if optimizer == "sgd":
            trial.suggest_float("momentum", 0.0, 0.99)
        layers = trial.suggest_int("layers", 1, 8)
        trial.suggest_categorical("width", [32, 64])
        trial.suggest_categorical("bias", [True, False])
        if trial.number == 1:
            trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [0.5, -1.0])
        if trial.number == 3:
            raise optuna.TrialPruned()
        if trial.number == 4:
            raise RuntimeError("diverged")
        return lr * layers

    study.enqueue_trial(
        {"optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "layers": 2, "width": 64, "bias": True}
    )
    study.optimize(objective, n_trials=6, catch=(RuntimeError,))
    inf = study.ask({"optimizer": CategoricalDistribution(["sgd", "adam"])})
    study.tell(inf, math.inf)
    study.ask()  # running: never told
    study.enqueue_trial({"lr": 0.01})  # waiting
    return study


def study_object(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tuning.optuna-operator.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": STUDY, "namespace": NS, "creationTimestamp": "2026-12-04T10:00:00Z"},
        "spec": {
            "directions": ["minimize"],
            "metricNames": ["loss"],
            "objective": {
                "command": ["python3", "train.py", "{lr}"],
                "searchSpace": [
                    {"name": "lr", "float": {"low": 1e-4, "high": 1.0, "log": True}},
                    {"name": "layers", "int": {"low": 1, "high": 8}},
                ],
            },
            "budget": {"trials": 10},
        },
        "status": {"phase": "Running", "studyName": OPTUNA_NAME, **status},
    }


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeApiServer:
    """Enough of the API server for the client: the TuningStudy, and the service proxy to the
    dashboard for one token (another token is refused as RBAC would)."""

    def __init__(self, dashboard: Any) -> None:
        self.dashboard = dashboard
        self.study = study_object(dashboard={"service": SERVICE})
        self.endpoints = True
        self.requests: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
        self.requests.append(path + (f"?{query}" if query else ""))
        token = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        study_path = f"/apis/tuning.optuna-operator.io/v1alpha1/namespaces/{NS}/tuningstudies/"
        proxy = f"/api/v1/namespaces/{NS}/services/{SERVICE}:{DASHBOARD_PORT}/proxy"
        if path == study_path + STUDY:
            return self.answer(start_response, 200, self.study)
        if path.startswith(study_path):
            name = path.removeprefix(study_path)
            missing = f'tuningstudies.tuning.optuna-operator.io "{name}" not found'
            return self.answer(start_response, 404, status_body(404, "NotFound", missing))
        if not path.startswith(proxy + "/"):
            return self.answer(start_response, 404, status_body(404, "NotFound", "not found"))
        if token != GOOD_TOKEN:
            denied = (
                f'services "{SERVICE}:{DASHBOARD_PORT}" is forbidden: User "bob" cannot get '
                f'resource "services/proxy" in API group "" in the namespace "{NS}"'
            )
            return self.answer(start_response, 403, status_body(403, "Forbidden", denied))
        if not self.endpoints:
            gone = f'no endpoints available for service "{SERVICE}:{DASHBOARD_PORT}"'
            return self.answer(start_response, 503, status_body(503, "ServiceUnavailable", gone))
        return list(
            self.dashboard({**environ, "PATH_INFO": path.removeprefix(proxy)}, start_response)
        )

    @staticmethod
    def answer(start_response: Any, code: int, body: dict[str, Any]) -> list[bytes]:
        start_response(f"{code} X", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return run_study()


@pytest.fixture
def server(study: optuna.Study) -> Iterator[FakeApiServer]:
    fake = FakeApiServer(wsgi(study._storage))
    httpd: WSGIServer = make_server("127.0.0.1", 0, fake, handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_port}"  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


def kubeconfig(tmp_path: Path, server: FakeApiServer, token: str) -> str:
    path = tmp_path / f"{token}.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server.url}}],  # type: ignore[attr-defined]
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": NS}}
                ],
                "current-context": "x",
            }
        )
    )
    return str(path)


def dashboard_detail(study: optuna.Study, after: int = 0) -> dict[str, Any]:
    """What the real dashboard answers for the study, as JSON."""
    app = wsgi(study._storage)
    summaries = call(app, "/api/studies")
    study_id = dashboard_study_id(summaries, OPTUNA_NAME)
    return call(app, f"/api/studies/{study_id}", f"after={after}")


def call(app: Any, path: str, query: str = "") -> dict[str, Any]:
    answer: list[str] = []
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    setup_testing_defaults(environ)
    body = b"".join(app(environ, lambda status, headers, exc_info=None: answer.append(status)))
    assert answer[0].startswith("200"), (answer, body)
    result: dict[str, Any] = json.loads(body)
    return result


# --------------------------------------------------------------------------- parsing


def test_the_dashboards_trials_parse_back_to_optunas(study: optuna.Study) -> None:
    trials = parse_trials(dashboard_detail(study))
    assert [t.number for t in trials] == [t.number for t in study.trials]
    for mine, theirs in zip(trials, study.trials, strict=True):
        # Every parameter with its type: floats, ints, categorical str/int/bool.
        assert mine.params == theirs.params, mine.number
        assert {k: type(v) for k, v in mine.params.items()} == {
            k: type(v) for k, v in theirs.params.items()
        }
        assert mine.values == (tuple(theirs.values) if theirs.values else None)
        assert mine.start == theirs.datetime_start and mine.complete == theirs.datetime_complete
    states = [t.state for t in trials]
    assert states == [
        "Complete",
        "Complete",
        "Complete",
        "Pruned",
        "Failed",
        "Complete",
        "Complete",
        "Running",
        "Waiting",
    ]
    assert trials[6].values == (math.inf,)
    assert "momentum" in trials[0].params  # the conditional parameter where it was sampled
    assert trials[1].constraints == (0.5, -1.0) and not trials[1].feasible
    assert trials[0].feasible and trials[0].duration is not None


def test_after_skips_the_trials_numbered_below_it(study: optuna.Study) -> None:
    assert [t.number for t in parse_trials(dashboard_detail(study, after=5))] == [5, 6, 7, 8]


def test_a_study_the_dashboard_does_not_list_is_unavailable() -> None:
    summaries = {"study_summaries": [{"study_id": 4, "study_name": "team-a.other"}]}
    assert dashboard_study_id(summaries, "team-a.other") == 4
    with pytest.raises(TrialsUnavailableError, match="does not list the Optuna study"):
        dashboard_study_id(summaries, OPTUNA_NAME)


def test_unknown_parameter_shapes_fall_back_to_the_dashboards_text() -> None:
    trial = parse_trial(
        {
            "number": 0,
            "state": "Complete",
            "values": ["-inf"],
            "params": [{"name": "x", "param_external_value": "odd", "distribution": {}}],
        }
    )
    assert trial.params == {"x": "odd"} and trial.values == (-math.inf,)
    assert trial.start is None and trial.duration is None


def test_sorting_by_value_puts_the_best_first_and_valueless_trials_last() -> None:
    trials = [
        Trial(0, "Complete", (3.0,)),
        Trial(1, "Pruned"),
        Trial(2, "Complete", (1.0,)),
        Trial(3, "Complete", (math.nan,)),
        Trial(4, "Complete", (2.0,)),
    ]
    assert [t.number for t in sort_trials(trials, "value", ["minimize"])] == [2, 4, 0, 3, 1]
    assert [t.number for t in sort_trials(trials, "value", ["maximize"])] == [0, 4, 2, 3, 1]
    assert [t.number for t in sort_trials(trials[::-1], "number", [])] == [0, 1, 2, 3, 4]
    assert [t.number for t in filter_states(trials, ["pruned"])] == [1]
    with pytest.raises(ValueError, match="unknown trial state"):
        filter_states(trials, ["fail"])


def test_the_proxy_path_names_the_service_and_port_rbac_sees() -> None:
    assert proxy_path("team-a", "optuna-dashboard", 8080, "api/studies") == (
        "/api/v1/namespaces/team-a/services/optuna-dashboard:8080/proxy/api/studies"
    )


# --------------------------------------------------------------------------- printing


def test_the_table_has_a_column_per_metric_and_parameter(study: optuna.Study) -> None:
    view = StudyView.from_api(study_object())
    trials = parse_trials(dashboard_detail(study))
    lines = trials_table(view, trials).splitlines()
    header = lines[0].split()
    # Declared parameters in the spec's order, then the others by name.
    assert header == [
        "TRIAL",
        "STATE",
        "loss",
        "FEASIBLE",
        "lr",
        "layers",
        "bias",
        "momentum",
        "optimizer",
        "width",
        "DURATION",
        "STARTED",
    ]
    rows = [line.split() for line in lines[1:]]
    assert rows[0][:10] == ["0", "Complete", "1", "-", "0.5", "2", "True", "0.9", "sgd", "64"]
    assert rows[1][3] == "no"  # trial 1's constraint 0.5 > 0: infeasible
    assert rows[3][:4] == ["3", "Pruned", "-", "-"]
    sampled = [("momentum" in t.params) for t in study.trials[:6]]
    assert [row[7] != "-" for row in rows[:6]] == sampled  # conditional: "-" where not sampled
    assert rows[4][1] == "Failed"
    assert rows[6][:3] == ["6", "Complete", "Infinity"]
    assert rows[7][:3] == ["7", "Running", "-"] and rows[7][-3] == "-"  # no duration yet
    assert rows[8] == ["8", "Waiting", *["-"] * 10]
    assert rows[0][-3].endswith("s")  # the duration, then the start: date and time


def test_json_is_strict_and_has_values_by_metric_name(study: optuna.Study) -> None:
    view = StudyView.from_api(study_object())
    trials = parse_trials(dashboard_detail(study))
    doc = json.loads(trials_output(view, trials, "json", 9), parse_constant=pytest.fail)
    assert doc["study"] == OPTUNA_NAME and doc["metricNames"] == ["loss"]
    assert doc["nextOffset"] == 9
    first = doc["trials"][0]
    assert first["values"] == {"loss": 1.0}
    assert first["params"] == study.trials[0].params
    assert first["state"] == "Complete" and first["durationSeconds"] >= 0
    assert doc["trials"][6]["values"] == {"loss": "Infinity"}
    assert doc["trials"][1]["feasible"] is False
    assert "values" not in doc["trials"][3]  # pruned without a value
    assert yaml.safe_load(trials_output(view, trials, "yaml", 9)) == doc


# --------------------------------------------------------------------------- the SDK and CLI


def test_the_sdk_reads_every_trial_through_the_service_proxy(
    server: FakeApiServer, tmp_path: Path, study: optuna.Study
) -> None:
    with StudyClient.from_kubeconfig(kubeconfig(tmp_path, server, GOOD_TOKEN)) as studies:
        trials = studies.trials(STUDY)
        assert [t.number for t in trials] == list(range(len(study.trials)))
        assert [t.number for t in studies.trials(STUDY, states=["complete"], offset=2)] == [2, 5, 6]
    proxy = f"/api/v1/namespaces/{NS}/services/{SERVICE}:{DASHBOARD_PORT}/proxy/api/studies"
    assert proxy in server.requests
    assert any(r.startswith(proxy + "/") and r.endswith("?after=2") for r in server.requests)


def test_cli_pages_with_limit_and_offset(
    server: FakeApiServer,
    tmp_path: Path,
    study: optuna.Study,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = kubeconfig(tmp_path, server, GOOD_TOKEN)
    assert cli.main(["trials", STUDY, "--kubeconfig", config, "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["0", "1", "2"]
    assert "6 more trials not shown; next page: --offset 3" in err
    argv = ["trials", STUDY, "--kubeconfig", config, "--offset", "3", "--limit", "3", "-o", "json"]
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [t["number"] for t in doc["trials"]] == [3, 4, 5] and doc["nextOffset"] == 6
    assert (
        cli.main(["trials", STUDY, "--kubeconfig", config, "--state", "pruned", "-o", "json"]) == 0
    )
    assert [t["number"] for t in json.loads(capsys.readouterr().out)["trials"]] == [3]
    assert cli.main(["trials", STUDY, "--kubeconfig", config, "-k", "2"]) == 0
    out, err = capsys.readouterr()
    complete = [t for t in study.trials if t.values]
    best = sorted(complete, key=lambda t: t.values[0])[:2]
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(t.number) for t in best]
    assert "more trials not shown)" in err and "--offset" not in err


def test_cli_says_who_may_list_trials_when_refused(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path, server, FORBIDDEN_TOKEN)
    assert cli.main(["trials", STUDY, "--kubeconfig", config]) == 1
    err = capsys.readouterr().err
    assert "the Kubernetes API answered 403" in err
    assert 'cannot get resource "services/proxy"' in err
    assert "needs get on services/proxy for optuna-dashboard:8080 in namespace team-a" in err
    assert "Traceback" not in err


def test_cli_explains_a_missing_or_unready_dashboard(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path, server, GOOD_TOKEN)
    server.endpoints = False
    assert cli.main(["trials", STUDY, "--kubeconfig", config]) == 1
    assert "has no ready pod yet" in capsys.readouterr().err
    server.study = study_object()  # no status.dashboard: disabled, or not up yet
    assert cli.main(["trials", STUDY, "--kubeconfig", config]) == 1
    assert "has no dashboard to read trials from" in capsys.readouterr().err
    assert cli.main(["trials", "nope", "--kubeconfig", config]) == 1
    assert "TuningStudy 'nope' not found" in capsys.readouterr().err


def test_cli_refuses_bad_paging_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--limit", "0"], ["--offset", "-1"], ["-k", "0"], ["--state", "fail"]):
        with pytest.raises(SystemExit) as refused:
            cli.main(["trials", STUDY, *flags])
        assert refused.value.code == 2, flags
    capsys.readouterr()
    assert cli.main(["trials", STUDY, "-k", "2", "--sort-by", "number"]) == 2
    assert "-k/--top is --sort-by value --limit K" in capsys.readouterr().err
