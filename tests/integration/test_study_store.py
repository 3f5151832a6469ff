"""The operator's incremental reads of a study on the real PostgreSQL agree with Optuna's own
answers, including trials that finish out of order (a low id finishing last)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from optuna_operator.api import Direction
from optuna_operator.storage.study_store import DirectionsMismatchError, StoreRegistry
from optuna_operator.storage.summary import CONSTRAINTS_KEY


def _name() -> str:
    return f"store-{uuid.uuid4().hex[:8]}"


def test_counts_and_best_follow_out_of_order_completion(storage_url: str) -> None:
    stores, name = StoreRegistry(), _name()
    handle = stores.ensure_study(storage_url, name, [Direction.MAXIMIZE], None, None, {})
    study = optuna.load_study(study_name=name, storage=storage_url)
    early, late = study.ask(), study.ask()
    study.tell(late, 1.0)
    first = stores.summarize(storage_url, handle)
    assert (first.complete, first.running) == (1, 1)
    assert first.best is not None and first.best.number == late.number

    study.tell(early, 5.0)  # the lower id finishes last and is the new best
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    for value in (2.0, 3.0):
        study.tell(study.ask(), value)
    summary = stores.summarize(storage_url, handle)
    assert (summary.complete, summary.pruned, summary.failed, summary.running) == (4, 1, 1, 0)
    assert summary.best is not None and summary.best.number == study.best_trial.number == 0
    again = stores.summarize(storage_url, handle)
    assert (again.complete, again.finished) == (4, 5)
    stores.close()


def _two_values(constrained: bool) -> Callable[[optuna.Trial], tuple[float, float]]:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        a, b = trial.suggest_float("a", 0, 1), trial.suggest_float("b", 0, 1)
        if constrained:  # the ideal corner (a high, b low) is infeasible
            trial.set_constraint("gap", a - b - 0.3)
        return a, b

    return objective


@pytest.mark.parametrize("constrained", [False, True])
def test_pareto_front_equals_optunas(storage_url: str, constrained: bool) -> None:
    stores, name = StoreRegistry(), _name()
    directions = [Direction.MAXIMIZE, Direction.MINIMIZE]
    handle = stores.ensure_study(storage_url, name, directions, None, None, {})
    study = optuna.load_study(study_name=name, storage=storage_url)
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    for batch in range(3):
        study.optimize(_two_values(constrained), 15)
        front = {t.number for t in stores.summarize(storage_url, handle).pareto_front}
        expected = {t.number for t in study.best_trials}
        if len(expected) <= 10:
            assert front == expected, batch
        else:  # status caps the front at 10 trials
            assert len(front) == 10 and front <= expected, batch
    # The trial with the highest `a` is on the front of all trials; constrained, it is
    # infeasible and left out.
    highest_a = max(study.trials, key=lambda t: t.values[0])
    assert (highest_a.number in front) is not constrained
    assert (highest_a.constraints.get("gap", 0) > 0) is constrained
    stores.close()


def _tell(study: optuna.Study, value: float, constraints: dict[str, float]) -> int:
    trial = study.ask()
    for key, bound in constraints.items():
        trial.set_constraint(key, bound)
    study.tell(trial, value)
    return trial.number


def test_best_trial_is_the_best_feasible_one(storage_url: str) -> None:
    stores, name = StoreRegistry(), _name()
    handle = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], None, None, {})
    study = optuna.load_study(study_name=name, storage=storage_url)
    _tell(study, 0.0, {"memory": 1.0})  # the lowest value, infeasible
    feasible = _tell(study, 1.0, {"memory": 0.0, "latency": -2.0})
    _tell(study, 0.5, {"memory": -1.0, "latency": float("inf")})
    _tell(study, 2.0, {})  # no constraints at all: feasible, as in Optuna
    best = stores.summarize(storage_url, handle).best
    assert best is not None and best.number == feasible == study.best_trial.number
    # The list form constraints_func writes under "constraints" counts the same.
    old_style = study.ask()
    study._storage.set_trial_system_attr(old_style._trial_id, CONSTRAINTS_KEY, [0.5, -1.0])
    study.tell(old_style, -5.0)
    best = stores.summarize(storage_url, handle).best
    assert best is not None and best.number == feasible
    newest = _tell(study, 0.25, {"memory": -0.5})
    best = stores.summarize(storage_url, handle).best
    assert best is not None and best.number == newest == study.best_trial.number
    assert CONSTRAINTS_KEY == optuna.study._constrained_optimization._CONSTRAINTS_KEY
    stores.close()


def test_a_study_with_no_feasible_trial_has_no_best(storage_url: str) -> None:
    stores, name = StoreRegistry(), _name()
    directions = [Direction.MINIMIZE, Direction.MINIMIZE]
    handle = stores.ensure_study(storage_url, name, directions, None, None, {})
    study = optuna.load_study(study_name=name, storage=storage_url)
    for value in (1.0, 2.0):
        trial = study.ask()
        trial.set_constraint("c", value)
        study.tell(trial, [value, -value])
    summary = stores.summarize(storage_url, handle)
    assert (summary.complete, summary.best, summary.pareto_front) == (2, None, [])
    assert study.best_trials == []
    stores.close()


def test_resuming_keeps_the_start_time_and_refuses_other_directions(storage_url: str) -> None:
    stores, name = StoreRegistry(), _name()
    first = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], ["loss"], [{"x": 1}], {})
    again = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], ["loss"], [{"x": 1}], {})
    assert first.created and not again.created
    assert again.start_time == first.start_time
    study = optuna.load_study(study_name=name, storage=storage_url)
    assert study.metric_names == ["loss"]
    assert len(study.get_trials(states=[TrialState.WAITING])) == 1  # enqueued once
    with pytest.raises(DirectionsMismatchError, match=r"minimize.*maximize"):
        stores.ensure_study(storage_url, name, [Direction.MAXIMIZE], None, None, {})
    stores.close()


def test_a_study_made_outside_the_operator_gets_one_fixed_start_time(storage_url: str) -> None:
    stores, name = StoreRegistry(), _name()
    optuna.create_study(study_name=name, storage=storage_url)
    first = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], None, None, {})
    again = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], None, None, {})
    assert not first.created and again.start_time == first.start_time
    stores.close()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_trials_of_dead_workers_are_failed_and_requeued(storage_url: str) -> None:
    import time

    from optuna.storages import RDBStorage

    stores, name = StoreRegistry(), _name()
    handle = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], None, None, {})
    worker_storage = RDBStorage(storage_url, heartbeat_interval=1)
    study = optuna.load_study(study_name=name, storage=worker_storage)
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    worker_storage.record_heartbeat(orphan._trial_id)  # then the worker "dies"
    time.sleep(2.5)  # past the grace period of 2 x 1 s
    stores.fail_stale_trials(storage_url, name, heartbeat_interval=1)
    summary = stores.summarize(storage_url, handle)
    assert (summary.running, summary.failed, summary.waiting) == (0, 1, 1)
    retry = study.get_trials(states=[TrialState.WAITING])[0]
    assert retry.params == orphan.params
    stores.close()


def test_concurrent_refreshes_of_one_study_give_exact_counts(storage_url: str) -> None:
    """kopf-style concurrency: several threads refresh one study while trials finish out of
    order; every summary is consistent and the last one is exact."""
    stores, name = StoreRegistry(), _name()
    handle = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], None, None, {})
    study = optuna.load_study(study_name=name, storage=storage_url)
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            while not stop.is_set():
                summary = stores.summarize(storage_url, handle)
                seen.append((summary.complete, summary.running))
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(6)]
    for thread in threads:
        thread.start()
    open_trials = []
    for i in range(60):
        open_trials.append(study.ask())
        if i % 3 == 2:  # finish the oldest last: a low id completing late
            for trial in reversed(open_trials):
                study.tell(trial, float(trial.number))
            open_trials.clear()
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(0 <= complete <= 60 and complete + running <= 60 for complete, running in seen)
    final = stores.summarize(storage_url, handle)
    assert (final.complete, final.running) == (60, 0)
    assert final.best is not None and final.best.number == study.best_trial.number == 0
    stores.close()


def test_one_refresh_uses_one_connection(storage_url: str) -> None:
    """A Pareto-front read used to ask the pool for a second connection while holding one,
    which deadlocked a busy pool: a whole refresh now fits in a pool of one."""
    stores, name = StoreRegistry(), _name()
    handle = stores.ensure_study(
        storage_url, name, [Direction.MINIMIZE, Direction.MAXIMIZE], None, None, {}
    )
    study = optuna.load_study(study_name=name, storage=storage_url)
    for i in range(5):
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        study.tell(trial, [x, float(i)])
    engine = stores.storage(storage_url).engine
    # The operator's engines are unpooled: count connections held at once.
    held, checked_out = [0], []

    def checkout(*_: object) -> None:
        held[0] += 1
        checked_out.append(held[0])

    def checkin(*_: object) -> None:
        held[0] -= 1

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    summary = stores.summarize(storage_url, handle)
    assert summary.pareto_front and all("x" in t.params for t in summary.pareto_front)
    assert max(checked_out) == 1, checked_out
    stores.close()


def test_the_summary_says_whether_a_finished_trial_reported(storage_url: str) -> None:
    stores, name = StoreRegistry(), _name()
    handle = stores.ensure_study(storage_url, name, [Direction.MINIMIZE], None, None, {})
    study = optuna.load_study(study_name=name, storage=storage_url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert not stores.summarize(storage_url, handle).reported
    running = study.ask()
    running.report(0.5, step=1)  # a running trial's report counts once the trial settles
    assert not stores.summarize(storage_url, handle).reported
    study.tell(running, 0.5)
    assert stores.summarize(storage_url, handle).reported
    stores.close()
