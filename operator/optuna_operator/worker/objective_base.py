"""What both kinds of trial objective (a Python function, a command) keep about their trial."""

from __future__ import annotations

import os

import optuna

from optuna_operator.contract import STORAGE_ENV, redact
from optuna_operator.worker.signals import StopSignal

__all__ = ["ObjectiveBase"]


class ObjectiveBase:
    """The stop signal, the worker's id, the time limit, the trial in progress and the
    credential that must never reach a trial attribute."""

    def __init__(
        self,
        n_objectives: int,
        stop: StopSignal,
        worker_id: str,
        timeout_seconds: float | None,
        storage_url: str | None,
    ) -> None:
        """`storage_url`: the worker's storage URL (default: $OPTUNA_STORAGE_URL), whose
        credential never reaches a trial attribute (an error or a command's stderr may
        print it)."""
        self._n_objectives = n_objectives
        self._stop = stop
        self._worker_id = worker_id
        self._timeout = timeout_seconds
        self._storage_url = storage_url if storage_url is not None else os.environ.get(STORAGE_ENV)
        self.current: optuna.Trial | None = None

    def _redact(self, text: str) -> str:
        """The text without the storage credential or any `scheme://user:password@`."""
        return redact(text, self._storage_url)
