"""Optuna's RDB storages on PostgreSQL: the heartbeat storage that retries a stale trial, and
Optuna's schema check one connection at a time. The workers and the operator's Optuna child
process (optuna_child.py) open their storages here; the pool settings (pools.py) are
re-exported, as everything opened them from here before the operator shed Optuna."""

from __future__ import annotations

import logging
import os
import signal
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exists, func, select

from optuna_operator.contract import (
    ERROR_ATTR,
    INTERRUPTED_ATTR,
    MAX_RETRIES,
    STDERR_ATTR,
    WORKER_ATTR,
)
from optuna_operator.storage.pools import (
    CONNECT_TIMEOUT_SECONDS,
    IDLE_PING_SECONDS,
    POOL_RECYCLE_SECONDS,
    engine_kwargs,
    ping_after_idle,
)

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "FAULT_ENV",
    "IDLE_PING_SECONDS",
    "KILL_BETWEEN_FAIL_AND_RETRY",
    "POOL_RECYCLE_SECONDS",
    "HeartbeatStorage",
    "RetryOf",
    "check_schema_version",
    "engine_kwargs",
    "heartbeat_storage",
    "ping_after_idle",
    "retry_of_stale_trial",
]

log = logging.getLogger(__name__)

# Set only by tests (tests/integration/test_worker_faults.py): the process SIGKILLs itself
# inside a fail-and-retry transaction, after the failure is written and before the retry is,
# to show that the two commit together or not at all.
FAULT_ENV = "OPTUNA_OPERATOR_TEST_FAULT"
KILL_BETWEEN_FAIL_AND_RETRY = "kill-between-fail-and-retry"

# The attributes of one run of a trial, not of its parameters: a retry does not inherit them.
_RUN_ATTRS = frozenset({WORKER_ATTR, ERROR_ATTR, INTERRUPTED_ATTR, STDERR_ATTR})

RetryOf = Callable[[FrozenTrial], FrozenTrial | None]


class HeartbeatStorage(RDBStorage):
    """An RDBStorage that fails a stale trial and enqueues its retry in one transaction, and
    that also fails a RUNNING trial that never had a heartbeat.

    Optuna fails a stale trial in one transaction and enqueues its retry in the next. A
    worker's trial slot (worker_storage.py) frees when the trial fails, so in between another
    worker could take that slot for a new trial and leave the retry waiting for ever once the
    budget is full, and a process stopped in between loses the retry. Here both happen under
    the study row's lock, which slot claims take too, and Optuna's own pass
    (fail_stale_trials) finds nothing left to do.

    Optuna never fails a RUNNING trial without a heartbeat row (a bare `study.ask()` from a
    notebook, a client that died before its first heartbeat): such a trial would hold one of
    the budget's slots for ever. A scan that finds one that an earlier scan of this storage
    also found writes it a stand-in heartbeat (the database's clock, as heartbeats use), so
    it goes stale one grace period later, like a trial whose heartbeat stopped then. Waiting
    one scan first leaves a client its first heartbeat: one written between the scan's read
    and its insert would fail on the unique heartbeat row.
    """

    _silent: frozenset[int] = frozenset()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        self._stand_in_heartbeats(study_id)
        for trial_id in stale:
            self.fail_and_retry(trial_id, retry_of_stale_trial, "its heartbeat stopped")
        return []

    def _stand_in_heartbeats(self, study_id: int) -> None:
        trials, beats = models.TrialModel, models.TrialHeartbeatModel
        # A client's own first heartbeat that wins the race makes the insert a duplicate:
        # ignored (rolled back), as the trial has its heartbeat then.
        with _create_scoped_session(self.scoped_session, True) as session:
            rows = session.execute(
                select(trials.trial_id, trials.number).where(
                    trials.study_id == study_id,
                    trials.state == TrialState.RUNNING,
                    ~exists().where(beats.trial_id == trials.trial_id),
                )
            ).all()
            silent = {int(trial_id): int(number) for trial_id, number in rows}
            seen_before = sorted(silent.keys() & self._silent)
            for trial_id in seen_before:
                session.add(beats(trial_id=trial_id, heartbeat=func.now()))
        self._silent = frozenset(silent.keys() - set(seen_before))
        if seen_before:
            log.warning(
                "Trials %s run without a heartbeat; failed (and retried) if none comes "
                "within the grace period",
                [silent[trial_id] for trial_id in seen_before],
            )

    def fail_and_retry(
        self,
        trial_id: int,
        retry_of: RetryOf,
        why: str,
        user_attrs: Mapping[str, Any] | None = None,
    ) -> bool:
        """Fail a RUNNING trial (writing `user_attrs` on it) and enqueue `retry_of(trial)`,
        unless that is None, in one transaction under the study row's lock; `why` is for
        the log. False when the trial was no longer RUNNING (finished, or failed by another
        process)."""
        with _create_scoped_session(self.scoped_session) as session:
            study_id = session.execute(
                select(models.TrialModel.study_id).where(models.TrialModel.trial_id == trial_id)
            ).scalar_one()
            # The lock order of a slot claim: the study row, then the trial row.
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if trial.state != TrialState.RUNNING:
                return False
            number = int(trial.number)
            retry = retry_of(self._build_frozen_trial_from_trial_model(trial))
            for key, value in (user_attrs or {}).items():
                self._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, trial_id, key, value
                )
            trial.state = TrialState.FAIL
            trial.datetime_complete = datetime.now()  # local time, as Optuna writes it
            session.flush()
            _fault_point(KILL_BETWEEN_FAIL_AND_RETRY)
            if retry is not None:
                self._get_prepared_new_trial(study_id, retry, session)
        log.warning(
            "Trial %d failed: %s%s",
            number,
            why,
            "; its parameters are enqueued again" if retry is not None else "",
        )
        return True


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        log.warning("Fault %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)


def retry_of_stale_trial(failed: FrozenTrial) -> FrozenTrial | None:
    """The waiting copy of a stale trial, as Optuna's RetryFailedTrialCallback makes it (the
    same system attributes), or None after MAX_RETRIES retries of the same parameters. The
    attributes of the failed run (its worker, its error) stay with it."""
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > MAX_RETRIES:
        return None
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=failed.params,
        distributions=failed.distributions,
        user_attrs={k: v for k, v in failed.user_attrs.items() if k not in _RUN_ATTRS},
        system_attrs={
            "failed_trial": failed.number,
            # Not the failed run's constraints: the retry sets its own (Optuna would keep
            # the first value of a name and ignore the retry's).
            **{k: v for k, v in failed.system_attrs.items() if not _is_constraint(k)},
            "retry_history": history,
        },
    )


def _is_constraint(key: str) -> bool:
    """Optuna 5's trial constraint attributes (`constraints:<name>`, and the older list)."""
    return key == "constraints" or key.startswith("constraints:")


StorageT = TypeVar("StorageT", bound=RDBStorage)


def heartbeat_storage(
    url: str,
    heartbeat_interval: int,
    application_name: str,
    pool_size: int | None = 2,
    storage_class: type[StorageT] = HeartbeatStorage,  # type: ignore[assignment]
    statement_timeout_ms: int | None = None,
) -> StorageT:
    """The RDBStorage workers run trials with, and the operator fails stale trials with:
    heartbeats on, a trial whose heartbeat stopped retried up to MAX_RETRIES times
    (HeartbeatStorage). Workers pass their subclass that outlasts a database outage."""
    with warnings.catch_warnings():
        # Heartbeats are the documented way to recover preempted trials; Optuna still labels
        # them experimental, which would only add noise to every log.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = storage_class(
            url,
            engine_kwargs=engine_kwargs(
                url,
                application_name,
                pool_size,
                statement_timeout_ms=statement_timeout_ms,
                ping_every_checkout=False,
            ),
            # The operator created the schema with the study; workers racing to create
            # tables only add lock contention.
            skip_table_creation=True,
            # Optuna's check holds a transaction open on one pooled connection while it opens
            # a second: behind PgBouncer, more workers starting than it has server connections
            # each held one and waited for another until query_wait_timeout. The same check
            # follows, one connection at a time.
            skip_compatibility_check=True,
            heartbeat_interval=heartbeat_interval,
            # grace_period stays Optuna's default (2 x heartbeat_interval). The retry of a
            # stale trial is HeartbeatStorage's, not a heartbeat_stale_trial_callback.
        )
    check_schema_version(storage)
    if pool_size is not None:
        ping_after_idle(storage.engine)
    return storage


def check_schema_version(storage: RDBStorage) -> None:
    """Raise RuntimeError when the database's Optuna schema is not the one this Optuna
    version writes (what RDBStorage checks by default, without nesting connections)."""
    current, head = storage.get_current_version(), storage.get_head_version()
    if current == head:
        return
    advice = (
        "upgrade it with `optuna storage upgrade --storage <its URL>`"
        if current in storage.get_all_versions()
        else "use an image with the Optuna version that created it or a newer one"
    )
    raise RuntimeError(
        f"the study database's Optuna schema is {current}, Optuna {optuna.__version__} needs "
        f"{head}: {advice}"
    )
