"""optuna-operator: Optuna studies on Kubernetes (the operator, its worker and the client SDK).

`__version__` is read from the installed distribution's metadata, so pyproject.toml is the one
place the version is written; the chart's version and appVersion are checked against it.
Importing this package loads nothing else: a client install has neither Optuna nor SQLAlchemy.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("optuna-operator")
except PackageNotFoundError:  # a source tree on sys.path without `pip install`
    __version__ = "0.0.0+unknown"
