"""One trial process: load the study and run trials until the study-wide budget says stop."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from optuna_operator.api import WorkerConfig
from optuna_operator.contract import (
    ERROR_ATTR,
    INTERRUPTED_ATTR,
    ConfigError,
    ExitCode,
    TooManyFailures,
    describe_url,
    redact,
)
from optuna_operator.storage.worker_storage import (
    TrialSlotsTaken,
    WorkerStorage,
    load_study,
    retry_of_interrupted,
)
from optuna_operator.worker.budget import BudgetChecker, TrialCounter
from optuna_operator.worker.command_objective import CommandObjective, check_command
from optuna_operator.worker.factory import build_pruner, build_sampler, describe
from optuna_operator.worker.function_objective import FunctionObjective, load_function
from optuna_operator.worker.seeding import process_seed
from optuna_operator.worker.settings import WorkerSettings
from optuna_operator.worker.signals import StopSignal, WorkerInterrupted
from optuna_operator.worker.slots import SlotWaiter

__all__ = ["build_objective", "run_process"]

log = logging.getLogger(__name__)

TrialObjective = FunctionObjective | CommandObjective


def build_objective(
    settings: WorkerSettings, stop: StopSignal, worker_id: str, log_prefix: str = ""
) -> TrialObjective:
    """The trial objective; the storage URL is redacted from the attributes it stores."""
    config, url = settings.config, settings.storage_url
    objective = config.objective
    n_objectives = len(config.directions)
    timeout = objective.trial_timeout_seconds
    if objective.function:
        func = load_function(objective.function)
        return FunctionObjective(func, n_objectives, stop, worker_id, timeout, storage_url=url)
    if objective.command:
        if not objective.search_space:
            raise ConfigError("objective.command needs objective.searchSpace")
        check_command(objective.command)
        return CommandObjective(
            objective.command,
            objective.search_space,
            n_objectives,
            timeout,
            stop,
            config.study_name,
            worker_id,
            log_prefix,
            storage_url=url,
        )
    raise ConfigError("objective: set function or command")


@dataclass(eq=False)
class _CheckedObjective:
    """The objective, then the study-wide rules that may stop this process's optimize() loop,
    and a log line for the trial.

    They run at the end of the objective rather than as an Optuna callback: with any callback
    optimize() reads each finished trial back from the database (several queries per trial).
    The trial is not told yet, so the rules count it from what the objective saw. The trial
    budget needs no check here: the next trial's slot claim (storage/worker_storage.py) answers it.

    A trial interrupted by SIGTERM is failed by Optuna's tell; the storage writes its reason
    and enqueues its retry in that same transaction (WorkerStorage.fail_when_told).
    """

    objective: TrialObjective
    checker: BudgetChecker
    stop: StopSignal
    storage: WorkerStorage
    storage_url: str
    failures: int | None = field(default=None, init=False)
    trials_run: int = field(default=0, init=False)

    @property
    def current(self) -> optuna.Trial | None:
        return self.objective.current

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        self.trials_run += 1
        try:
            result = self.objective(trial)
        except optuna.TrialPruned:
            log.info("Trial %d pruned", trial.number)
            self._after(trial, None)
            raise
        except WorkerInterrupted as err:
            reason = redact(str(err), self.storage_url) or "interrupted"
            self.storage.fail_when_told(
                trial._trial_id,
                retry_of_interrupted,
                f"interrupted ({reason})",
                {INTERRUPTED_ATTR: reason},
            )
            raise
        except Exception:
            self._after(trial, None)
            raise
        self._after(trial, result)
        return result

    def _after(self, trial: optuna.Trial, result: float | Sequence[float] | None) -> None:
        study = trial.study
        if self.stop.requested:
            study.stop()
            return
        if ERROR_ATTR in trial.user_attrs:  # Optuna is about to record it as FAIL
            self.failures = self.checker.too_many_failures(pending=1)
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
        # An infeasible trial (a constraint above 0) does not reach the goal: the status's
        # best trial leaves it out too. Read only when there is a goal.
        feasible = self.checker.budget.goal is None or all(
            value <= 0 for value in trial.constraints.values()
        )
        reason = self.checker.stop_reason(count_trials=False, latest=result if feasible else None)
        if reason is not None:
            log.info("Stopping: %s", reason)
            study.stop()


def run_process(
    settings: WorkerSettings, process_index: int, stop: StopSignal, log_prefix: str = ""
) -> ExitCode:
    """Raises ConfigError or TooManyFailures for the exits the operator acts on."""
    config = settings.config
    worker_id = f"{settings.pod_name}/{process_index}"
    objective = build_objective(settings, stop, worker_id, log_prefix)
    study, storage = _open_study(settings, process_index, worker_id)
    checker = BudgetChecker(
        TrialCounter(storage, storage.get_study_id_from_name(config.study_name)),
        config.budget,
        config.directions,
        config.deadline,
    )
    failures = checker.too_many_failures()
    if failures is not None:
        raise TooManyFailures(_failure_message(failures, config))
    reason = checker.stop_reason()
    if reason is not None:
        log.info("Nothing to do: %s", reason)
        return ExitCode.DONE
    if isinstance(objective, FunctionObjective):
        objective.fail_trial = storage.fail_now
    checked = _CheckedObjective(objective, checker, stop, storage, settings.storage_url)
    slots = SlotWaiter(checker, stop, storage, lambda: checked.trials_run, settings.wait_for_slots)
    storage.guard.stop = stop.event
    code = _optimize(study, storage, checked, slots, stop)
    if checked.failures is not None:
        raise TooManyFailures(_failure_message(checked.failures, config))
    if code is None:
        log.info("Stopped by signal")
        return _after_signal(checker)
    return code


def _open_study(
    settings: WorkerSettings, process_index: int, worker_id: str
) -> tuple[optuna.Study, WorkerStorage]:
    """Load the study with this process's sampler and pruner; its directions must be the
    spec's."""
    config = settings.config
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
    log.info(
        "Loaded study %s from %s (%s seed=%s worker=%s)",
        config.study_name,
        describe_url(settings.storage_url),
        describe(sampler, pruner),
        seed,
        worker_id,
    )
    return study, storage


def _optimize(
    study: optuna.Study,
    storage: WorkerStorage,
    checked: _CheckedObjective,
    slots: SlotWaiter,
    stop: StopSignal,
) -> ExitCode | None:
    """Run trials until the budget, the slots or a signal say stop; None when a signal did."""
    while not stop.requested:
        try:
            # catch=(Exception,): a failing trial is recorded as FAIL and the loop goes on.
            study.optimize(checked, catch=(Exception,))
        except TrialSlotsTaken as taken:
            if slots.ask_again(taken):
                continue
            break
        except WorkerInterrupted:
            return None
        except Exception as err:
            if not _told_elsewhere(err):
                return _storage_failure(err, storage, stop)
            # During a database outage longer than the heartbeat grace period, another
            # process failed this worker's trial as stale and enqueued its retry; the
            # worker's own tell then finds it finished. Nothing is lost: go on.
            trial = checked.current
            log.warning(
                "Trial %s was finished by another process while this one ran it (failed "
                "as stale during a database outage, its retry enqueued); going on",
                trial.number if trial is not None else "?",
            )
            continue
        break
    return None if stop.requested else ExitCode.DONE


def _storage_failure(err: Exception, storage: WorkerStorage, stop: StopSignal) -> ExitCode:
    """Raise what ended the loop, unless the pod is going away anyway."""
    if storage.guard.gave_up is None:
        raise err
    if stop.requested:
        # The trial's heartbeat stops with the pod, so another process fails it as stale
        # and retries it.
        log.warning("Stopping during a database outage: %s", storage.guard.gave_up)
        return ExitCode.INTERRUPTED
    # Optuna's tell path turns a storage error into UnboundLocalError; the outage is the
    # reason worth reporting.
    raise storage.guard.gave_up from err


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


def _failure_message(failures: int, config: WorkerConfig) -> str:
    return (
        f"{failures} trials failed, more than budget.maxFailedTrials="
        f"{config.budget.max_failed_trials}; see the 'error' attribute of the failed trials"
    )
