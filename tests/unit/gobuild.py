"""Where tests keep the Go tools they build once (the project's cache, beside the bed's
binaries), and the Go toolchain that builds them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["cached_binary", "go"]


def cached_binary(*parts: str) -> Path:
    """A path under the cache's bin/ (OPTUNA_OPERATOR_CACHE, as hack/nodebed/common.sh)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "optuna-operator"
    return Path(os.environ.get("OPTUNA_OPERATOR_CACHE", default)).joinpath("bin", *parts)


def go(purpose: str) -> str:
    """The go command, or a failure that says what it was needed for."""
    found = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(found).is_file():
        pytest.fail(f"Go is needed to build {purpose} from the Go module proxy: install Go")
    return found
