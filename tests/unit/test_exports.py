"""Every module's `__all__` is its public face: each name another module of the package
imports from it is listed there, so a reader of `__all__` sees everything others rely on."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "operator" / "optuna_operator"


def _imports() -> list[tuple[str, str, str]]:
    """(importing file, imported module, name) for every `from optuna_operator... import`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "optuna_operator"
            ):
                for alias in node.names:
                    if alias.name == "*":  # a package face re-exporting a module's __all__
                        continue
                    found.append((str(path.relative_to(PACKAGE)), str(node.module), alias.name))
    return found


def test_every_name_imported_across_modules_is_exported() -> None:
    missing = []
    for importer, module_name, name in _imports():
        try:
            importlib.import_module(f"{module_name}.{name}")
            continue  # a submodule, not a name
        except ModuleNotFoundError:
            module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None)
        if exported is None or name not in exported:
            missing.append(f"{importer}: {module_name}.{name}")
    assert not missing, "imported but not in __all__:\n" + "\n".join(sorted(set(missing)))


def test_imports_are_found() -> None:
    assert len(_imports()) > 100
