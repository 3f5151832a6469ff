"""SIGTERM handling: Kubernetes preemption and scale-down must not lose a trial."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

__all__ = ["StopSignal", "WorkerInterrupted"]

log = logging.getLogger(__name__)


class WorkerInterrupted(KeyboardInterrupt):
    """Raised inside a running trial when the pod is told to stop.

    A KeyboardInterrupt subclass on purpose: Optuna records the trial as FAIL for it and then
    re-raises it past `catch=(Exception,)`, which ends `optimize()`.
    """


class StopSignal:
    """Remembers that SIGTERM/SIGINT arrived and, inside a function objective, interrupts it.

    Outside a trial the flag alone is enough: the loop checks it before asking for the next
    trial. Command objectives poll the flag and stop their child process themselves, so only
    Python objectives need the exception raised at their next bytecode.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.interrupt_objective = False

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def event(self) -> threading.Event:
        """Set once a stop was requested; for waits that should end early then."""
        return self._event

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self._event.is_set()
        self._event.set()
        if first:
            log.info(
                "Received %s: interrupting the current trial and stopping",
                signal.Signals(signum).name,
            )
        if self.interrupt_objective:
            self.interrupt_objective = False  # raise once; cleanup code must run undisturbed
            raise WorkerInterrupted(signal.Signals(signum).name)
