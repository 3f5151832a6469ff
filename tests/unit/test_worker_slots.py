"""What a worker does when every trial slot is taken (worker/slots.py), without a database:
the budget's answer and the storage's forced scan are stand-ins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from optuna_operator.lifecycle.stopping import StopReason
from optuna_operator.storage.worker_storage import TrialSlotsTaken, WorkerStorage
from optuna_operator.worker.budget import BudgetChecker
from optuna_operator.worker.signals import StopSignal
from optuna_operator.worker.slots import SlotWaiter


@dataclass
class Checker:
    reason: StopReason | None = None

    def stop_reason(self) -> StopReason | None:
        return self.reason


@dataclass
class Storage:
    scans: list[int] = field(default_factory=list)

    def scan_stale_next(self) -> None:
        self.scans.append(1)


def _waiter(
    checker: Checker, storage: Storage, trials_run: list[int], wait: bool = False
) -> SlotWaiter:
    return SlotWaiter(
        cast(BudgetChecker, checker),
        StopSignal(),
        cast(WorkerStorage, cast(Any, storage)),
        lambda: trials_run[0],
        wait_for_slots=wait,
    )


def test_a_worker_leaves_once_live_trials_hold_every_slot() -> None:
    storage, trials_run = Storage(), [3]
    waiter = _waiter(Checker(), storage, trials_run)
    held = TrialSlotsTaken(held=10, waiting=0, budget=10)
    # Once more with the stale-trial scan forced: a dead worker's trial frees its slot there.
    assert waiter.ask_again(held) and storage.scans == [1]
    assert not waiter.ask_again(held)
    # After trials of its own (a slot freed meanwhile), it looks anew before leaving.
    trials_run[0] = 4
    assert waiter.ask_again(held) and storage.scans == [1, 1]
    assert not waiter.ask_again(held)


def test_a_waiting_trial_or_a_finished_budget_decides_first() -> None:
    storage = Storage()
    assert _waiter(Checker(), storage, [0]).ask_again(TrialSlotsTaken(9, 1, 10))
    done = _waiter(Checker(StopReason.BUDGET), storage, [0])
    assert not done.ask_again(TrialSlotsTaken(10, 0, 10))
    assert storage.scans == []


def test_told_to_wait_for_slots_it_waits() -> None:
    storage = Storage()
    waiter = _waiter(Checker(), storage, [0], wait=True)
    held = TrialSlotsTaken(held=10, waiting=0, budget=10)
    assert all(waiter.ask_again(held) for _ in range(3))
    assert storage.scans == [1]
