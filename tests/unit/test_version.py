"""One version source: pyproject.toml. The package, the CLI, the chart and its default image
tags follow it; the chart's kubeVersion is what its default-on admission policy needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from optuna_operator import __version__
from optuna_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "optuna-operator"


def pyproject_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_package_version_is_pyprojects() -> None:
    # A stale editable install keeps the old metadata: `make venv` (pip install -e .) fixes it.
    assert __version__ == pyproject_version()


def test_cli_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"optuna-operator {pyproject_version()}"


def test_chart_version_and_app_version_are_pyprojects() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == pyproject_version()


def test_project_images_default_to_the_app_version() -> None:
    """Every image the project builds has an empty tag in values.yaml: the chart's helper
    falls back to appVersion, so no tag can lag behind."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    images = {
        "image": values["image"],
        "workerImage": values["workerImage"],
        "pgbouncer.image": values["pgbouncer"]["image"],
    }
    for key, image in images.items():
        assert image["repository"].startswith("ghcr.io/optuna-operator/"), key
        assert image["tag"] == "", f"{key}.tag pins a version; leave it empty (appVersion)"


def test_kube_version_is_what_the_admission_policy_needs() -> None:
    # admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy is served from 1.30 on, and
    # the chart installs it by default.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    policy = yaml.safe_load((CHART / "files" / "admission-policy.yaml").read_text())
    assert values["admissionPolicy"]["enabled"] is True
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    assert chart["kubeVersion"] == ">=1.30.0-0"


def test_changelog_has_this_version() -> None:
    headings = [
        line.removeprefix("## ").strip()
        for line in (ROOT / "CHANGELOG.md").read_text().splitlines()
        if line.startswith("## ")
    ]
    assert headings[0] == pyproject_version()
