"""Everything the operator asks of the Optuna storage.

Status refreshes run every few seconds for every study, so reads here are SQL aggregates
and incremental scans: their cost does not grow with the number of trials.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import optuna
from optuna.distributions import json_to_distribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from optuna_operator.api import PARETO_FRONT_LIMIT, BestTrial, Direction
from optuna_operator.contract import (
    ERROR_ATTR,
    STUDY_ATTR_PREFIX,
    STUDY_START_TIME_ATTR,
    WARM_START_ATTR,
    from_optuna_direction,
    redact,
    to_optuna_direction,
)
from optuna_operator.storage import importances
from optuna_operator.storage.engines import engine_kwargs, heartbeat_storage

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

log = logging.getLogger(__name__)

# The TuningStudy (namespace, name, uid) that created or adopted the study.
OWNER_ATTR = f"{STUDY_ATTR_PREFIX}owner"
# Written by every operator version since 0.1.0, which recorded no owner.
LEGACY_ATTR = f"{STUDY_ATTR_PREFIX}operator_version"


# No pool: each namespace has its own credential, so pooled engines would keep idle
# connections per namespace for as long as the operator runs (1,000 namespaces would
# exhaust max_connections). Unpooled, the operator holds at most one connection per
# running reconcile (8 threads), and pays one connect per refresh.
OPERATOR_POOL_SIZE: int | None = None
# A statement that takes longer is a database in trouble: fail the refresh, not hang it.
STATEMENT_TIMEOUT_MS = 30_000


class StorageError(Exception):
    """The storage could not be reached or used; the message is free of credentials."""


class DirectionsMismatchError(Exception):
    """The spec's directions differ from those the Optuna study was created with."""


class WarmStartError(Exception):
    """The study named by spec.warmStart cannot be copied from."""


class NotOwnedError(Exception):
    """The study belongs to another TuningStudy, or was made outside the operator and the
    spec does not opt into adopting it; the message says which."""


@dataclass(frozen=True)
class Owner:
    """The TuningStudy an Optuna study belongs to, as recorded in its system attrs."""

    namespace: str
    name: str
    uid: str

    def to_attr(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    def same_resource(self, attr: object) -> bool:
        """Whether `attr` names this namespace/name (a re-created resource has a new uid)."""
        return (
            isinstance(attr, dict)
            and attr.get("namespace") == self.namespace
            and attr.get("name") == self.name
        )


@dataclass
class StudySummary:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    # FAIL trials whose objective raised (not lost heartbeats or SIGTERM): these count
    # against budget.maxFailedTrials, as they do in the workers.
    failed_by_objective: int = 0
    running: int = 0
    waiting: int = 0
    best: BestTrial | None = None
    pareto_front: list[BestTrial] = field(default_factory=list)
    last_error: str | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


@dataclass(frozen=True)
class StudyHandle:
    study_id: int
    name: str
    directions: tuple[Direction, ...]
    start_time: datetime
    created: bool


@dataclass
class _ScanCache:
    """What earlier refreshes learned about a study. Trials up to `settled_id` are all
    finished (finished states are final), so their counts never need reading again."""

    settled_id: int = 0
    settled_counts: dict[str, int] = field(default_factory=dict)
    after_trial_id: int = 0
    front: dict[int, tuple[int, tuple[float, ...]]] = field(default_factory=dict)
    # Params of finished trials never change: fetched once per front member.
    params: dict[int, dict[str, Any]] = field(default_factory=dict)


def _dominates(a: tuple[float, ...], b: tuple[float, ...], signs: tuple[int, ...]) -> bool:
    """a dominates b; values are compared after turning every direction into maximize."""
    better_or_equal = all(s * x >= s * y for x, y, s in zip(a, b, signs, strict=True))
    return better_or_equal and a != b


def _non_dominated(
    candidates: dict[int, tuple[int, tuple[float, ...]]], signs: tuple[int, ...]
) -> dict[int, tuple[int, tuple[float, ...]]]:
    """The Pareto front. Candidates are visited best-first (lexicographically), so one can
    only be dominated by a trial already kept: O(candidates x front), vectorized."""
    order = sorted(
        candidates.items(),
        key=lambda kv: tuple(-s * v for s, v in zip(signs, kv[1][1], strict=True)),
    )
    sign = np.array(signs, dtype=float)
    kept = np.empty((len(order), len(signs)))
    front: dict[int, tuple[int, tuple[float, ...]]] = {}
    for trial_id, entry in order:
        value = np.array(entry[1], dtype=float) * sign
        head = kept[: len(front)]
        if not (np.all(head >= value, axis=1) & np.any(head > value, axis=1)).any():
            kept[len(front)] = value
            front[trial_id] = entry
    return front


def _merge_front(
    front: dict[int, tuple[int, tuple[float, ...]]],
    new: dict[int, tuple[int, tuple[float, ...]]],
    signs: tuple[int, ...],
) -> dict[int, tuple[int, tuple[float, ...]]]:
    """The front of front + new, without re-examining the old front against itself."""
    fresh = {tid: entry for tid, entry in new.items() if tid not in front}
    if not fresh:
        return front
    return _non_dominated({**front, **_non_dominated(fresh, signs)}, signs)


def _trial_params(conn: Connection, trial_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Parameters of finished trials in their external form, read on the caller's
    connection (Optuna's get_trial_params would take a second one from the pool)."""
    rows = conn.execute(
        text(
            "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
            "WHERE trial_id IN :ids"
        ).bindparams(bindparam("ids", expanding=True)),
        {"ids": trial_ids},
    ).all()
    params: dict[int, dict[str, Any]] = {tid: {} for tid in trial_ids}
    for trial_id, name, value, distribution in rows:
        dist = json_to_distribution(distribution)
        params[trial_id][name] = dist.to_external_repr(value)
    return params


def _warm_start_trials(
    storage: RDBStorage, source_name: str, n_objectives: int
) -> list[FrozenTrial]:
    """The COMPLETE trials of another study, as new trials marked with where they came from."""
    try:
        source = optuna.load_study(study_name=source_name, storage=storage)
    except KeyError:
        raise WarmStartError(
            f"spec.warmStart.studyName {source_name!r} does not exist in this storage"
        ) from None
    if len(source.directions) != n_objectives:
        raise WarmStartError(
            f"spec.warmStart.studyName {source_name!r} has {len(source.directions)} objectives, "
            f"this study {n_objectives}"
        )
    return [
        optuna.trial.create_trial(
            params=t.params,
            distributions=t.distributions,
            values=t.values,
            user_attrs={**t.user_attrs, WARM_START_ATTR: f"{source_name}#{t.number}"},
        )
        for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]


def _state_name(state: object) -> str:
    return str(state).rsplit(".", 1)[-1].lower()


def _check_owner(name: str, owner: Owner, recorded: object, adopt: bool) -> None:
    """Raise NotOwnedError unless `owner` may resume the study that records `recorded`."""
    if owner.same_resource(recorded):
        return
    if isinstance(recorded, dict):
        raise NotOwnedError(
            f"Optuna study {name!r} belongs to TuningStudy "
            f"{recorded.get('namespace')}/{recorded.get('name')}; it is not resumed, changed "
            "or deleted from here: set spec.studyName to a new name"
        )
    if not adopt:
        raise NotOwnedError(
            f"Optuna study {name!r} already exists and was not created by a TuningStudy; set "
            "spec.adoptExistingStudy to true to take it over, or spec.studyName to a new name"
        )


class StoreRegistry:
    """One RDBStorage (and connection pool) per storage URL, shared by all studies on it.

    Safe under concurrent reconciles: no I/O happens under the registry-wide lock (a
    storage that hangs must not stall studies on other storages), and each study's scan
    cache has a lock of its own.
    """

    def __init__(self) -> None:
        self._storages: dict[str, RDBStorage] = {}
        self._scans: dict[tuple[str, int], _ScanCache] = {}
        # Studies already checked, with the attributes last written: directions cannot change
        # (a CEL rule), so a refresh needs no query until the generation moves.
        self._handles: dict[tuple[str, str], tuple[StudyHandle, dict[str, Any]]] = {}
        # Storages with heartbeats, for failing stale trials; one per URL and interval.
        self._heartbeat_storages: dict[tuple[str, int], RDBStorage] = {}
        self._lock = threading.Lock()  # guards the dicts above and the lock tables below
        self._url_locks: dict[str, threading.Lock] = {}
        self._scan_locks: dict[tuple[str, int], threading.Lock] = {}

    def _url_lock(self, url: str) -> threading.Lock:
        with self._lock:
            return self._url_locks.setdefault(url, threading.Lock())

    def _scan(self, url: str, study_id: int) -> tuple[_ScanCache, threading.Lock]:
        with self._lock:
            key = (url, study_id)
            return (
                self._scans.setdefault(key, _ScanCache()),
                self._scan_locks.setdefault(key, threading.Lock()),
            )

    def storage(self, url: str) -> RDBStorage:
        """The shared storage of `url`, created (connecting once) on first use."""
        with self._lock:
            existing = self._storages.get(url)
        if existing is not None:
            return existing
        # Creating an RDBStorage connects and checks the schema: under this URL's lock only.
        with self._url_lock(url):
            with self._lock:
                existing = self._storages.get(url)
            if existing is not None:
                return existing
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
                raise StorageError(redact(str(exc).splitlines()[0], url)) from None
            with self._lock:
                self._storages[url] = storage
            return storage

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
            for scan_key in [k for k in self._scans if k[0] == url]:
                del self._scans[scan_key]
                self._scan_locks.pop(scan_key, None)
        for storage in storages:
            if storage is not None:
                storage.engine.dispose()

    def forget(self, name: str) -> None:
        """Drop what is cached of a study (it was deleted in Kubernetes)."""
        with self._lock:
            for url, cached_name in [k for k in self._handles if k[1] == name]:
                handle = self._handles.pop((url, cached_name))[0]
                self._scans.pop((url, handle.study_id), None)
                self._scan_locks.pop((url, handle.study_id), None)

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
        owner: Owner | None = None,
        adopt: bool = False,
        before_create: Callable[[], None] | None = None,
    ) -> StudyHandle:
        """Create the study once (copying the finished trials of `warm_start` into it), or
        resume it; refuse one whose directions differ.

        With an `owner`, an existing study is resumed only when it records the same
        namespace/name (a new uid is a resource re-created after a Retain delete), or, with
        `adopt`, when it records no owner at all (made outside the operator). A study of
        another TuningStudy raises NotOwnedError and is not written to.
        """
        cached = self._handles.get((url, name))
        wanted = {**attrs, "owner": owner.to_attr()} if owner else dict(attrs)
        if cached is not None and cached[0].directions == tuple(directions) and cached[1] == wanted:
            return replace(cached[0], created=False)
        storage = self.storage(url)
        try:
            created = False
            try:
                study_id = storage.get_study_id_from_name(name)
            except KeyError:
                if before_create is not None:
                    before_create()  # may refuse (raises)
                new_id = self._create(storage, name, directions, metric_names, enqueue, warm_start)
                created = new_id is not None
                # None: another reconcile created it meanwhile.
                study_id = new_id if new_id is not None else storage.get_study_id_from_name(name)
            system_attrs = storage.get_study_system_attrs(study_id)
            if owner is not None and not created:
                # Studies of operator 0.1.0 record no owner: the TuningStudy naming one
                # claims it once, as 0.1.0 would have resumed it.
                legacy = LEGACY_ATTR in system_attrs
                _check_owner(name, owner, system_attrs.get(OWNER_ATTR), adopt or legacy)
            stored = tuple(from_optuna_direction(d) for d in storage.get_study_directions(study_id))
            if stored != tuple(directions):
                raise DirectionsMismatchError(
                    f"Optuna study {name!r} already exists with directions "
                    f"{[d.value for d in stored]}, but the spec asks for "
                    f"{[d.value for d in directions]}; set spec.studyName to a new name"
                )
            if owner is not None and system_attrs.get(OWNER_ATTR) != owner.to_attr():
                storage.set_study_system_attr(study_id, OWNER_ATTR, owner.to_attr())
            for key, value in attrs.items():
                if system_attrs.get(STUDY_ATTR_PREFIX + key) != value:
                    storage.set_study_system_attr(study_id, STUDY_ATTR_PREFIX + key, value)
            start = system_attrs.get(STUDY_START_TIME_ATTR)
            if start is None:
                # A study made outside the operator: its time budget starts now, once, so the
                # workers' deadline (part of their pod template) stays put.
                start = datetime.now(UTC).isoformat()
                storage.set_study_system_attr(study_id, STUDY_START_TIME_ATTR, start)
            start_time = datetime.fromisoformat(start)
        except SQLAlchemyError as exc:
            raise StorageError(redact(str(exc).splitlines()[0], url)) from None
        handle = StudyHandle(study_id, name, tuple(directions), start_time, created)
        self._handles[(url, name)] = (handle, wanted)
        return handle

    @staticmethod
    def _create(
        storage: RDBStorage,
        name: str,
        directions: list[Direction],
        metric_names: list[str] | None,
        enqueue: list[dict[str, Any]] | None,
        warm_start: str | None,
    ) -> int | None:
        """The new study's id; None when another process created it first (only the
        creator may record itself as the owner)."""
        history = _warm_start_trials(storage, warm_start, len(directions)) if warm_start else []
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=[to_optuna_direction(d) for d in directions],
            )
        except optuna.exceptions.DuplicatedStudyError:
            return None
        if metric_names:
            with warnings.catch_warnings():
                # Experimental since Optuna 3.2 and unchanged since; the dashboard uses it.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(metric_names)
        # Copied before anything is enqueued: the sampler sees the history from trial one.
        study.add_trials(history)
        for params in enqueue or []:
            study.enqueue_trial(params, skip_if_exists=True)
        log.info("Created Optuna study %s (%d trials copied)", name, len(history))
        return study._study_id

    def delete_study(self, url: str, name: str, owner: Owner | None = None) -> bool:
        """Delete the study; with an `owner`, only when it records exactly that owner
        (uid included: a resource that never ran it does not drop it). False when
        nothing was deleted."""
        self.forget(name)
        storage = self.storage(url)
        try:
            try:
                study_id = storage.get_study_id_from_name(name)
            except KeyError:
                return False
            if owner is not None:
                recorded = storage.get_study_system_attrs(study_id).get(OWNER_ATTR)
                if recorded != owner.to_attr():
                    log.info("Kept Optuna study %s: it is not this resource's", name)
                    return False
            storage.delete_study(study_id)
        except SQLAlchemyError as exc:
            raise StorageError(redact(str(exc).splitlines()[0], url)) from None
        log.info("Deleted Optuna study %s", name)
        return True

    # ------------------------------------------------------------------ reads

    def summarize(self, url: str, handle: StudyHandle) -> StudySummary:
        """Counts, best trial and Pareto front; one pooled connection for the whole read
        (a second one requested while holding the first deadlocks a busy pool)."""
        storage = self.storage(url)
        cache, lock = self._scan(url, handle.study_id)
        try:
            # The scan cache of one study is read and advanced by one refresh at a time.
            with lock, storage.engine.connect() as conn:
                summary = self._counts(conn, cache, handle.study_id)
                # One objective is a front of one (ties aside): the same incremental scan
                # keeps the best trial without Optuna's ORDER BY over every trial.
                front = self._pareto_front(conn, cache, handle)
                summary.best = front[0] if front else None
                if len(handle.directions) > 1:
                    summary.pareto_front = front
                if summary.failed:
                    summary.failed_by_objective, summary.last_error = self._objective_failures(
                        conn, handle.study_id
                    )
        except SQLAlchemyError as exc:
            raise StorageError(redact(str(exc).splitlines()[0], url)) from None
        return summary

    @staticmethod
    def _counts(conn: Connection, cache: _ScanCache, study_id: int) -> StudySummary:
        """Trial counts by state, reading only trials newer than the settled prefix."""
        oldest_open, newest = conn.execute(
            text(
                "SELECT MIN(CASE WHEN state IN ('RUNNING', 'WAITING') THEN trial_id END), "
                "MAX(trial_id) FROM trials WHERE study_id = :sid AND trial_id > :after"
            ),
            {"sid": study_id, "after": cache.settled_id},
        ).one()
        settle_to = (oldest_open - 1) if oldest_open is not None else newest
        if settle_to is not None and settle_to > cache.settled_id:
            rows = conn.execute(
                text(
                    "SELECT state, COUNT(*) FROM trials WHERE study_id = :sid "
                    "AND trial_id > :after AND trial_id <= :until GROUP BY state"
                ),
                {"sid": study_id, "after": cache.settled_id, "until": settle_to},
            ).all()
            for state, n in rows:
                key = _state_name(state)
                cache.settled_counts[key] = cache.settled_counts.get(key, 0) + int(n)
            cache.settled_id = settle_to
        counts = dict(cache.settled_counts)
        for state, n in conn.execute(
            text(
                "SELECT state, COUNT(*) FROM trials WHERE study_id = :sid "
                "AND trial_id > :after GROUP BY state"
            ),
            {"sid": study_id, "after": cache.settled_id},
        ).all():
            counts[_state_name(state)] = counts.get(_state_name(state), 0) + int(n)
        return StudySummary(
            complete=counts.get("complete", 0),
            pruned=counts.get("pruned", 0),
            failed=counts.get("fail", 0),
            running=counts.get("running", 0),
            waiting=counts.get("waiting", 0),
        )

    @staticmethod
    def _objective_failures(conn: Connection, study_id: int) -> tuple[int, str | None]:
        """How many FAIL trials carry an objective error, and the latest error."""
        count, last_id = conn.execute(
            text(
                "SELECT COUNT(*), MAX(t.trial_id) FROM trial_user_attributes a "
                "JOIN trials t ON t.trial_id = a.trial_id "
                "WHERE t.study_id = :sid AND t.state = 'FAIL' AND a.key = :key"
            ),
            {"sid": study_id, "key": ERROR_ATTR},
        ).one()
        if not count:
            return 0, None
        raw = conn.execute(
            text(
                "SELECT value_json FROM trial_user_attributes WHERE trial_id = :tid AND key = :key"
            ),
            {"tid": last_id, "key": ERROR_ATTR},
        ).scalar()
        # The worker redacts too; a worker of another version or a study written by hand
        # may not have, and this text reaches status and events.
        return int(count), redact(str(json.loads(raw)))[:500] if raw else None

    @staticmethod
    def _pareto_front(conn: Connection, cache: _ScanCache, handle: StudyHandle) -> list[BestTrial]:
        signs = tuple(1 if d == Direction.MAXIMIZE else -1 for d in handle.directions)
        n_obj = len(handle.directions)
        # A trial that finishes late keeps a low id; rescan from the oldest unfinished one.
        oldest_open = conn.execute(
            text(
                "SELECT MIN(trial_id) FROM trials WHERE study_id = :sid "
                "AND state IN ('RUNNING', 'WAITING') AND trial_id > :after"
            ),
            # Every unfinished trial is above the cursor: the scan stays small.
            {"sid": handle.study_id, "after": cache.after_trial_id},
        ).scalar()
        rows = conn.execute(
            text(
                "SELECT t.trial_id, t.number, v.objective, v.value, v.value_type "
                "FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND t.trial_id > :after"
            ),
            {"sid": handle.study_id, "after": cache.after_trial_id},
        ).all()
        values: dict[int, tuple[int, list[float]]] = {}
        for trial_id, number, objective, value, value_type in rows:
            entry = values.setdefault(trial_id, (number, [0.0] * n_obj))
            kind = str(value_type).rsplit(".", 1)[-1]
            entry[1][objective] = (
                float("inf")
                if kind == "INF_POS"
                else float("-inf")
                if kind == "INF_NEG"
                else float(value)
            )
        new = {tid: (num, tuple(v)) for tid, (num, v) in values.items()}
        front = _merge_front(cache.front, new, signs)
        cache.front = front
        max_seen = max([cache.after_trial_id, *values.keys()])
        cache.after_trial_id = min(max_seen, oldest_open - 1) if oldest_open else max_seen
        chosen = sorted(front.items(), key=lambda kv: -signs[0] * kv[1][1][0])
        chosen = chosen[:PARETO_FRONT_LIMIT]
        cache.params = {tid: p for tid, p in cache.params.items() if tid in front}
        missing = [tid for tid, _ in chosen if tid not in cache.params]
        if missing:
            cache.params.update(_trial_params(conn, missing))
        return [
            BestTrial(number=number, values=list(vals), params=cache.params.get(trial_id, {}))
            for trial_id, (number, vals) in chosen
        ]

    def fail_stale_trials(self, url: str, name: str, heartbeat_interval: int) -> None:
        """Fail (and re-enqueue) trials whose heartbeat stopped. Workers do this whenever one
        of them starts a trial; when none is left running, nobody else would."""
        key = (url, heartbeat_interval)
        try:
            with self._lock:
                storage = self._heartbeat_storages.get(key)
            if storage is None:
                # Connecting happens under this URL's lock only, never under the lock every
                # study shares: a tenant's hanging database stalls that tenant's reconciles.
                with self._url_lock(url):
                    with self._lock:
                        storage = self._heartbeat_storages.get(key)
                    if storage is None:
                        storage = heartbeat_storage(
                            url,
                            heartbeat_interval,
                            application_name="optuna-operator",
                            pool_size=OPERATOR_POOL_SIZE,
                            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
                        )
                        with self._lock:
                            self._heartbeat_storages[key] = storage
            study = optuna.load_study(study_name=name, storage=storage)
            optuna.storages.fail_stale_trials(study)
        except (SQLAlchemyError, RuntimeError) as exc:
            raise StorageError(redact(str(exc).splitlines()[0], url)) from None

    def param_importances(self, url: str, name: str) -> dict[str, float]:
        """Computed once, at completion, in a child process with a memory and a time limit
        over the most recent complete trials (importances.py): the operator's memory does
        not grow with the study."""
        return importances.param_importances(url, name)
