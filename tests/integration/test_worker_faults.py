"""Workers under faults, as real processes against a real PostgreSQL (issue 12, items 5, 7).

The database outage uses a PostgreSQL of its own, stopped and started again on the same port
and data directory, so the session's shared one stays up for everything else.
"""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from tests.integration.test_worker_runtime import (
    OBJECTIVES,
    Bench,
    finished,
    states,
    wait_for,
    wait_for_trial_running_on,
)

from optuna_operator.contract import STORAGE_OUTAGE_ENV, ExitCode
from optuna_operator.storage.engines import FAULT_ENV, KILL_BETWEEN_FAIL_AND_RETRY
from optuna_operator.storage.study_store import StoreRegistry
from testbed.postgres import Postgres, postgres_ready, remove_postgres_data, start_postgres
from testbed.supervisor import Supervisor

OUTAGE_SECONDS = 20

# Hangs the way a training loop in native code does: no Python bytecode runs until it returns.
HANGING = """
import ctypes


def first_trial_hangs(trial):
    x = trial.suggest_float("x", -10, 10)
    if trial.number == 0:
        ctypes.CDLL(None).sleep(600)
    return x * x
"""


class OwnPostgres:
    """A PostgreSQL for one test, which it may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.sup = Supervisor(directory / "processes.json")
        self.server: Postgres = start_postgres(self.sup, directory / "logs")

    def stop(self) -> None:
        self.sup.stop_one("postgres")

    def start(self) -> None:
        self.sup.start_again("postgres")
        wait_for(
            lambda: postgres_ready(self.server.root, self.server.port), 60, "PostgreSQL back up"
        )

    def close(self) -> None:
        self.sup.stop_all()
        remove_postgres_data(self.server.root)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    pg = OwnPostgres(tmp_path / "postgres")
    try:
        yield pg
    finally:
        pg.close()


def _bench(url: str, tmp: Path) -> Bench:
    (tmp / "objectives.py").write_text(textwrap.dedent(OBJECTIVES) + textwrap.dedent(HANGING))
    return Bench(url, tmp)


@pytest.fixture
def own_bench(own_postgres: OwnPostgres, tmp_path: Path) -> Iterator[Bench]:
    created = _bench(own_postgres.server.url, tmp_path)
    try:
        yield created
    finally:
        created.kill_all()


@pytest.fixture
def shared_bench(storage_url: str, tmp_path: Path) -> Iterator[Bench]:
    created = _bench(storage_url, tmp_path)
    try:
        yield created
    finally:
        created.kill_all()


def test_workers_ride_out_a_database_outage(own_postgres: OwnPostgres, own_bench: Bench) -> None:
    budget = 40
    own_bench.create_study(["minimize"])
    # Heartbeats every 30 s (the default): a 20 s outage stays inside the 60 s grace period,
    # so no trial is failed as stale and every count below is exact.
    config = own_bench.config(
        objective={"function": "objectives:quick"},
        budget={"trials": budget, "maxFailedTrials": 0},
        heartbeatIntervalSeconds=30,
    )
    for _ in range(2):
        own_bench.start(config, env={"TRIAL_SECONDS": "0.3"})
    wait_for(lambda: finished(own_bench.trials()) >= 8, 60, "8 finished trials")
    completed_before = {t.number for t in own_bench.trials() if t.state == TrialState.COMPLETE}

    own_postgres.stop()
    time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for something to happen
    assert [w.process.poll() for w in own_bench.workers] == [None, None], "a worker exited"
    own_postgres.start()

    assert own_bench.wait_all(timeout=120) == [0, 0]
    trials = own_bench.trials()
    assert states(trials)[TrialState.FAIL] == 0, [t.user_attrs for t in trials]
    assert states(trials)[TrialState.RUNNING] == 0
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number in completed_before)
    assert finished(trials) == budget
    for worker in own_bench.workers:
        log = worker.log.read_text()
        assert "unreachable" in log and "reachable again after" in log, log[-3000:]
        assert "UnboundLocalError" not in log


def test_trials_failed_as_stale_during_an_outage_do_not_stop_their_workers(
    own_postgres: OwnPostgres, own_bench: Bench
) -> None:
    """Heartbeats every 5 s: after a 20 s outage a worker may fail its sibling's running
    trial as stale (and enqueue its retry) before the sibling tells its result."""
    budget = 30
    own_bench.create_study(["minimize"])
    config = own_bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    for _ in range(2):
        own_bench.start(config, env={"TRIAL_SECONDS": "0.3"})
    wait_for(lambda: finished(own_bench.trials()) >= 6, 60, "6 finished trials")
    completed_before = {t.number for t in own_bench.trials() if t.state == TrialState.COMPLETE}
    own_postgres.stop()
    time.sleep(OUTAGE_SECONDS)
    own_postgres.start()

    assert own_bench.wait_all(timeout=120) == [0, 0]
    trials = own_bench.trials()
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number in completed_before)
    assert finished(trials) == budget
    # Every failure is a stale trial whose parameters ran again.
    for trial in (t for t in trials if t.state == TrialState.FAIL):
        retries = [r for r in trials if r.system_attrs.get("failed_trial") == trial.number]
        assert [r.state for r in retries] == [TrialState.COMPLETE], trial.number


def test_a_worker_whose_trial_was_failed_elsewhere_goes_on(shared_bench: Bench) -> None:
    """What a long outage leads to, made deterministic: while the objective runs, another
    process fails its trial (as the stale-trial check does); the worker's tell then finds it
    finished, and Optuna reports that as an AssertionError. The worker must go on."""
    shared_bench.create_study(["minimize"])
    config = shared_bench.config(objective={"function": "objectives:quick"}, budget={"trials": 3})
    worker = shared_bench.start(config, env={"TRIAL_SECONDS": "3"})
    running = wait_for(
        lambda: [t for t in shared_bench.trials() if t.state == TrialState.RUNNING and t.params],
        30,
        "a running trial",
    )[0]
    storage = optuna.storages.RDBStorage(shared_bench.storage_url)
    assert storage.set_trial_state_values(running._trial_id, TrialState.FAIL)

    assert worker.wait(timeout=60) == 0
    trials = shared_bench.trials()
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [running.number]
    assert finished(trials) == 3
    assert f"Trial {running.number} was finished by another process" in worker.log.read_text()


def test_a_longer_outage_ends_the_worker_with_a_clear_message(
    own_postgres: OwnPostgres, own_bench: Bench
) -> None:
    own_bench.create_study(["minimize"])
    config = own_bench.config(objective={"function": "objectives:quick"}, budget={"trials": 500})
    worker = own_bench.start(config, env={"TRIAL_SECONDS": "0.3", STORAGE_OUTAGE_ENV: "5"})
    wait_for(lambda: finished(own_bench.trials()) >= 3, 60, "3 finished trials")
    own_postgres.stop()
    try:
        assert worker.wait(timeout=60) == ExitCode.ERROR
    finally:
        own_postgres.start()
    last = worker.stderr_lines()[-1]
    port = own_postgres.server.port
    assert last.startswith(
        f"StorageUnavailable: the study's database postgresql://127.0.0.1:{port}"
    )
    assert "was unreachable for 5 s" in last and "giving up" in last, last
    assert "UnboundLocalError" not in last


def test_function_trial_timeout_fails_the_trial_and_ends_the_process(
    shared_bench: Bench,
) -> None:
    shared_bench.create_study(["minimize"])
    config = shared_bench.config(
        objective={"function": "objectives:first_trial_hangs", "trialTimeoutSeconds": 2},
        budget={"trials": 5},
    )
    hung = shared_bench.start(config)
    assert hung.wait(timeout=60) == ExitCode.TRIAL_TIMEOUT
    assert "trial 0 timed out after 2 s (trialTimeoutSeconds)" in hung.stderr_lines()[-1]
    (first,) = [t for t in shared_bench.trials() if t.number == 0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["error"] == "timed out after 2 s (trialTimeoutSeconds)"

    # The Job ignores that exit code and starts a replacement, which finishes the study.
    replacement = shared_bench.start(config)
    assert replacement.wait(timeout=60) == 0
    trials = shared_bench.trials()
    assert finished(trials) == 5 and states(trials)[TrialState.FAIL] == 1


def test_a_timed_out_process_in_a_pool_is_replaced_in_the_pod(shared_bench: Bench) -> None:
    shared_bench.create_study(["minimize"])
    config = shared_bench.config(
        objective={"function": "objectives:first_trial_hangs", "trialTimeoutSeconds": 2},
        budget={"trials": 8},
        processesPerPod=2,
    )
    worker = shared_bench.start(config)
    assert worker.wait(timeout=90) == 0
    trials = shared_bench.trials()
    assert 8 <= finished(trials) <= 9
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [0]
    assert worker.log.read_text().count("Started trial process") == 3


def _heartbeat_stale(url: str, trial_id: int, grace_seconds: int) -> bool:
    """By the database's clock, as the stale-trial scan judges it."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT now()::timestamp - heartbeat > make_interval(secs => :grace) "
                        "FROM trial_heartbeats WHERE trial_id = :trial_id"
                    ),
                    {"trial_id": trial_id, "grace": grace_seconds},
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_kill_between_failing_a_trial_and_enqueuing_its_retry_loses_no_retry(
    shared_bench: Bench,
) -> None:
    """SIGTERM fails the trial and enqueues its retry in one transaction, and so does the
    stale-trial scan: a process SIGKILLed between the two steps (the fault hook) leaves the
    trial RUNNING without a retry, neither half committed, and the next scan does both."""
    bench = shared_bench
    bench.create_study(["minimize"])
    config = bench.config(objective={"function": "objectives:sleepy"}, budget={"trials": 1})
    fault = {FAULT_ENV: KILL_BETWEEN_FAIL_AND_RETRY}
    victim = bench.start(config, name=f"{bench.study_name}-victim", env=fault)
    running = wait_for_trial_running_on(bench, victim)
    victim.process.send_signal(signal.SIGTERM)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert "Fault kill-between-fail-and-retry" in victim.log.read_text()

    def after_the_kill() -> list[tuple[int, TrialState]]:
        return [(t.number, t.state) for t in bench.trials()]

    assert after_the_kill() == [(running.number, TrialState.RUNNING)]

    # The stale-trial scan of a worker, killed at the same point.
    wait_for(
        lambda: _heartbeat_stale(bench.storage_url, running._trial_id, 10),
        60,
        "the trial's heartbeat to go stale",
    )
    scanner = bench.start(config, name=f"{bench.study_name}-scanner", env=fault)
    assert scanner.wait(timeout=60) == -signal.SIGKILL
    assert after_the_kill() == [(running.number, TrialState.RUNNING)]

    # The operator's scan, not killed: the failure and the retry, together.
    stores = StoreRegistry()
    try:
        stores.fail_stale_trials(bench.storage_url, bench.study_name, heartbeat_interval=5)
    finally:
        stores.close()
    trials = {t.number: t for t in bench.trials()}
    assert trials[running.number].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.number != running.number]
    assert retry.state == TrialState.WAITING and retry.params == running.params
    assert retry.system_attrs["failed_trial"] == running.number
