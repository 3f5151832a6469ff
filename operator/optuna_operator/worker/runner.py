"""One trial process: load the study and run trials until the study-wide budget says stop."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from optuna_operator.api import WorkerConfig
from optuna_operator.contract import (
    ERROR_ATTR,
    RETRY_OF_ATTR,
    ConfigError,
    ExitCode,
    TooManyFailures,
    describe_url,
)
from optuna_operator.storage.worker_storage import TrialSlotsTaken, load_study
from optuna_operator.worker.budget import BudgetChecker, TrialCounter
from optuna_operator.worker.command_objective import CommandObjective, check_command
from optuna_operator.worker.factory import build_pruner, build_sampler, describe
from optuna_operator.worker.function_objective import FunctionObjective, load_function
from optuna_operator.worker.seeding import process_seed
from optuna_operator.worker.settings import WorkerSettings
from optuna_operator.worker.signals import StopSignal, WorkerInterrupted

__all__ = ["build_objective", "run_process"]

log = logging.getLogger(__name__)

TrialObjective = FunctionObjective | CommandObjective

# How often a worker that found every trial slot held asks again: soon at first (the last
# trials of a study usually finish within moments), then every SLOT_WAIT_SECONDS (a slot held
# by a dead worker's trial frees only when its heartbeat goes stale).
FIRST_SLOT_WAIT_SECONDS = 0.01
SLOT_WAIT_SECONDS = 2.0


def build_objective(
    config: WorkerConfig,
    stop: StopSignal,
    worker_id: str,
    log_prefix: str = "",
    storage_url: str | None = None,
) -> TrialObjective:
    """The trial objective; `storage_url` is redacted from the attributes it stores."""
    objective = config.objective
    n_objectives = len(config.directions)
    if objective.function:
        return FunctionObjective(
            load_function(objective.function),
            n_objectives,
            stop,
            worker_id,
            objective.trial_timeout_seconds,
            storage_url=storage_url,
        )
    if objective.command:
        if not objective.search_space:
            raise ConfigError("objective.command needs objective.searchSpace")
        check_command(objective.command)
        return CommandObjective(
            objective.command,
            objective.search_space,
            n_objectives,
            objective.trial_timeout_seconds,
            stop,
            config.study_name,
            worker_id,
            log_prefix,
            storage_url=storage_url,
        )
    raise ConfigError("objective: set function or command")


class _CheckedObjective:
    """The objective, then the study-wide rules that may stop this process's optimize() loop,
    and a log line for the trial.

    They run at the end of the objective rather than as an Optuna callback: with any callback
    optimize() reads each finished trial back from the database (several queries per trial).
    The trial is not told yet, so the rules count it from what the objective saw. The trial
    budget needs no check here: the next trial's slot claim (storage/worker_storage.py) answers it.
    """

    def __init__(self, objective: TrialObjective, checker: BudgetChecker, stop: StopSignal) -> None:
        self._objective = objective
        self._checker = checker
        self._stop = stop
        self.failures: int | None = None
        self.trials_run = 0

    @property
    def current(self) -> optuna.Trial | None:
        return self._objective.current

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        self.trials_run += 1
        try:
            result = self._objective(trial)
        except optuna.TrialPruned:
            log.info("Trial %d pruned", trial.number)
            self._after(trial, None)
            raise
        except WorkerInterrupted:
            raise
        except Exception:
            self._after(trial, None)
            raise
        self._after(trial, result)
        return result

    def _after(self, trial: optuna.Trial, result: float | Sequence[float] | None) -> None:
        study = trial.study
        if self._stop.requested:
            study.stop()
            return
        if ERROR_ATTR in trial.user_attrs:  # Optuna is about to record it as FAIL
            self.failures = self._checker.too_many_failures(pending=1)
            if self.failures is not None:
                study.stop()
                return
        elif result is not None:
            log.info(
                "Trial %d finished with value %s and parameters %s",
                trial.number,
                result,
                trial.params,
            )
        reason = self._checker.stop_reason(count_trials=False, latest=result)
        if reason is not None:
            log.info("Stopping: %s", reason)
            study.stop()


def run_process(
    settings: WorkerSettings, process_index: int, stop: StopSignal, log_prefix: str = ""
) -> ExitCode:
    """Raises ConfigError or TooManyFailures for the exits the operator acts on."""
    config = settings.config
    worker_id = f"{settings.pod_name}/{process_index}"
    objective = build_objective(config, stop, worker_id, log_prefix, settings.storage_url)
    seed = process_seed(
        config.sampler.seed,
        worker_index=settings.worker_index,
        process_index=process_index,
        processes_per_pod=config.processes_per_pod,
        pod_name=settings.pod_name,
    )
    sampler = build_sampler(config.sampler, config.objective, seed)
    pruner = build_pruner(config.pruner)
    study, storage = load_study(
        config.study_name,
        settings.storage_url,
        config.heartbeat_interval_seconds,
        worker_id,
        config.budget.trials,
        sampler=sampler,
        pruner=pruner,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != [d.value for d in config.directions]:
        raise ConfigError(
            f"study {config.study_name!r} was created with directions {stored}, the spec says "
            f"{[d.value for d in config.directions]}"
        )
    checker = BudgetChecker(
        TrialCounter(storage, storage.get_study_id_from_name(config.study_name)),
        config.budget,
        config.directions,
        config.deadline,
    )
    log.info(
        "Loaded study %s from %s (%s seed=%s worker=%s)",
        config.study_name,
        describe_url(settings.storage_url),
        describe(sampler, pruner),
        seed,
        worker_id,
    )
    failures = checker.too_many_failures()
    if failures is not None:
        raise TooManyFailures(_failure_message(failures, config))
    reason = checker.stop_reason()
    if reason is not None:
        log.info("Nothing to do: %s", reason)
        return ExitCode.DONE

    checked = _CheckedObjective(objective, checker, stop)
    slots = _SlotWaiter(checker, stop, checked)
    storage.guard.stop = stop.event
    while True:
        try:
            # catch=(Exception,): a failing trial is recorded as FAIL and the loop goes on.
            study.optimize(checked, catch=(Exception,))
        except TrialSlotsTaken as taken:
            if slots.ask_again(taken):
                continue
            break
        except WorkerInterrupted:
            try:
                _requeue(study, objective.current)
            except Exception as err:
                # The database is down and the pod is going: the trial's heartbeat stops, so
                # another worker fails it as stale and retries it.
                log.warning("Could not enqueue the interrupted trial again: %s", err)
            return _after_signal(checker)
        except Exception as err:
            if _told_elsewhere(err):
                # During a database outage longer than the heartbeat grace period, another
                # process failed this worker's trial as stale and enqueued its retry; the
                # worker's own tell then finds it finished. Nothing is lost: go on.
                trial = objective.current
                log.warning(
                    "Trial %s was finished by another process while this one ran it (failed "
                    "as stale during a database outage, its retry enqueued); going on",
                    trial.number if trial is not None else "?",
                )
                continue
            if storage.guard.gave_up is None:
                raise
            if stop.requested:
                log.warning("Stopping during a database outage: %s", storage.guard.gave_up)
                return ExitCode.INTERRUPTED
            # Optuna's tell path turns a storage error into UnboundLocalError; the outage is
            # the reason worth reporting.
            raise storage.guard.gave_up from err
        break
    if checked.failures is not None:
        raise TooManyFailures(_failure_message(checked.failures, config))
    if stop.requested:
        log.info("Stopped by signal between trials")
        return _after_signal(checker)
    return ExitCode.DONE


class _SlotWaiter:
    """What a worker does when ask() finds no trial slot for it (storage/worker_storage.py)."""

    def __init__(
        self, checker: BudgetChecker, stop: StopSignal, checked: _CheckedObjective
    ) -> None:
        self._checker = checker
        self._stop = stop
        self._checked = checked
        self._told = False
        self._wait = FIRST_SLOT_WAIT_SECONDS
        self._trials_at_last_wait = -1

    def ask_again(self, taken: TrialSlotsTaken) -> bool:
        """True to ask for a trial again (at once, or after a wait), False to stop."""
        if self._stop.requested:
            return False
        if taken.waiting_trial_may_start:
            return True  # the next ask starts a waiting trial first
        reason = self._checker.stop_reason()
        if reason is not None:
            log.info("Stopping: %s", reason)
            return False
        if self._checked.trials_run != self._trials_at_last_wait:  # ran trials: wait anew
            self._trials_at_last_wait = self._checked.trials_run
            self._wait = FIRST_SLOT_WAIT_SECONDS
        if not self._told:
            self._told = True
            log.info("%s; waiting for one to free up (a running trial may fail)", taken)
        self._stop.event.wait(self._wait)
        self._wait = min(self._wait * 2, SLOT_WAIT_SECONDS)
        return not self._stop.requested


def _told_elsewhere(err: BaseException) -> bool:
    """Whether a tell failed because the trial was already finished by someone else.

    Optuna raises either error, depending on whether it saw the state before writing, and
    when the objective itself had succeeded its cleanup replaces that error with an
    AssertionError ("Should not reach."), so the whole chain is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UpdateFinishedTrialError):
            return True
        if isinstance(current, ValueError) and str(current).startswith("Cannot tell a "):
            return True
        current = current.__cause__ or current.__context__
    return False


def _after_signal(checker: BudgetChecker) -> ExitCode:
    """DONE when the study needs no more trials, else INTERRUPTED so the Job replaces the pod
    instead of counting it as the work queue's success."""
    try:
        done = checker.stop_reason() is not None
    except Exception as err:  # the pod is going away; a replacement will find out
        log.warning("Cannot tell whether the study is done (%s); exiting as interrupted", err)
        done = False
    return ExitCode.DONE if done else ExitCode.INTERRUPTED


def _requeue(study: optuna.Study, trial: optuna.Trial | None) -> None:
    """Give the interrupted trial's parameters to whichever worker asks next."""
    if trial is None:
        return
    if not trial.params:
        log.info("Trial %d interrupted before sampling; nothing to enqueue", trial.number)
        return
    study.enqueue_trial(
        trial.params, user_attrs={RETRY_OF_ATTR: trial.number}, skip_if_exists=False
    )
    log.info("Trial %d interrupted; enqueued its parameters again", trial.number)


def _failure_message(failures: int, config: WorkerConfig) -> str:
    return (
        f"{failures} trials failed, more than budget.maxFailedTrials="
        f"{config.budget.max_failed_trials}; see the 'error' attribute of the failed trials"
    )
