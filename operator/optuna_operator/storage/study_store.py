"""Everything the operator asks of the Optuna storage, behind one registry of storages.

Creating, resuming and deleting a study and who owns it live in study_setup.py; the status
refresh's read (counts, best trial, Pareto front, failures) in summary.py. This module holds
the storages, one per URL, and the caches that keep a refresh to a few small queries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NoReturn

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.exc import SQLAlchemyError

from optuna_operator.api import Direction
from optuna_operator.contract import redact
from optuna_operator.storage import importances
from optuna_operator.storage.engines import engine_kwargs, heartbeat_storage
from optuna_operator.storage.notify import TrialListener, install_trigger
from optuna_operator.storage.study_setup import (
    OWNER_ATTR,
    DirectionsMismatchError,
    NewStudy,
    NotOwnedError,
    Owner,
    WarmStartError,
    claim_study,
    delete_owned_study,
    find_or_create_study,
)
from optuna_operator.storage.summary import StudyScans, StudySummary, summarize

# The study types are re-exported: the reconcile reads them as the registry's answers.
__all__ = [
    "OWNER_ATTR",
    "DirectionsMismatchError",
    "NotOwnedError",
    "Owner",
    "StorageError",
    "StoreRegistry",
    "StudyHandle",
    "StudySummary",
    "WarmStartError",
]

# No pool: each namespace has its own credential, so pooled engines would keep idle
# connections per namespace for as long as the operator runs (1,000 namespaces would
# exhaust max_connections). Unpooled, the operator holds at most one connection per
# running reconcile (8 threads), and pays one connect per refresh.
OPERATOR_POOL_SIZE: int | None = None
# A statement that takes longer is a database in trouble: fail the refresh, not hang it.
STATEMENT_TIMEOUT_MS = 30_000


class StorageError(Exception):
    """The storage could not be reached or used; the message is free of credentials."""


def _storage_error(exc: Exception, url: str) -> NoReturn:
    raise StorageError(redact(str(exc).splitlines()[0], url)) from None


@dataclass(frozen=True)
class StudyHandle:
    """An Optuna study checked for this TuningStudy: its id and what never changes."""

    study_id: int
    name: str
    directions: tuple[Direction, ...]
    start_time: datetime
    created: bool
    copied: int = 0  # trials spec.warmStart copied in at creation


class StoreRegistry:
    """One RDBStorage (and connection pool) per storage URL, shared by all studies on it.

    Safe under concurrent reconciles: no I/O happens under the registry-wide lock (a
    storage that hangs must not stall studies on other storages), and each study's scan
    cache has a lock of its own.
    """

    def __init__(self, listener: TrialListener | None = None) -> None:
        # With a listener, each storage gets the trial trigger and its database a LISTEN
        # connection (notify.py): trial changes wake their study's reconcile.
        self._listener = listener
        self._storages: dict[str, RDBStorage] = {}
        self._scans = StudyScans()
        # Studies already checked, with the attributes last written: directions cannot change
        # (a CEL rule), so a refresh needs no query until the generation moves.
        self._handles: dict[tuple[str, str], tuple[StudyHandle, dict[str, Any]]] = {}
        # Storages with heartbeats, for failing stale trials; one per URL and interval.
        self._heartbeat_storages: dict[tuple[str, int], RDBStorage] = {}
        self._lock = threading.Lock()  # guards the dicts above and the lock table below
        self._url_locks: dict[str, threading.Lock] = {}

    def _url_lock(self, url: str) -> threading.Lock:
        with self._lock:
            return self._url_locks.setdefault(url, threading.Lock())

    def _once(
        self, table: dict[Any, RDBStorage], key: Any, url: str, make: Callable[[], RDBStorage]
    ) -> RDBStorage:
        """table[key], made by `make` on first use. Connecting happens under this URL's lock
        only, never under the lock every study shares: a tenant's hanging database stalls
        that tenant's reconciles only."""
        with self._lock:
            existing = table.get(key)
        if existing is not None:
            return existing
        with self._url_lock(url):
            with self._lock:
                existing = table.get(key)
            if existing is not None:
                return existing
            made = make()
            with self._lock:
                table[key] = made
            return made

    def storage(self, url: str) -> RDBStorage:
        """The shared storage of `url`, created (connecting once) on first use."""

        def make() -> RDBStorage:
            try:
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs(
                        url,
                        "optuna-operator",
                        pool_size=OPERATOR_POOL_SIZE,
                        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
                    ),
                )
            except (SQLAlchemyError, ValueError, ImportError) as exc:
                _storage_error(exc, url)
            if self._listener is not None:
                install_trigger(storage.engine, url)
            return storage

        return self._once(self._storages, url, url, make)

    def close(self) -> None:
        """Close every pool."""
        with self._lock:
            storages = [*self._storages.values(), *self._heartbeat_storages.values()]
            self._storages.clear()
            self._heartbeat_storages.clear()
            self._handles.clear()
        self._scans.clear()
        for storage in storages:
            storage.engine.dispose()

    def drop_url(self, url: str) -> None:
        """Forget a storage URL that is no longer used (a rotated password)."""
        with self._lock:
            storages = [self._storages.pop(url, None)]
            storages += [
                self._heartbeat_storages.pop(k) for k in [*self._heartbeat_storages] if k[0] == url
            ]
            for key in [k for k in self._handles if k[0] == url]:
                del self._handles[key]
        self._scans.drop(url)
        for storage in storages:
            if storage is not None:
                storage.engine.dispose()

    def forget(self, name: str) -> None:
        """Drop what is cached of a study (it was deleted in Kubernetes)."""
        with self._lock:
            dropped = [(k[0], self._handles.pop(k)[0]) for k in [*self._handles] if k[1] == name]
        for url, handle in dropped:
            self._scans.drop(url, handle.study_id)

    # ------------------------------------------------------------------ study lifecycle

    def ensure_study(
        self,
        url: str,
        name: str,
        directions: list[Direction],
        metric_names: list[str] | None,
        enqueue: list[dict[str, Any]] | None,
        attrs: dict[str, Any],
        *,
        warm_start: str | None = None,
        warm_start_max: int | None = None,
        owner: Owner | None = None,
        adopt: bool = False,
        before_create: Callable[[], None] | None = None,
    ) -> StudyHandle:
        """Create the study once (copying the finished trials of `warm_start` into it), or
        resume it; refuse one whose directions differ.

        With an `owner`, an existing study is resumed only when it records the same
        namespace/name (a new uid is a resource re-created after a Retain delete), or, with
        `adopt`, when it records no owner at all (made outside the operator). A study of
        another TuningStudy raises NotOwnedError and is not written to. `before_create` runs
        before a study is created and may refuse by raising.
        """
        cached = self._handles.get((url, name))
        wanted = {**attrs, "owner": owner.to_attr()} if owner else dict(attrs)
        if cached is not None and cached[0].directions == tuple(directions) and cached[1] == wanted:
            return replace(cached[0], created=False)
        new = NewStudy(name, tuple(directions), metric_names, enqueue, warm_start, warm_start_max)
        storage = self.storage(url)
        try:
            study_id, created = find_or_create_study(storage, new, before_create)
            claimed = claim_study(
                storage, study_id, new, attrs, owner, adopt=adopt, created=created
            )
        except SQLAlchemyError as exc:
            _storage_error(exc, url)
        handle = StudyHandle(
            study_id, name, new.directions, claimed.start_time, created, claimed.copied
        )
        self._handles[(url, name)] = (handle, wanted)
        return handle

    def delete_study(self, url: str, name: str, owner: Owner | None = None) -> bool:
        """Delete the study; with an `owner`, only when it records exactly that owner
        (uid included: a resource that never ran it does not drop it). False when
        nothing was deleted."""
        self.forget(name)
        storage = self.storage(url)
        try:
            return delete_owned_study(storage, name, owner)
        except SQLAlchemyError as exc:
            _storage_error(exc, url)

    # ------------------------------------------------------------------ reads

    def summarize(self, url: str, handle: StudyHandle) -> StudySummary:
        """Counts, best trial and Pareto front; one pooled connection for the whole read
        (a second one requested while holding the first deadlocks a busy pool)."""
        storage = self.storage(url)
        if self._listener is not None:
            self._listener.watch(url)  # again after a listener broke
        cache, lock = self._scans.get(url, handle.study_id)
        try:
            # The scan cache of one study is read and advanced by one refresh at a time.
            with lock, storage.engine.connect() as conn:
                return summarize(conn, cache, handle.study_id, handle.directions)
        except SQLAlchemyError as exc:
            _storage_error(exc, url)

    def fail_stale_trials(self, url: str, name: str, heartbeat_interval: int) -> None:
        """Fail (and re-enqueue) trials whose heartbeat stopped. Workers do this whenever one
        of them starts a trial; when none is left running, nobody else would."""

        def make() -> RDBStorage:
            return heartbeat_storage(
                url,
                heartbeat_interval,
                application_name="optuna-operator",
                pool_size=OPERATOR_POOL_SIZE,
                statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            )

        try:
            storage = self._once(self._heartbeat_storages, (url, heartbeat_interval), url, make)
            study = optuna.load_study(study_name=name, storage=storage)
            optuna.storages.fail_stale_trials(study)
        except (SQLAlchemyError, RuntimeError) as exc:
            _storage_error(exc, url)

    def param_importances(self, url: str, name: str) -> dict[str, float]:
        """Computed once, at completion, in a child process with a memory and a time limit
        over the most recent complete trials (importances.py): the operator's memory does
        not grow with the study."""
        return importances.param_importances(url, name)
