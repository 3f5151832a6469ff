"""The chart's alerts and Grafana queries executed by Prometheus's own engine: `promtool check
rules` and `promtool test rules` (pinned promtool from the Go module proxy, built once into
the project's cache) over the rendered PrometheusRule and the dashboard's queries, with input
series shaped like the operator's metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from optuna_operator import __version__

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "optuna-operator"
JOB = "optuna-operator-metrics"
# The 2h the fixtures expect for OptunaStudyNoProgress.
RULE_VALUES = ["--set", "metrics.prometheusRule.enabled=true"]
RULE_VALUES += ["--set", "metrics.prometheusRule.noProgressFor=2h"]


@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool as `make promtool` (hack/build-promtool.sh, pinned in hack/versions.env)
    built it, every service discovery left out: it reads only files here."""
    out = subprocess.run(
        [str(ROOT / "hack" / "build-promtool.sh"), "--print"], capture_output=True, text=True
    )
    binary = Path(out.stdout.strip().splitlines()[-1]) / "promtool"
    if not binary.is_file():
        pytest.fail(f"promtool is missing ({binary}): run `make promtool`")
    return binary


def render(*values: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-binaries.sh"), "--print"], capture_output=True, text=True
    )
    helm = Path(out.stdout.strip().splitlines()[-1]) / "helm"
    assert helm.is_file(), f"the pinned helm is missing ({helm}): run `make binaries`"
    args = [str(helm), "template", "optuna-operator", str(CHART), "-n", "optuna-system"]
    done = subprocess.run([*args, *values], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def run(promtool: Path, *args: str, cwd: Path) -> str:
    done = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(1800)  # a cold promtool build
def test_alerts_pass_promtool_check_and_their_unit_tests(promtool: Path, tmp_path: Path) -> None:
    rule = next(d for d in render(*RULE_VALUES) if d["kind"] == "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "SUCCESS: 5 rules found" in run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    shutil.copy(Path(__file__).parent / "promtool" / "alerts-test.yaml", tmp_path)
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts-test.yaml", cwd=tmp_path)


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    every = {"job": JOB, **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in every.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


STUDY = {"namespace": "team-a", "name": "xgb"}
# Ten minutes of one Running study: 2 trials complete a minute, 1 fails a minute, 2 run at a
# time; reconciles take up to 0.1 s half of the time and up to 0.5 s the other half; 3
# storage errors a minute.
INPUT = [
    series("optuna_operator_study_phase", "1x10", **STUDY, phase="Running"),
    series("optuna_operator_study_phase", "0x10", **STUDY, phase="Failed"),
    series("optuna_operator_study_trials", "0+2x10", **STUDY, state="complete"),
    series("optuna_operator_study_trials", "2x10", **STUDY, state="running"),
    series("optuna_operator_study_trials_finished_total", "0+2x10", **STUDY, state="complete"),
    series("optuna_operator_study_trials_finished_total", "0x10", **STUDY, state="pruned"),
    series("optuna_operator_study_trials_finished_total", "0+1x10", **STUDY, state="failed"),
    series("optuna_operator_reconcile_duration_seconds_bucket", "0+1x10", le="0.1"),
    series("optuna_operator_reconcile_duration_seconds_bucket", "0+2x10", le="0.5"),
    series("optuna_operator_reconcile_duration_seconds_bucket", "0+2x10", le="+Inf"),
    series("optuna_operator_reconcile_errors_total", "0+3x10", kind="storage"),
    series("optuna_operator_build_info", "1x10", version=__version__),
]
TEAM = '{name="xgb", namespace="team-a"}'
# What each panel shows at 10m, by panel title and query order.
EXPECTED = {
    ("Studies by phase", 0): {'{phase="Running"}': 1, '{phase="Failed"}': 0},
    ("Finished trials per minute", 0): {TEAM: 2},
    ("Trials by state", 0): {'{state="complete"}': 20, '{state="running"}': 2},
    ("Failed trials in the last hour", 0): {TEAM: 10},
    ("Reconcile duration (p50, p95)", 0): {"{}": 0.1},
    ("Reconcile duration (p50, p95)", 1): {"{}": 0.46},
    ("Reconcile errors per minute", 0): {'{kind="storage"}': 3},
    ("Operator versions", 0): {f'{{version="{__version__}"}}': 1},
}


def dashboard_queries() -> dict[tuple[str, int], str]:
    values = ["--set", "metrics.grafanaDashboard.enabled=true"]
    config_map = next(d for d in render(*values) if d["kind"] == "ConfigMap")
    dashboard = json.loads(config_map["data"]["optuna-operator.json"])
    return {
        (panel["title"], i): target["expr"].replace("$job", JOB)
        for panel in dashboard["panels"]
        for i, target in enumerate(panel["targets"])
    }


@pytest.mark.timeout(1800)  # a cold promtool build
def test_grafana_queries_evaluate_to_what_the_panels_should_show(
    promtool: Path, tmp_path: Path
) -> None:
    queries = dashboard_queries()
    assert set(queries) == set(EXPECTED), "a panel changed: give it an expected value here"
    tests = [
        {
            "expr": expr,
            "eval_time": "10m",
            "exp_samples": [{"labels": k, "value": v} for k, v in EXPECTED[key].items()],
        }
        for key, expr in queries.items()
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "fuzzy_compare": True,  # histogram_quantile's interpolation is floating point
        "tests": [{"interval": "1m", "input_series": INPUT, "promql_expr_test": tests}],
    }
    (tmp_path / "dashboard-test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert "SUCCESS" in run(promtool, "test", "rules", "dashboard-test.yaml", cwd=tmp_path)
