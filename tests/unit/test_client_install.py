"""`pip install 'optuna-operator[client]'`: the SDK and the CLI work without Optuna,
SQLAlchemy, kopf or the Prometheus client, and neither the install nor an import pulls them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from optuna_operator import client
from optuna_operator.children import manifests

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("optuna", "sqlalchemy", "kopf", "prometheus_client", "psycopg2", "sklearn")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


def test_importing_the_sdk_and_the_cli_loads_no_optuna_or_sqlalchemy() -> None:
    out = run_python(
        f"""
        import sys
        import optuna_operator.client, optuna_operator.cli, optuna_operator.formatting
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_cli_runs_where_optuna_and_sqlalchemy_cannot_be_imported() -> None:
    # As on a client-only install: a finder refuses the heavy packages, then the CLI builds a
    # study (models, validation, YAML) and prints its help and version.
    out = run_python(
        f"""
        import sys
        from importlib.abc import MetaPathFinder

        class Absent(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Absent())
        from optuna_operator.cli import main

        code = main(["create", "quad", "--function", "m:f", "--trials", "3", "--dry-run"])
        assert code == 0, code
        for argv in (["create", "--help"], ["trials", "--help"], ["--version"]):
            try:
                main(argv)
            except SystemExit as exited:
                assert exited.code == 0, argv
        """
    )
    assert out.returncode == 0, out.stderr
    assert "kind: TuningStudy" in out.stdout
    assert "--pruner" in out.stdout


def test_the_client_extra_and_the_base_install_hold_no_optuna_or_sqlalchemy() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["client"]]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in wanted}
    assert names == {"pydantic", "pyyaml", "kubernetes"}
    for extra in ("worker", "operator"):
        held = " ".join(project["optional-dependencies"][extra]).lower()
        assert "optuna==" in held and "sqlalchemy" in held and "psycopg2" in held, extra


def test_the_client_spells_the_operators_label_and_port() -> None:
    # client.py cannot import manifests (it loads Optuna through the contract module).
    assert client.STUDY_LABEL == manifests.STUDY_LABEL
    assert client.DASHBOARD_PORT == manifests.DASHBOARD_PORT
