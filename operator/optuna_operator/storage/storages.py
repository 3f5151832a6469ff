"""One engine per storage URL, opened once and shared by every study on it, and the calls
into the Optuna child processes (optuna_child.py) with their failures as storage errors.

The operator process never imports Optuna: a URL's tables are checked with plain SQL
(study_rows.py), and only missing or outdated ones go to the child, which creates them.
study_store.py builds the per-study work (creating, reading, failing stale trials) on this.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn

from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from optuna_operator.contract import redact
from optuna_operator.storage.notify import TrialListener, install_trigger
from optuna_operator.storage.optuna_child import ChildError, OptunaChildren
from optuna_operator.storage.pools import engine_kwargs
from optuna_operator.storage.study_rows import StudyRows
from optuna_operator.storage.study_setup import WarmStartError

__all__ = [
    "OPERATOR_POOL_SIZE",
    "QUERY_CACHE_SIZE",
    "STATEMENT_TIMEOUT_MS",
    "StorageError",
    "Storages",
    "storage_error",
]

# No pool: each namespace has its own credential, so pooled engines would keep idle
# connections per namespace for as long as the operator runs (1,000 namespaces would
# exhaust max_connections). Unpooled, the operator holds at most one connection per
# running reconcile (8 threads), and pays one connect per refresh.
OPERATOR_POOL_SIZE: int | None = None
# A statement that takes longer is a database in trouble: fail the refresh, not hang it.
STATEMENT_TIMEOUT_MS = 30_000
# Compiled statements each engine keeps: the operator runs a few dozen distinct ones, and an
# engine per tenant with SQLAlchemy's default (500) would grow with the tenants.
QUERY_CACHE_SIZE = 50


class StorageError(Exception):
    """The storage could not be reached or used; the message is free of credentials."""


def storage_error(exc: Exception, url: str) -> NoReturn:
    """Raise `exc` as a StorageError whose message is free of `url`'s credentials."""
    raise StorageError(redact(str(exc).splitlines()[0], url)) from None


def _child_failed(exc: ChildError) -> NoReturn:
    """What the child's failure means here; its message is already free of credentials."""
    if exc.kind == "WarmStartError":
        raise WarmStartError(str(exc)) from None
    if exc.kind in ("SQLAlchemyError", "MemoryError", "timeout", "crash"):
        raise StorageError(str(exc)) from None
    raise exc


class Storages:
    """The study rows of each URL on one shared engine, and the Optuna children.

    No I/O happens under the lock every URL shares (a storage that hangs must not stall
    studies on other storages): a URL is opened under a lock of its own.
    """

    def __init__(self, listener: TrialListener | None, children: OptunaChildren) -> None:
        # With a listener, each storage gets the trial trigger and its database a LISTEN
        # connection (notify.py): trial changes wake their study's reconcile.
        self.listener = listener
        self._children = children
        self._rows: dict[str, StudyRows] = {}
        # The schema version Optuna's tables must have, as the child's Optuna reports it.
        self._schema_head: str | None = None
        self._lock = threading.Lock()  # guards the dict above and the lock table below
        self._url_locks: dict[str, threading.Lock] = {}

    def _url_lock(self, url: str) -> threading.Lock:
        with self._lock:
            return self._url_locks.setdefault(url, threading.Lock())

    def get(self, url: str) -> StudyRows:
        """The study rows of `url` on its shared engine, made on first use, when Optuna's
        tables are checked (and created by the child where missing). Connecting happens
        under this URL's lock only, never under the lock every study shares: a tenant's
        hanging database stalls that tenant's reconciles only."""
        with self._lock:
            existing = self._rows.get(url)
        if existing is not None:
            return existing
        with self._url_lock(url):
            with self._lock:
                existing = self._rows.get(url)
            if existing is not None:
                return existing
            rows = self._open(url)
            with self._lock:
                self._rows[url] = rows
            return rows

    def _open(self, url: str) -> StudyRows:
        try:
            engine = create_engine(
                url,
                query_cache_size=QUERY_CACHE_SIZE,
                **engine_kwargs(
                    url,
                    "optuna-operator",
                    pool_size=OPERATOR_POOL_SIZE,
                    statement_timeout_ms=STATEMENT_TIMEOUT_MS,
                ),
            )
            rows = StudyRows(engine)
            # Tables at the version this Optuna writes need nothing more; missing or other
            # ones go to the child, which creates them or raises Optuna's RuntimeError.
            if self._schema_head is None or rows.schema_version() != self._schema_head:
                self._schema_head = self.call("open", url)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            storage_error(exc, url)
        if self.listener is not None:
            install_trigger(engine, url)
        return rows

    def call(self, op: str, url: str, **args: Any) -> Any:
        """The child's answer to `op`; its failures as this module's errors (Optuna's
        RuntimeError of a schema it cannot use stays a RuntimeError, as it always was)."""
        try:
            return self._children.call(op, url, **args)
        except ChildError as exc:
            if exc.kind == "RuntimeError" and op == "open":
                raise RuntimeError(str(exc)) from None
            _child_failed(exc)

    def drop(self, url: str) -> None:
        """Dispose of the engine of a URL that is no longer used."""
        with self._lock:
            rows = self._rows.pop(url, None)
        if rows is not None:
            rows.engine.dispose()

    def close(self) -> None:
        """Dispose of every engine and end the Optuna children."""
        with self._lock:
            all_rows = list(self._rows.values())
            self._rows.clear()
        for rows in all_rows:
            rows.engine.dispose()
        self._children.close()
