"""Every `make` target and CLI command the docs tell a reader to run exists: a command in a
code span or at the start of a line in a code block (prose such as "make the rest" is not)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from optuna_operator import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    "README.md",
    "CHANGELOG.md",
    "charts/optuna-operator/README.md",
    "worker_image/README.md",
    "hack/testbed/README.md",
]
# At the start of a line (code blocks, after a shell prompt) or of a code span.
COMMAND = r"(?:^[ \t]*(?:\$ )?|`)"


def mentioned(pattern: str) -> set[tuple[str, str]]:
    found = set()
    for doc in DOCS:
        for name in re.findall(COMMAND + pattern, (ROOT / doc).read_text(), re.M):
            found.add((doc, name))
    return found


def test_make_targets_in_the_docs_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z][a-zA-Z0-9_-]*):", makefile, re.M))
    named = mentioned(r"make ([a-z][a-z0-9-]*)")
    assert len(named) > 10  # the pattern still finds the docs' commands
    assert {(doc, t) for doc, t in named if t not in targets} == set()


@pytest.mark.parametrize("prog", ["optuna-operator", "kubectl optuna"])
def test_cli_commands_in_the_docs_exist(prog: str) -> None:
    parser = cli._parser(prog, operator_commands=prog == "optuna-operator")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    named = mentioned(re.escape(prog) + r" ([a-z][a-z-]*)")
    assert named  # the pattern still finds the docs' commands
    assert {(doc, c) for doc, c in named if c not in sub.choices} == set()
