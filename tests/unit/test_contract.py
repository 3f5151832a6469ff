"""The operator and the worker share names only through `optuna_operator.contract`."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna_operator
from optuna_operator.contract import redact

PACKAGE = Path(optuna_operator.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_operator_modules_do_not_import_the_worker() -> None:
    # cli.py only dispatches the `worker` subcommand to the worker package.
    operator_modules = [p for p in PACKAGE.glob("*.py") if p.name != "cli.py"]
    offenders = {
        p.name: sorted(m for m in _imports(p) if m.startswith("optuna_operator.worker"))
        for p in operator_modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_redact_hides_the_password_and_keeps_where() -> None:
    url = "postgresql+psycopg2://optuna:s3cr%40t@db.example:5432/optuna"
    message = redact(f"could not connect to {url} (password s3cr%40t)", url)
    assert "s3cr" not in message
    assert "postgresql://db.example:5432/optuna" in message
