"""What a worker does when ask() finds no trial slot for it (storage/worker_storage.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from optuna_operator.storage.worker_storage import TrialSlotsTaken, WorkerStorage
from optuna_operator.worker.budget import BudgetChecker
from optuna_operator.worker.signals import StopSignal

__all__ = ["FIRST_SLOT_WAIT_SECONDS", "SLOT_WAIT_SECONDS", "SlotWaiter"]

log = logging.getLogger(__name__)

# How often a worker that waits for a slot (WAIT_FOR_SLOTS_ENV) asks again: soon at first
# (the last trials of a study usually finish within moments), then every SLOT_WAIT_SECONDS.
FIRST_SLOT_WAIT_SECONDS = 0.01
SLOT_WAIT_SECONDS = 2.0


@dataclass(eq=False)
class SlotWaiter:
    """Decides, each time every slot is taken, whether to ask again, wait, or leave.

    A slot held by a trial whose heartbeat stopped (or never started) frees at the next
    stale-trial scan, so the worker asks once more with that scan forced. Every slot then
    held by a finished trial or by a running trial that is alive, no slot can come to this
    worker soon: it leaves with exit code 0 at once, so that its pod ends and its GPUs go
    back, instead of idling until the last trials finish (issue 21). A running trial that
    fails later is taken by a worker still running (its own, if the objective raised), or
    by the workers the operator starts again once the Job has none left.
    """

    checker: BudgetChecker
    stop: StopSignal
    storage: WorkerStorage
    trials_run: Callable[[], int]
    wait_for_slots: bool = False
    _told: bool = field(default=False, init=False)
    _scanned: bool = field(default=False, init=False)
    _wait: float = field(default=FIRST_SLOT_WAIT_SECONDS, init=False)
    _trials_at_last_wait: int = field(default=-1, init=False)

    def ask_again(self, taken: TrialSlotsTaken) -> bool:
        """True to ask for a trial again (at once, or after a wait), False to stop."""
        if self.stop.requested:
            return False
        if taken.waiting_trial_may_start:
            return True  # the next ask starts a waiting trial first
        reason = self.checker.stop_reason()
        if reason is not None:
            log.info("Stopping: %s", reason)
            return False
        if self.trials_run() != self._trials_at_last_wait:  # ran trials since: look anew
            self._trials_at_last_wait = self.trials_run()
            self._wait = FIRST_SLOT_WAIT_SECONDS
            self._scanned = False
        if not self._scanned:
            self._scanned = True
            self.storage.scan_stale_next()
            return True
        if not self.wait_for_slots:
            log.info(
                "%s, by live trials: no slot can come to this worker, so it leaves (a trial "
                "that fails later goes to a worker still running, or to workers started again)",
                taken,
            )
            return False
        return self._wait_once(taken)

    def _wait_once(self, taken: TrialSlotsTaken) -> bool:
        if not self._told:
            self._told = True
            log.info("%s; waiting for one to free up (a running trial may fail)", taken)
        self.stop.event.wait(self._wait)
        self._wait = min(self._wait * 2, SLOT_WAIT_SECONDS)
        return not self.stop.requested
