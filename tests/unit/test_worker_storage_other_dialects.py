"""The worker's storage on a database other than PostgreSQL (SQLite here). PostgreSQL is the
documented storage and the integration tests race workers on it; other SQLAlchemy dialects
take a fallback where PostgreSQL gets one data-modifying statement (a new trial's first
heartbeat and its `worker` attribute), and this keeps that fallback working."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from sqlalchemy import create_engine, text

from optuna_operator.contract import WORKER_ATTR
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
