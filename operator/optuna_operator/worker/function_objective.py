"""Python objectives given as module:attribute, called with the Optuna trial."""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from optuna_operator.contract import ERROR_ATTR, OBJECTIVE_SOURCE_ENV, ConfigError, ExitCode
from optuna_operator.worker.objective_base import ObjectiveBase
from optuna_operator.worker.signals import StopSignal, WorkerInterrupted
from optuna_operator.worker.termination import report_exit

__all__ = ["FailTrial", "FunctionObjective", "TrialWatchdog", "check_values", "load_function"]

log = logging.getLogger(__name__)

# User attributes are stored as JSON text; a full traceback belongs in the log.
MAX_ERROR_CHARS = 2000

Objective = Callable[[optuna.Trial], Any]


def load_function(reference: str, source: str | None = None) -> Objective:
    """Import `module:attribute` (attribute may be dotted); any failure is a ConfigError.

    source: the module's text (objective.source; default: $OPTUNA_OPERATOR_OBJECTIVE_SOURCE).
    It is written to a fresh directory as `<module>.py`, put first on sys.path, so it wins
    over anything of that name in the image. Without it, the console script does not put the
    working directory on sys.path the way `python -m` does, yet user code usually lives there
    (WORKDIR of the image), so it is added first.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"objective.function must be module:attribute, got {reference!r}")
    if source is None:
        source = os.environ.get(OBJECTIVE_SOURCE_ENV)
    where = ""
    if source is not None:
        where = f"objective.source ({module_name}.py): "
        path = _write_source(module_name, source)
        sys.path.insert(0, path)
    else:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as err:  # the user's module may raise anything at import time
        raise ConfigError(f"{where}{type(err).__name__}: {err}") from err
    if not callable(target):
        raise ConfigError(f"objective.function {reference!r} is not callable")
    return target  # type: ignore[no-any-return]


def _write_source(module_name: str, source: str) -> str:
    """A fresh directory under TMPDIR holding `<module>.py` with the source."""
    if "." in module_name or not module_name.isidentifier():
        raise ConfigError(
            f"objective.source needs a plain module name in objective.function, got "
            f"{module_name!r}: name the ConfigMap key <module>.py (e.g. train.py)"
        )
    if module_name in sys.modules:
        # Already imported (a standard module such as json): the import would not read ours.
        raise ConfigError(
            f"objective.source: module name {module_name!r} is taken by an installed module; "
            "rename the ConfigMap key and objective.function (e.g. train.py, train:objective)"
        )
    directory = tempfile.mkdtemp(prefix="optuna-objective-")
    with open(os.path.join(directory, f"{module_name}.py"), "w", encoding="utf-8") as f:
        f.write(source)
    return directory


# Fails a running trial with these user attributes in one transaction (the worker storage's
# fail_now); False when the trial had finished already.
FailTrial = Callable[[int, str, dict[str, Any]], bool]


class TrialWatchdog:
    """Enforces trialTimeoutSeconds on a function running in this process.

    Python cannot stop a function from outside: an exception raised by a signal handler waits
    for the next bytecode, which a call into native code (a training loop in C++, a CUDA
    kernel) may not reach for hours, and it would run inside the user's cleanup code. So at
    the deadline this thread fails the trial with a clear error and ends the process with
    ExitCode.TRIAL_TIMEOUT; the Job replaces such a pod without counting it, and a pool of
    trial processes starts a fresh one. The error and the failure are one transaction: a
    timeout is the objective's failure (it counts against maxFailedTrials, like a command's
    timeout), never retried, and a kill in between leaves a trial that is failed and retried
    as stale without an error that would count.
    """

    def __init__(
        self, trial: optuna.Trial, timeout_seconds: float, worker_id: str, fail: FailTrial
    ) -> None:
        self._trial = trial
        self._timeout = timeout_seconds
        self._worker_id = worker_id
        self._fail = fail
        # Held from expiry to exit: a trial that finishes at that moment must not be told.
        self._lock = threading.Lock()
        self._finished = False
        self._timer = threading.Timer(timeout_seconds, self._expire)
        self._timer.daemon = True
        self._timer.name = f"trial-{trial.number}-watchdog"

    def start(self) -> None:
        self._timer.start()

    def finish(self) -> None:
        """The function returned or raised: stop watching (blocks for good once expired)."""
        self._timer.cancel()
        with self._lock:
            self._finished = True

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            message = f"timed out after {self._timeout:g} s (trialTimeoutSeconds)"
            trial = self._trial
            try:
                if not self._fail(trial._trial_id, message, {ERROR_ATTR: message}):
                    return  # it finished (or was failed as stale) just now
            except Exception as err:
                # The process ends all the same; the trial's heartbeat stops with it, so it is
                # failed as stale and retried.
                log.error("Trial %d: could not record the timeout: %s", trial.number, err)
            log.error("Trial %d %s; ending this process", trial.number, message)
            report_exit(
                f"trial {trial.number} {message} in worker {self._worker_id}; "
                "the trial is failed and a fresh worker process takes over"
            )
            os._exit(int(ExitCode.TRIAL_TIMEOUT))


class FunctionObjective(ObjectiveBase):
    """Calls the user's function and keeps the reason of a failure on the trial.

    `fail_trial` (the worker storage's fail_now) must be set before a trial runs with a
    time limit.
    """

    def __init__(
        self,
        func: Objective,
        n_objectives: int,
        stop: StopSignal,
        worker_id: str,
        timeout_seconds: float | None = None,
        storage_url: str | None = None,
    ) -> None:
        super().__init__(n_objectives, stop, worker_id, timeout_seconds, storage_url)
        self._func = func
        self.fail_trial: FailTrial | None = None

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        self.current = trial
        if self._stop.requested:
            # The runner fails it with this reason (worker/runner.py).
            raise WorkerInterrupted("stop requested before the trial started")
        watchdog = None
        if self._timeout is not None:
            if self.fail_trial is None:
                raise RuntimeError("a trial time limit needs the worker storage's fail_trial")
            watchdog = TrialWatchdog(trial, self._timeout, self._worker_id, self.fail_trial)
            watchdog.start()
        self._stop.interrupt_objective = True
        try:
            result = self._func(trial)
        except WorkerInterrupted:
            raise
        except Exception as err:
            trial.set_user_attr(ERROR_ATTR, _error_text(err, self._redact))
            raise
        finally:
            self._stop.interrupt_objective = False
            if watchdog is not None:
                watchdog.finish()
        problem = check_values(result, self._n_objectives)
        if problem:
            # Optuna fails such a trial by itself; the attribute makes it count and explains.
            trial.set_user_attr(ERROR_ATTR, _shorten(self._redact(problem)))
        return result  # type: ignore[no-any-return]


def check_values(result: object, n_objectives: int) -> str | None:
    """Why Optuna will reject this return value, or None when it is fine."""
    values = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(values) != n_objectives:
        return f"objective returned {len(values)} value(s), the study has {n_objectives}"
    for value in values:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return f"objective returned {value!r}, not a number"
        if math.isnan(number):
            return "objective returned NaN"
    return None


def _error_text(err: BaseException, clean: Callable[[str], str] = str) -> str:
    # Redacted whole, then cut: a cut first could leave part of a password unmatched.
    return _shorten(clean(f"{type(err).__name__}: {err}"))


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
