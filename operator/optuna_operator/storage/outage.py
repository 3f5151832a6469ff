"""Riding out a database outage: bounded retries around every storage call of a worker.

A PostgreSQL restart, a failover or a dropped network path lasts seconds to a minute. A worker
that exits on the first refused connection turns that into pod back-off (minutes of idle
workers) and, repeated, into an exhausted backoffLimit and a Failed study. So every call the
worker makes to the study's database is retried while the error is a lost or refused
connection, for up to OUTAGE_SECONDS, and then the worker gives up with one clear error instead
of whatever Optuna's error handling makes of it (an UnboundLocalError, in Optuna 4 and 5).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from optuna_operator.contract import STORAGE_OUTAGE_ENV, describe_url, redact
from optuna_operator.storage.engines import HeartbeatStorage

__all__ = [
    "OUTAGE_SECONDS",
    "RETRIED_METHODS",
    "OutageGuard",
    "OutageTolerantStorage",
    "StorageUnavailable",
    "guarded_engine_call",
    "is_connection_error",
]

log = logging.getLogger(__name__)

# At least a minute of outage must pass unnoticed (issue 12); three leave room for a managed
# database's failover. Then the pod exits and the Job's back-off takes over. STORAGE_OUTAGE_ENV
# overrides it.
OUTAGE_SECONDS = 180.0
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 5.0

# Every RDBStorage method a worker reaches during a study, directly or through Optuna
# (ask, tell, report, user attributes, heartbeats, failing stale trials, samplers' reads),
# including the private ones Optuna's _CachedStorage calls instead of the public ones.
RETRIED_METHODS = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "record_heartbeat",
    "_get_stale_trial_ids",
)

T = TypeVar("T")


def _configured() -> float:
    text = os.environ.get(STORAGE_OUTAGE_ENV, "")
    try:
        return float(text) if text else OUTAGE_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number; using %.0f s", STORAGE_OUTAGE_ENV, text, OUTAGE_SECONDS)
        return OUTAGE_SECONDS


class StorageUnavailable(Exception):
    """The database stayed unreachable for longer than the worker waits."""


def is_connection_error(err: BaseException) -> bool:
    """Whether the error, or one it was raised from, says the connection failed (refused,
    reset, closed by a restarting server), as opposed to a bad query or a constraint."""
    if isinstance(err, StorageUnavailable):
        return False  # already waited for; a caller up the stack must not wait again
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OperationalError, InterfaceError)):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


class OutageGuard:
    """The retry loop, shared by the storage and the budget queries of one process."""

    def __init__(self, url: str, outage_seconds: float | None = None) -> None:
        self._url = url
        self._outage_seconds = outage_seconds if outage_seconds is not None else _configured()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        # Set once the outage outlasted the wait: every later call fails at once with it.
        self.gave_up: StorageUnavailable | None = None
        # Set by the worker on SIGTERM: the pod is going away, waiting longer helps nobody.
        self.stop: threading.Event | None = None

    def call(self, what: str, func: Callable[[], T], on_retry: Callable[[], T | None]) -> T:
        """Run func; while it fails to connect, wait and run it again. on_retry runs first
        on every retry and may return the answer itself (a write that did commit)."""
        delay = FIRST_DELAY_SECONDS
        attempt = 0
        while True:
            if self.gave_up is not None:
                raise self.gave_up
            try:
                result = func() if attempt == 0 else self._retry(func, on_retry)
            except Exception as err:
                if not is_connection_error(err):
                    raise
                down_for = self._mark_down(err, what)
                stopping = self.stop is not None and self.stop.is_set()
                if down_for >= self._outage_seconds or stopping:
                    raise self._give_up(err, down_for) from err
                attempt += 1
                sleep = min(delay, self._outage_seconds - down_for)
                if self.stop is not None:
                    self.stop.wait(sleep)
                else:
                    time.sleep(sleep)
                delay = min(delay * 2, MAX_DELAY_SECONDS)
                continue
            self._mark_up()
            return result

    @staticmethod
    def _retry(func: Callable[[], T], on_retry: Callable[[], T | None]) -> T:
        answer = on_retry()
        return answer if answer is not None else func()

    def _mark_down(self, err: BaseException, what: str) -> float:
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "Storage %s unreachable (%s in %s); retrying for up to %.0f s",
                    describe_url(self._url),
                    self._describe(err),
                    what,
                    self._outage_seconds,
                )
            return now - self._down_since

    def _mark_up(self) -> None:
        with self._lock:
            if self._down_since is not None:
                log.warning(
                    "Storage %s reachable again after %.1f s",
                    describe_url(self._url),
                    time.monotonic() - self._down_since,
                )
                self._down_since = None

    def _give_up(self, err: BaseException, down_for: float) -> StorageUnavailable:
        with self._lock:
            if self.gave_up is None:
                self.gave_up = StorageUnavailable(
                    f"the study's database {describe_url(self._url)} was unreachable for "
                    f"{down_for:.0f} s ({self._describe(err)}); giving up"
                )
            return self.gave_up

    def _describe(self, err: BaseException) -> str:
        cause = err.__cause__ if isinstance(err.__cause__, DBAPIError) else err
        detail = " ".join(str(getattr(cause, "orig", cause)).split())[:300]
        return redact(f"{type(cause).__name__}: {detail}", self._url)


class OutageTolerantStorage(HeartbeatStorage):
    """The operator's and workers' HeartbeatStorage, with calls that outlast a database
    outage of up to OUTAGE_SECONDS."""

    guard: OutageGuard

    def __init__(self, url: str, **kwargs: Any) -> None:
        # Before super(): RDBStorage's constructor already queries the database.
        self.guard = OutageGuard(url)
        super().__init__(url, **kwargs)

    def _trial_reached(self, trial_id: int, state: TrialState) -> bool | None:
        """After a retried tell: True when the lost attempt did commit this final state."""
        if not state.is_finished():
            return None  # RUNNING may be another worker's claim on a waiting trial
        try:
            stored = RDBStorage.get_trial(self, trial_id).state
        except Exception:
            return None
        return True if stored == state else None


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(HeartbeatStorage, name)

    @functools.wraps(method)
    def call(self: OutageTolerantStorage, *args: Any, **kwargs: Any) -> Any:
        def on_retry() -> Any:
            if name == "set_trial_state_values":
                # The attempt that lost its connection may have committed before it did; a
                # second one would find the trial finished and raise UpdateFinishedTrialError.
                trial_id = args[0] if args else kwargs["trial_id"]
                state = args[1] if len(args) > 1 else kwargs["state"]
                return self._trial_reached(trial_id, state)
            return None

        return self.guard.call(name, lambda: method(self, *args, **kwargs), on_retry)

    return call


for _name in RETRIED_METHODS:
    setattr(OutageTolerantStorage, _name, _retrying(_name))


def guarded_engine_call(guard: OutageGuard, what: str, engine: Engine, query: Any) -> Any:
    """One scalar query on the engine, retried like the storage's calls."""

    def run() -> Any:
        with engine.connect() as conn:
            return conn.execute(query).scalar_one()

    return guard.call(what, run, lambda: None)
