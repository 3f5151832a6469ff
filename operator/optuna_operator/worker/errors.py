"""The errors behind the worker's exit codes (the codes themselves are in the contract)."""

from __future__ import annotations

from optuna_operator.contract import ExitCode

__all__ = ["ConfigError", "ExitCode", "TooManyFailures"]


class ConfigError(Exception):
    """The configuration cannot work, so retrying the pod would only fail again."""


class TooManyFailures(Exception):
    """More trials failed than budget.maxFailedTrials allows."""
