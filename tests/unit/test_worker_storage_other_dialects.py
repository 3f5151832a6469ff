"""The worker's storage on a database other than PostgreSQL (SQLite here). PostgreSQL is the
documented storage and the integration tests race workers on it; other SQLAlchemy dialects
take a fallback where PostgreSQL gets one data-modifying statement (a new trial's first
heartbeat and its `worker` attribute), and this keeps that fallback working."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from optuna_operator.contract import WORKER_ATTR
from optuna_operator.storage.engines import heartbeat_storage
from optuna_operator.storage.worker_storage import TrialSlotsTaken, make_storage


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_new_trial_starts_with_a_heartbeat_and_its_worker_within_the_budget(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=url, study_name="s")
    storage = make_storage(url, heartbeat_interval=30, application_name="test")
    storage.configure("pod-a", trial_budget=2)
    study = optuna.load_study(study_name="s", storage=storage)

    first, second = study.ask(), study.ask()
    with pytest.raises(TrialSlotsTaken, match="2 of 2 trial slots are running or finished"):
        study.ask()
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    third = study.ask()  # the failed trial's slot is free again

    engine = create_engine(url)
    with engine.connect() as conn:
        heartbeats = (
            conn.execute(text("SELECT trial_id FROM trial_heartbeats WHERE heartbeat IS NOT NULL"))
            .scalars()
            .all()
        )
        workers = conn.execute(
            text("SELECT trial_id, value_json FROM trial_user_attributes WHERE key = :key"),
            {"key": WORKER_ATTR},
        ).all()
        trials = conn.execute(text("SELECT count(*) FROM trials")).scalar_one()
    engine.dispose()
    storage.engine.dispose()
    started = {first._trial_id, second._trial_id, third._trial_id}
    assert set(heartbeats) == started
    assert {trial_id: json.loads(value) for trial_id, value in workers} == dict.fromkeys(
        started, "pod-a"
    )
    assert trials == 3  # the refused trial was rolled back with its transaction


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_trial_without_a_heartbeat_gets_a_stand_in_then_is_failed_and_retried(
    tmp_path: Path,
) -> None:
    """A bare ask() never sends a heartbeat: the second scan that sees it writes one, and
    once that is older than the grace period the trial is failed and retried together."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    bare = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    scanner = heartbeat_storage(url, heartbeat_interval=5, application_name="test")
    study_id = scanner.get_study_id_from_name("s")
    engine = create_engine(url)

    def heartbeats() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM trial_heartbeats")).scalar_one())

    assert scanner._get_stale_trial_ids(study_id) == [] and heartbeats() == 0
    assert scanner._get_stale_trial_ids(study_id) == [] and heartbeats() == 1
    scanner._get_stale_trial_ids(study_id)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING  # within grace
    with engine.begin() as conn:
        conn.execute(text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds')"))
    scanner._get_stale_trial_ids(study_id)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == bare.params and trials[1].system_attrs["failed_trial"] == 0
    engine.dispose()
    scanner.engine.dispose()
