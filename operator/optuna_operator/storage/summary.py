"""The status refresh's read of a study: trial counts by state, the best trial or Pareto
front of the feasible trials, and the failures the objective raised.

A refresh runs every few seconds for every study with running work, so each read here is
an SQL aggregate or an incremental scan from what earlier refreshes learned (ScanCache):
its cost does not grow with the number of trials. Plain SQL and plain Python: the operator
process imports neither Optuna nor numpy (optuna_child.py).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, text

from optuna_operator.api import PARETO_FRONT_LIMIT, BestTrial, Direction
from optuna_operator.contract import ERROR_ATTR, redact

__all__ = [
    "CONSTRAINTS_KEY",
    "Front",
    "ScanCache",
    "StudyScans",
    "StudySummary",
    "dominates",
    "external_value",
    "non_dominated",
    "summarize",
]

Front = dict[int, tuple[int, tuple[float, ...]]]  # trial_id -> (number, values)

# Where Optuna keeps a trial's constraints (optuna.study._constrained_optimization): one
# system attribute "constraints:<name>" per value (Trial.set_constraint), or one list under
# "constraints" (constraints_func). A trial is feasible when every value is <= 0.
CONSTRAINTS_KEY = "constraints"


@dataclass
class StudySummary:
    """What the status shows of a study's trials."""

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
    # Whether a finished trial reported an intermediate value (what a pruner reads).
    reported: bool = False

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


@dataclass
class ScanCache:
    """What earlier refreshes learned about a study. Trials up to `settled_id` are all
    finished (finished states are final), so their counts never need reading again."""

    settled_id: int = 0
    settled_counts: dict[str, int] = field(default_factory=dict)
    after_trial_id: int = 0
    front: Front = field(default_factory=dict)
    # Params of finished trials never change: fetched once per front member.
    params: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Settled trials up to this id were looked at for intermediate values; once one had
    # some, `reported` stays True (values are never deleted).
    reported_checked_id: int = 0
    reported: bool = False


class StudyScans:
    """One ScanCache per (storage URL, study id), each with a lock: one refresh at a time
    reads and advances a study's cache."""

    def __init__(self) -> None:
        self._scans: dict[tuple[str, int], tuple[ScanCache, threading.Lock]] = {}
        self._lock = threading.Lock()

    def get(self, url: str, study_id: int) -> tuple[ScanCache, threading.Lock]:
        """The study's cache and its lock, made on first use."""
        with self._lock:
            return self._scans.setdefault((url, study_id), (ScanCache(), threading.Lock()))

    def drop(self, url: str, study_id: int | None = None) -> None:
        """Forget one study's cache, or every study's of `url`."""
        with self._lock:
            for key in [k for k in self._scans if k[0] == url and study_id in (None, k[1])]:
                del self._scans[key]

    def clear(self) -> None:
        """Forget every cache."""
        with self._lock:
            self._scans.clear()


def summarize(
    conn: Connection, cache: ScanCache, study_id: int, directions: tuple[Direction, ...]
) -> StudySummary:
    """Counts, best trial and Pareto front, all read on `conn` (a second connection
    requested while holding the first deadlocks a busy pool)."""
    summary = _counts(conn, cache, study_id)
    # One objective is a front of one (ties aside): the same incremental scan keeps the
    # best trial without Optuna's ORDER BY over every trial.
    front = _pareto_front(conn, cache, study_id, directions)
    summary.best = front[0] if front else None
    if len(directions) > 1:
        summary.pareto_front = front
    if summary.failed:
        summary.failed_by_objective, summary.last_error = _objective_failures(conn, study_id)
    summary.reported = _reported(conn, cache, study_id)
    return summary


def _reported(conn: Connection, cache: ScanCache, study_id: int) -> bool:
    """Whether any settled trial reported an intermediate value, looking only at trials
    settled since the last look (cheap at any study size)."""
    if cache.reported or cache.settled_id <= cache.reported_checked_id:
        return cache.reported
    found = conn.execute(
        text(
            "SELECT 1 FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
            "WHERE t.study_id = :sid AND t.trial_id > :after AND t.trial_id <= :until LIMIT 1"
        ),
        {"sid": study_id, "after": cache.reported_checked_id, "until": cache.settled_id},
    ).first()
    cache.reported, cache.reported_checked_id = found is not None, cache.settled_id
    return cache.reported


def _state_name(state: object) -> str:
    return str(state).rsplit(".", 1)[-1].lower()


def _settle(conn: Connection, cache: ScanCache, study_id: int) -> None:
    """Fold the counts of trials below the oldest unfinished one into the settled prefix."""
    oldest_open, newest = conn.execute(
        text(
            "SELECT MIN(CASE WHEN state IN ('RUNNING', 'WAITING') THEN trial_id END), "
            "MAX(trial_id) FROM trials WHERE study_id = :sid AND trial_id > :after"
        ),
        {"sid": study_id, "after": cache.settled_id},
    ).one()
    settle_to = (oldest_open - 1) if oldest_open is not None else newest
    if settle_to is None or settle_to <= cache.settled_id:
        return
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


def _counts(conn: Connection, cache: ScanCache, study_id: int) -> StudySummary:
    """Trial counts by state, reading only trials newer than the settled prefix."""
    _settle(conn, cache, study_id)
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
        text("SELECT value_json FROM trial_user_attributes WHERE trial_id = :tid AND key = :key"),
        {"tid": last_id, "key": ERROR_ATTR},
    ).scalar()
    # The worker redacts too; a worker of another version or a study written by hand
    # may not have, and this text reaches status and events.
    return int(count), redact(str(json.loads(raw)))[:500] if raw else None


def dominates(a: tuple[float, ...], b: tuple[float, ...], signs: tuple[int, ...]) -> bool:
    """a dominates b; values are compared after turning every direction into maximize."""
    better_or_equal = all(s * x >= s * y for x, y, s in zip(a, b, signs, strict=True))
    return better_or_equal and a != b


def non_dominated(candidates: Front, signs: tuple[int, ...]) -> Front:
    """The Pareto front. Candidates are visited best-first (lexicographically), so one can
    only be dominated by a trial already kept: O(candidates x front)."""
    # Every direction turned into maximize; a stable sort keeps ties in their given order.
    order = sorted(
        (
            (tuple(s * v for s, v in zip(signs, entry[1], strict=True)), trial_id, entry)
            for trial_id, entry in candidates.items()
        ),
        key=lambda item: item[0],
        reverse=True,
    )
    kept: list[tuple[float, ...]] = []
    front: Front = {}
    for value, trial_id, entry in order:
        for other in kept:
            if other != value and all(o >= v for o, v in zip(other, value, strict=True)):
                break
        else:
            kept.append(value)
            front[trial_id] = entry
    return front


def _merge_front(front: Front, new: Front, signs: tuple[int, ...]) -> Front:
    """The front of front + new, without re-examining the old front against itself."""
    fresh = {tid: entry for tid, entry in new.items() if tid not in front}
    if not fresh:
        return front
    return non_dominated({**front, **non_dominated(fresh, signs)}, signs)


def _value(value: float | None, value_type: object) -> float:
    kind = str(value_type).rsplit(".", 1)[-1]
    if kind == "INF_POS":
        return float("inf")
    if kind == "INF_NEG":
        return float("-inf")
    return float(value)  # type: ignore[arg-type]


def _new_complete(
    conn: Connection, cache: ScanCache, study_id: int, n_obj: int
) -> tuple[Front, int | None]:
    """COMPLETE trials above the cursor with their values, and the oldest unfinished trial
    above it (a trial that finishes late keeps a low id: the cursor stops below it)."""
    oldest_open = conn.execute(
        text(
            "SELECT MIN(trial_id) FROM trials WHERE study_id = :sid "
            "AND state IN ('RUNNING', 'WAITING') AND trial_id > :after"
        ),
        # Every unfinished trial is above the cursor: the scan stays small.
        {"sid": study_id, "after": cache.after_trial_id},
    ).scalar()
    rows = conn.execute(
        text(
            "SELECT t.trial_id, t.number, v.objective, v.value, v.value_type "
            "FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
            "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND t.trial_id > :after"
        ),
        {"sid": study_id, "after": cache.after_trial_id},
    ).all()
    values: dict[int, tuple[int, list[float]]] = {}
    for trial_id, number, objective, value, value_type in rows:
        entry = values.setdefault(trial_id, (number, [0.0] * n_obj))
        entry[1][objective] = _value(value, value_type)
    # Infeasible trials are never best, as in Optuna's best_trial and best_trials.
    infeasible = _infeasible(conn, cache, study_id) if values else set()
    new = {tid: (num, tuple(v)) for tid, (num, v) in values.items() if tid not in infeasible}
    return new, oldest_open


def _infeasible(conn: Connection, cache: ScanCache, study_id: int) -> set[int]:
    """COMPLETE trials above the cursor with a constraint value > 0 (they set their
    constraints before they completed, so none is missed)."""
    rows = conn.execute(
        text(
            "SELECT a.trial_id, a.value_json FROM trial_system_attributes a "
            "JOIN trials t ON t.trial_id = a.trial_id "
            "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND t.trial_id > :after "
            "AND (a.key = :key OR a.key LIKE :prefix)"
        ),
        {
            "sid": study_id,
            "after": cache.after_trial_id,
            "key": CONSTRAINTS_KEY,
            "prefix": f"{CONSTRAINTS_KEY}:%",
        },
    ).all()
    return {trial_id for trial_id, raw in rows if _violated(json.loads(raw))}


def _violated(value: object) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, (int, float)) and v > 0 for v in values)


def _pareto_front(
    conn: Connection, cache: ScanCache, study_id: int, directions: tuple[Direction, ...]
) -> list[BestTrial]:
    signs = tuple(1 if d == Direction.MAXIMIZE else -1 for d in directions)
    new, oldest_open = _new_complete(conn, cache, study_id, len(directions))
    front = _merge_front(cache.front, new, signs)
    cache.front = front
    max_seen = max([cache.after_trial_id, *new.keys()])
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
        params[trial_id][name] = external_value(value, distribution)
    return params


# Optuna's distributions, by the names its JSON gives them (optuna.distributions); the
# older ones are stored under their own names and read as Optuna reads them.
_INT_DISTRIBUTIONS = frozenset(
    {"IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"}
)
_FLOAT_DISTRIBUTIONS = frozenset(
    {
        "FloatDistribution",
        "UniformDistribution",
        "LogUniformDistribution",
        "DiscreteUniformDistribution",
    }
)


def external_value(internal: float, distribution_json: str) -> Any:
    """A parameter's stored value as the objective saw it: what Optuna's
    json_to_distribution(distribution_json).to_external_repr(internal) gives (an int, a
    float, or the categorical choice at that index), without Optuna."""
    raw = json.loads(distribution_json)
    if "name" in raw:
        name = raw["name"]
        if name == "CategoricalDistribution":
            return raw["attributes"]["choices"][int(internal)]
        if name in _INT_DISTRIBUTIONS:
            return int(internal)
        if name in _FLOAT_DISTRIBUTIONS:
            return internal
        raise ValueError(f"Unknown distribution class: {name}")
    # Optuna's abbreviated form.
    kind = raw["type"]
    if kind == "categorical":
        return raw["choices"][int(internal)]
    if kind == "int":
        return int(internal)
    if kind == "float":
        return internal
    raise ValueError(f"Unknown distribution type: {kind}")
