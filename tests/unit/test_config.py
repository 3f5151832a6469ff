"""Operator settings from flags and OPTUNA_OPERATOR_* variables: the dashboards' NetworkPolicy
peers (--dashboard-allowed-from), which the chart passes as JSON from dashboard.allowedFrom."""

from __future__ import annotations

import argparse
import json

import pytest

from optuna_operator.config import OperatorSettings, add_run_arguments, settings_from_args

INGRESS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
NOTEBOOKS = {
    "namespaceSelector": {"matchLabels": {"team": "ml"}},
    "podSelector": {"matchLabels": {"app": "notebook"}},
}
OFFICE = {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}}


def settings(*argv: str) -> OperatorSettings:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_dashboards_admit_nobody_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTUNA_OPERATOR_DASHBOARD_ALLOWED_FROM", raising=False)
    assert settings().dashboard_allowed_from == []
    assert OperatorSettings().dashboard_allowed_from == []
    for empty in ("[]", "", "  ", "null"):
        assert settings(f"--dashboard-allowed-from={empty}").dashboard_allowed_from == []


def test_peers_come_through_as_given() -> None:
    peers = [INGRESS, NOTEBOOKS, OFFICE]
    parsed = settings("--dashboard-allowed-from", json.dumps(peers)).dashboard_allowed_from
    assert parsed == peers


def test_the_environment_variable_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTUNA_OPERATOR_DASHBOARD_ALLOWED_FROM", json.dumps([INGRESS]))
    assert settings().dashboard_allowed_from == [INGRESS]
    # The flag wins.
    assert settings("--dashboard-allowed-from=[]").dashboard_allowed_from == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[{", "must be a JSON list of NetworkPolicy peers"),
        ('{"namespaceSelector": {}}', "must be a JSON list"),
        ('["ingress"]', "each peer is an object"),
        ("[{}]", "each peer is an object"),
        ('[{"namespace": "ingress"}]', "each peer is an object"),
        ('[{"podSelector": "app=x"}]', "selectors and ipBlock are objects"),
        ('[{"ipBlock": {}}]', "ipBlock needs a cidr"),
    ],
)
def test_a_bad_value_stops_the_operator_with_a_reason(value: str, message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        settings("--dashboard-allowed-from", value)
    assert message in str(exc.value)
    assert "--dashboard-allowed-from" in str(exc.value)


def test_tenant_limits_come_from_flags_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = settings()
    assert (
        defaults.tenant_connection_limit,
        defaults.tenant_statement_timeout_ms,
        defaults.tenant_idle_in_transaction_timeout_ms,
    ) == (200, 60_000, 60_000)
    assert settings("--tenant-connection-limit", "7").tenant_connection_limit == 7
    monkeypatch.setenv("OPTUNA_OPERATOR_TENANT_STATEMENT_TIMEOUT_MS", "5000")
    assert settings().tenant_statement_timeout_ms == 5000
    with pytest.raises(SystemExit, match="--tenant-idle-in-transaction-timeout-ms"):
        settings("--tenant-idle-in-transaction-timeout-ms", "0")


SHARED_DASHBOARD = {
    "metadata": {"labels": {"team": "platform"}},
    "spec": {"containers": [{"name": "dashboard", "resources": {"limits": {"memory": "512Mi"}}}]},
}


def test_the_shared_dashboards_pod_template_comes_through_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPTUNA_OPERATOR_DASHBOARD_POD_TEMPLATE", raising=False)
    assert settings().dashboard_pod_template is None
    for empty in ("", "{}", "null"):
        assert settings(f"--dashboard-pod-template={empty}").dashboard_pod_template is None
    given = settings("--dashboard-pod-template", json.dumps(SHARED_DASHBOARD))
    assert given.dashboard_pod_template == SHARED_DASHBOARD
    monkeypatch.setenv("OPTUNA_OPERATOR_DASHBOARD_POD_TEMPLATE", json.dumps(SHARED_DASHBOARD))
    assert settings().dashboard_pod_template == SHARED_DASHBOARD


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "must be a JSON object"),
        ("[]", "must be a JSON object"),
        ('{"spec": {"tolerations": "all"}}', "dashboard.podTemplate.spec.tolerations"),
        (
            '{"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}',
            "dashboard.podTemplate.spec.volumes: volume root (hostPath) is not allowed",
        ),
        (
            '{"spec": {"initContainers": [{"name": "p", "image": "p:1", '
            '"securityContext": {"privileged": true}}]}}',
            "dashboard.podTemplate.spec.initContainers[p]: privileged containers are not allowed",
        ),
        ('{"spec": {"hostNetwork": true}}', "dashboard.podTemplate.spec: hostNetwork"),
    ],
)
def test_a_bad_shared_dashboard_pod_template_stops_the_operator(value: str, message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        settings("--dashboard-pod-template", value)
    assert "--dashboard-pod-template (the chart's dashboard.podTemplate)" in str(exited.value)
    assert message in str(exited.value)
