"""The worker's connection to the study: a small, self-healing RDBStorage that starts trials
only within the trial budget.

The exact budget (issue 14). `budget.trials` counts COMPLETE and PRUNED trials. A trial that
is RUNNING holds one of those slots until it finishes; if it fails (its objective raised, or
its worker died and its heartbeat went stale) the slot is free again. A worker may start a
trial only while RUNNING + COMPLETE + PRUNED < budget.trials, and that check is made in the
same transaction that makes the trial RUNNING, under the study row's lock:

- a new trial: Optuna's own trial creation already locks the study row (`SELECT ... FOR
  UPDATE`) to number the trial, and its number counts the study's other trials of every
  state. A number below the budget therefore proves a free slot without another query; from
  the budget on (failed or retried trials came first) the states are counted in that
  transaction, and a full budget rolls the new trial back;
- a waiting trial (enqueued: a retry, a warm start): the same lock, the count, then WAITING ->
  RUNNING, in one transaction.

So, however many workers ask at once, COMPLETE + PRUNED never exceeds the budget. The same
transaction writes the trial's first heartbeat, so a worker killed right after it has no
trial that stays RUNNING without a heartbeat (Optuna never fails those as stale, and such a
trial would hold its slot for ever), and the trial's `worker` attribute, which saves a
transaction per trial; both in one statement. When every slot is held, `ask` raises
`TrialSlotsTaken` (worker/runner.py decides whether to wait or to leave).

A trial this process fails (interrupted by SIGTERM, timed out) is failed with its reason and
its retry in one transaction too (HeartbeatStorage.fail_and_retry): a kill at any point
leaves either both or neither, and a trial left RUNNING is failed and retried as stale.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from optuna_operator.contract import (
    RETRY_OF_ATTR,
    STORAGE_ENV,
    WORKER_ATTR,
    ConfigError,
    describe_url,
)
from optuna_operator.storage.engines import RetryOf, heartbeat_storage
from optuna_operator.storage.outage import OutageTolerantStorage

__all__ = [
    "TrialSlotsTaken",
    "WorkerStorage",
    "load_study",
    "make_storage",
    "no_retry",
    "retry_of_interrupted",
]

log = logging.getLogger(__name__)

# The states that hold one of budget.trials' slots, and those a slot claim counts.
_HOLDING = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
_COUNTED = (*_HOLDING, TrialState.WAITING)


class TrialSlotsTaken(Exception):
    """No slot of the trial budget for this trial: running and finished trials hold them
    all, or (for a new trial) the free ones go to trials already waiting."""

    def __init__(self, held: int, waiting: int, budget: int) -> None:
        text = f"{held} of {budget} trial slots are running or finished"
        super().__init__(text + (f", {waiting} waiting trials go first" if waiting else ""))
        self.held = held
        self.waiting = waiting
        self.budget = budget

    @property
    def waiting_trial_may_start(self) -> bool:
        """A slot is free for a waiting trial: asking again starts one."""
        return self.waiting > 0 and self.held < self.budget


class WorkerStorage(OutageTolerantStorage):
    """The storage one worker process runs trials with (see the module docstring).

    `configure` must be called before the first trial; the stale-trial scan Optuna runs
    before every trial runs at most once per heartbeat interval (a trial becomes stale only
    after two intervals without a heartbeat, so a scan per trial finds nothing new).
    """

    worker_id: str = ""
    trial_budget: int | None = None
    _next_stale_scan: float = 0.0
    # The trial whose first heartbeat was written with its start: Optuna's heartbeat thread
    # writes one again as the trial starts, which can be skipped once.
    _fresh_heartbeat: int | None = None

    def __init__(self, url: str, **kwargs: Any) -> None:
        # Trials whose coming FAIL (Optuna's tell) also writes these and enqueues a retry.
        self._on_fail: dict[int, tuple[RetryOf, str, dict[str, Any]]] = {}
        super().__init__(url, **kwargs)

    def configure(self, worker_id: str, trial_budget: int | None) -> None:
        self.worker_id = worker_id
        self.trial_budget = trial_budget

    def fail_when_told(
        self, trial_id: int, retry_of: RetryOf, why: str, user_attrs: dict[str, Any]
    ) -> None:
        """Make Optuna's coming tell of FAIL for this trial write `user_attrs` and enqueue
        `retry_of(trial)` in the same transaction as the failure."""
        self._on_fail[trial_id] = (retry_of, why, user_attrs)

    def fail_now(self, trial_id: int, why: str, user_attrs: dict[str, Any]) -> bool:
        """Fail a running trial with its reason, in one transaction, without a retry; False
        when it had finished (or was failed as stale) already."""
        return self._guarded_fail(trial_id, no_retry, why, user_attrs)

    def scan_stale_next(self) -> None:
        """Let the next stale-trial scan run even if one ran less than an interval ago."""
        self._next_stale_scan = 0.0

    def _guarded_fail(
        self, trial_id: int, retry_of: RetryOf, why: str, user_attrs: dict[str, Any]
    ) -> bool:
        return self.guard.call(
            f"failing trial {trial_id}",
            lambda: self.fail_and_retry(trial_id, retry_of, why, user_attrs),
            # A lost connection after the commit: the retry, with the failure, is there.
            lambda: self._trial_reached(trial_id, TrialState.FAIL),
        )

    # ------------------------------------------------------------------ a new trial
    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        trial: FrozenTrial = super()._create_new_trial(study_id, template_trial)
        if template_trial is None:
            # What _get_prepared_new_trial wrote, so that Optuna's cache of the trial has it.
            trial.user_attrs = {WORKER_ATTR: self.worker_id}
        return trial

    def _get_prepared_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None, session: Session
    ) -> models.TrialModel:
        # Runs inside Optuna's trial creation, which holds the study row's lock. Optuna
        # inserts the trial and numbers it; an exception here rolls both back.
        trial: models.TrialModel = super()._get_prepared_new_trial(
            study_id, template_trial, session
        )
        if template_trial is not None and template_trial.state != TrialState.RUNNING:
            return trial  # waiting (a retry, a warm start) or finished: holds no slot yet
        trial_id = int(trial.trial_id)
        if self.trial_budget is not None and int(trial.number) >= self.trial_budget:
            # The trial's number is the count of the study's other trials, of any state: a
            # number below the budget proves a free slot, and only a study with failed trials
            # or retries reaches this count.
            self._claim_slot(session, study_id, new_trial=True, not_counted=trial_id)
        if template_trial is None:
            self._fresh_heartbeat = trial_id
            _start_new_trial(session, trial_id, self.worker_id)
        else:
            _first_heartbeat(session, trial_id)
        return trial

    # ------------------------------------------------------------------ a waiting trial
    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state == TrialState.FAIL and trial_id in self._on_fail:
            retry_of, why, attrs = self._on_fail.pop(trial_id)
            if not self._guarded_fail(trial_id, retry_of, why, attrs):
                # What RDBStorage raises for a trial finished elsewhere (failed as stale).
                raise UpdateFinishedTrialError(f"trial {trial_id} is finished already")
            return True
        if state != TrialState.RUNNING:
            started: bool = super().set_trial_state_values(trial_id, state, values)
            return started
        # A retry after a lost connection that had committed finds the trial RUNNING and
        # returns False; the trial then has a heartbeat, so it is failed as stale and retried.
        return self.guard.call(
            "starting a waiting trial", lambda: self._start_waiting(trial_id), lambda: None
        )

    def _start_waiting(self, trial_id: int) -> bool:
        with _create_scoped_session(self.scoped_session) as session:
            study_id = session.execute(
                select(models.TrialModel.study_id).where(models.TrialModel.trial_id == trial_id)
            ).scalar_one()
            # The same lock order as a new trial: the study row, then the trial row.
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
            self._claim_slot(session, study_id, new_trial=False, not_counted=trial_id)
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if trial.state != TrialState.WAITING:
                return False  # another worker started (or finished) it first
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()  # local time, as Optuna writes it
            _first_heartbeat(session, trial_id)
            self._set_trial_attr_without_commit(
                session, models.TrialUserAttributeModel, trial_id, WORKER_ATTR, self.worker_id
            )
        self._fresh_heartbeat = trial_id
        return True

    # ------------------------------------------------------------------ slots
    def _claim_slot(
        self, session: Session, study_id: int, new_trial: bool, not_counted: int
    ) -> None:
        """Raise TrialSlotsTaken unless a slot is free for trial `not_counted` (the one that
        would start); the caller holds the study row lock.

        Waiting trials (retries of failed ones, warm starts) go before new ones: a new trial
        needs a slot that is free after every waiting trial has one. Otherwise a worker that
        listed the waiting trials just before a retry was enqueued could take its slot with
        a new trial, and the retry would never run.
        """
        if self.trial_budget is None:
            return
        trials = models.TrialModel
        rows = session.execute(
            select(trials.state, func.count(trials.trial_id))
            .where(
                trials.study_id == study_id,
                trials.state.in_(_COUNTED),
                trials.trial_id != not_counted,
            )
            .group_by(trials.state)
        ).all()
        counts: dict[TrialState, int] = {state: int(n) for state, n in rows}
        held = sum(counts.get(state, 0) for state in _HOLDING)
        waiting = counts.get(TrialState.WAITING, 0) if new_trial else 0
        if held + waiting >= self.trial_budget:
            raise TrialSlotsTaken(held, waiting, self.trial_budget)

    # ------------------------------------------------------------------ heartbeats
    def record_heartbeat(self, trial_id: int) -> None:
        if trial_id == self._fresh_heartbeat:
            self._fresh_heartbeat = None
            return
        super().record_heartbeat(trial_id)

    # ------------------------------------------------------------------ stale trials
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.monotonic()
        if now < self._next_stale_scan:
            return []
        self._next_stale_scan = now + float(self.heartbeat_interval or 0)
        stale: list[int] = super()._get_stale_trial_ids(study_id)
        return stale


def no_retry(failed: FrozenTrial) -> None:
    """For a failure that is the objective's own (a timeout): nothing to retry."""
    return None


def retry_of_interrupted(failed: FrozenTrial) -> FrozenTrial | None:
    """The waiting copy of a trial stopped by SIGTERM, as `study.enqueue_trial` makes it, or
    None for a trial stopped before it sampled anything."""
    if not failed.params:
        return None
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": failed.params},
        user_attrs={RETRY_OF_ATTR: failed.number},
    )


# A new trial's first heartbeat and its `worker` attribute, in one statement: a round trip
# less inside the transaction that holds the study row's lock (PostgreSQL runs a
# data-modifying WITH clause once whether or not the query reads it).
_START_NEW_TRIAL = text(
    f"WITH heartbeat AS (INSERT INTO {models.TrialHeartbeatModel.__tablename__} "
    "(trial_id, heartbeat) VALUES (:trial_id, now())) "
    f"INSERT INTO {models.TrialUserAttributeModel.__tablename__} (trial_id, key, value_json) "
    "VALUES (:trial_id, :key, :value_json)"
)


def _start_new_trial(session: Session, trial_id: int, worker_id: str) -> None:
    """Write what a bare new trial starts with, as SQL rather than ORM objects (the ORM's
    unit of work made two rows cost as much as the rest of the trial's creation)."""
    values = {"trial_id": trial_id, "key": WORKER_ATTR, "value_json": json.dumps(worker_id)}
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_START_NEW_TRIAL, values)
        return
    connection.execute(
        insert(models.TrialHeartbeatModel.__table__).values(trial_id=trial_id, heartbeat=func.now())
    )
    connection.execute(insert(models.TrialUserAttributeModel.__table__).values(**values))


def _first_heartbeat(session: Session, trial_id: int) -> None:
    heartbeat = models.TrialHeartbeatModel.where_trial_id(trial_id, session)
    if heartbeat is None:
        session.add(models.TrialHeartbeatModel(trial_id=trial_id, heartbeat=func.now()))
    else:
        heartbeat.heartbeat = func.now()


def make_storage(url: str, heartbeat_interval: int, application_name: str) -> WorkerStorage:
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(f"{STORAGE_ENV} is not a valid SQLAlchemy URL") from None
    return heartbeat_storage(url, heartbeat_interval, application_name, storage_class=WorkerStorage)


def load_study(
    name: str,
    url: str,
    heartbeat_interval: int,
    worker_id: str,
    trial_budget: int | None,
    *,
    wait_seconds: float = 60.0,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, WorkerStorage]:
    """Load (never create) the study; wait a while for a database that is still starting.

    A study that is missing once the database answers is a configuration error: the operator
    creates it before any worker starts.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 1.0
    while True:
        try:
            storage = make_storage(url, heartbeat_interval, f"optuna-worker {worker_id}")
            storage.configure(worker_id, trial_budget)
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
            return study, storage
        except KeyError:
            raise ConfigError(
                f"study {name!r} does not exist in {describe_url(url)}; the operator creates it "
                "before starting workers"
            ) from None
        except ConfigError:
            raise
        except Exception as err:
            if time.monotonic() >= deadline:
                raise
            log.warning(
                "Storage %s not reachable yet (%s); retrying in %.0f s",
                describe_url(url),
                type(err).__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
