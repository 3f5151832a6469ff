"""Exit codes the operator's Job pod failure policy acts on, and the errors behind them."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ConfigError", "ExitCode", "TooManyFailures"]


class ExitCode(IntEnum):
    """The worker's exit status; the operator's podFailurePolicy keys on 3 and 4."""

    DONE = 0  # budget, deadline or goal reached, or the study was already done
    ERROR = 1  # unexpected or transient (database unreachable): the Job may retry the pod
    CONFIG = 3  # permanent configuration error: FailJob
    TOO_MANY_FAILURES = 4  # more than budget.maxFailedTrials trials failed: FailJob


class ConfigError(Exception):
    """The configuration cannot work, so retrying the pod would only fail again."""


class TooManyFailures(Exception):
    """More trials failed than budget.maxFailedTrials allows."""
