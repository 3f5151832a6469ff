"""Everything the operator asks of the Optuna storage about its studies, behind one registry.

Creating, resuming and deleting a study and who owns it live in study_setup.py; the status
refresh's read (counts, best trial, Pareto front, failures) in summary.py; the engines, one
per URL, and the calls into the Optuna child process in storages.py. This module holds the
per-study work and the caches that keep a refresh to a few small queries.

The operator process never imports Optuna: what a reconcile reads and writes on every pass is
plain SQL on Optuna's tables (study_rows.py, summary.py), and the rare work that needs Optuna
itself (creating tables and studies, deleting a study, failing stale trials) goes to a child
process (optuna_child.py) that exits when idle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from optuna_operator.api import Direction, StopReason
from optuna_operator.contract import STOP_REQUEST_ATTR
from optuna_operator.storage import importances
from optuna_operator.storage.notify import TrialListener
from optuna_operator.storage.optuna_child import ChildError, OptunaChildren
from optuna_operator.storage.storages import StorageError, Storages, storage_error
from optuna_operator.storage.study_rows import StudyRows
from optuna_operator.storage.study_setup import (
    OPTUNA_VERSION,
    OWNER_ATTR,
    DirectionsMismatchError,
    NewStudy,
    NotOwnedError,
    Owner,
    WarmStartError,
    claim_study,
    find_or_create_study,
)
from optuna_operator.storage.summary import StudyScans, StudySummary, summarize

# The study types are re-exported: the reconcile reads them as the registry's answers.
__all__ = [
    "OPTUNA_VERSION",
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

log = logging.getLogger(__name__)

# A RUNNING trial of the study with no heartbeat or a stale one: only then has Optuna's pass
# (in the child) anything to do. Heartbeats are written with the database's clock, in the
# session's time zone, and compared as Optuna compares them.
_STALE_OR_SILENT = text(
    "SELECT 1 FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE s.study_name = :name AND t.state = 'RUNNING' AND (h.heartbeat IS NULL "
    "OR h.heartbeat <= LOCALTIMESTAMP - :grace * INTERVAL '1 second') LIMIT 1"
)


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
    """The operator's work on its studies, over the shared engines and Optuna children of
    `Storages` (storages.py), with the caches that keep a refresh to a few small queries.

    Safe under concurrent reconciles: no I/O happens under the registry-wide lock (a
    storage that hangs must not stall studies on other storages), and each study's scan
    cache has a lock of its own.
    """

    def __init__(
        self, listener: TrialListener | None = None, children: OptunaChildren | None = None
    ) -> None:
        self._storages = Storages(listener, children or OptunaChildren())
        self._scans = StudyScans()
        # Studies already checked, with the attributes last written: directions cannot change
        # (a CEL rule), so a refresh needs no query until the generation moves.
        self._handles: dict[tuple[str, str], tuple[StudyHandle, dict[str, Any]]] = {}
        # Trials found running without a heartbeat by the last stale-trial pass of a study
        # (url, name): the next pass gives them one (engines.HeartbeatStorage).
        self._silent: dict[tuple[str, str], list[int]] = {}
        # (storage URL, study id) -> the stop request last written there
        self._stop_requests: dict[tuple[str, int], dict[str, str | int | None]] = {}
        self._lock = threading.Lock()  # guards the dicts above

    def storage(self, url: str) -> StudyRows:
        """The study rows of `url` on its shared engine, made on first use (Storages.get)."""
        return self._storages.get(url)

    def close(self) -> None:
        """Dispose of every engine and end the Optuna children."""
        with self._lock:
            self._handles.clear()
            self._silent.clear()
        self._scans.clear()
        self._storages.close()

    def drop_url(self, url: str) -> None:
        """Forget a storage URL that is no longer used (a rotated password)."""
        caches: tuple[dict[tuple[str, str], Any], ...] = (self._handles, self._silent)
        with self._lock:
            for cache in caches:
                for key in [k for k in cache if k[0] == url]:
                    del cache[key]
        self._scans.drop(url)
        self._storages.drop(url)

    def forget(self, name: str) -> None:
        """Drop what is cached of a study (it was deleted in Kubernetes)."""
        with self._lock:
            dropped = [(k[0], self._handles.pop(k)[0]) for k in [*self._handles] if k[1] == name]
            for key in [k for k in self._silent if k[1] == name]:
                del self._silent[key]
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
            study_id, created = find_or_create_study(
                storage,
                new,
                before_create,
                lambda new: self._storages.call("create", url, new=new.to_json()),
            )
            claimed = claim_study(
                storage, study_id, new, attrs, owner, adopt=adopt, created=created
            )
        except SQLAlchemyError as exc:
            storage_error(exc, url)
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
        self.storage(url)
        deleted: bool = self._storages.call(
            "delete", url, name=name, owner=owner.to_attr() if owner is not None else None
        )
        return deleted

    # ------------------------------------------------------------------ reads

    def summarize(self, url: str, handle: StudyHandle) -> StudySummary:
        """Counts, best trial and Pareto front; one pooled connection for the whole read
        (a second one requested while holding the first deadlocks a busy pool)."""
        storage = self.storage(url)
        if self._storages.listener is not None:
            self._storages.listener.watch(url)  # again after a listener broke
        cache, lock = self._scans.get(url, handle.study_id)
        try:
            # The scan cache of one study is read and advanced by one refresh at a time.
            with lock, storage.engine.connect() as conn:
                return summarize(conn, cache, handle.study_id, handle.directions)
        except SQLAlchemyError as exc:
            storage_error(exc, url)

    def fail_stale_trials(self, url: str, name: str, heartbeat_interval: int) -> None:
        """Fail (and re-enqueue) trials whose heartbeat stopped. Workers do this whenever one
        of them starts a trial; when none is left running, nobody else would."""

        storage = self.storage(url)
        key = (url, name)
        if storage.engine.dialect.name == "postgresql":
            # Most calls find nothing to do: the child (and Optuna) only when there is.
            try:
                with storage.engine.connect() as conn:
                    found = conn.execute(
                        _STALE_OR_SILENT, {"name": name, "grace": 2 * heartbeat_interval}
                    ).first()
            except SQLAlchemyError as exc:
                storage_error(exc, url)
            if found is None:
                with self._lock:
                    self._silent.pop(key, None)
                return
        with self._lock:
            silent = self._silent.get(key, [])
        try:
            left = self._storages.call(
                "fail_stale", url, name=name, heartbeat_interval=heartbeat_interval, silent=silent
            )
        except ChildError as exc:  # Optuna's KeyError of a study deleted meanwhile, and such
            storage_error(exc, url)
        with self._lock:
            if left:
                self._silent[key] = left
            else:
                self._silent.pop(key, None)

    def stop_workers(self, url: str, handle: StudyHandle, timeout_seconds: int | None) -> None:
        """Ask the workers, through the study's system attributes they read before each
        trial, to start no more: the time budget (active time) ran out. Written once; a
        failure is logged and the next refresh tries again."""
        request: dict[str, str | int | None] = {
            "reason": StopReason.TIME.value,
            "timeoutSeconds": timeout_seconds,
        }
        key = (url, handle.study_id)
        with self._lock:
            if self._stop_requests.get(key) == request:
                return
        try:
            self.storage(url).set_study_system_attr(handle.study_id, STOP_REQUEST_ATTR, request)
        except (StorageError, SQLAlchemyError) as exc:
            log.warning(
                "Could not ask the workers of %s to stop: %s", handle.name, type(exc).__name__
            )
            return
        with self._lock:
            self._stop_requests[key] = request
        log.info("Asked the workers of %s to stop: the time budget ran out", handle.name)

    def param_importances(self, url: str, name: str) -> dict[str, float]:
        """Computed once, at completion, in a child process with a memory and a time limit
        over the most recent complete trials (importances.py): the operator's memory does
        not grow with the study."""
        return importances.param_importances(url, name)
