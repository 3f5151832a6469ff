"""Entry point of `optuna-operator worker`: the process the worker pods run."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.queues import SimpleQueue

import optuna

from optuna_operator.contract import STORAGE_ENV, ConfigError, ExitCode, TooManyFailures, redact
from optuna_operator.worker.gpus import assign_gpus, visible_gpus
from optuna_operator.worker.internals import check_optuna_internals
from optuna_operator.worker.requirements import install_requirements
from optuna_operator.worker.settings import WorkerSettings, read_settings
from optuna_operator.worker.signals import StopSignal
from optuna_operator.worker.termination import report_exit

__all__ = ["main"]

log = logging.getLogger("optuna_operator.worker")

# Exit codes by precedence when several processes of one pod disagree; ERROR stands for
# any code not in ExitCode (a crash, a signal).
_PRECEDENCE = (
    ExitCode.CONFIG,
    ExitCode.TOO_MANY_FAILURES,
    ExitCode.ERROR,
    ExitCode.INTERRUPTED,
    ExitCode.TRIAL_TIMEOUT,
)
_KNOWN = frozenset(int(code) for code in ExitCode) - {int(ExitCode.ERROR)}


def main() -> int:
    """Run the worker; the return value is the process exit code (see ExitCode)."""
    _configure_logging("worker")
    _ensure_home()
    stop = StopSignal()
    stop.install()
    code, message = _guarded(lambda: _run(stop))
    if code == ExitCode.INTERRUPTED and not message:
        message = "stopped by a signal before the study was done; the Job starts a replacement"
    if code != ExitCode.DONE:
        report_exit(message)
    _before_exit()
    return int(code)


def _before_exit() -> None:
    """Spare the exit a full garbage collection of everything imported.

    The interpreter's shutdown traverses every object (Optuna, SciPy, SQLAlchemy, the
    user's libraries) for cycles: 0.6 s on an idle core, 1-4 s on a busy one, the pod (and
    its GPUs) held all the while (hack/bench_idle.py). Frozen objects are left out of that
    pass only; atexit handlers, thread joins and reference-counted cleanup (closing files)
    still run.
    """
    gc.freeze()


def _ensure_home() -> None:
    """Create $HOME when missing: the operator points it into the pod's /tmp emptyDir (the
    root filesystem is read-only), which starts empty; tools expect their home to exist."""
    home = os.environ.get("HOME")
    if not home:
        return
    try:
        os.makedirs(home, exist_ok=True)
    except OSError as err:
        # Not fatal: most objectives never touch HOME.
        log.warning("Cannot create HOME %s: %s", home, err)


def _run(stop: StopSignal) -> tuple[ExitCode, str]:
    check_optuna_internals()
    settings = read_settings()
    # Before any trial process starts: spawned processes inherit the path.
    install_requirements(settings.config.objective.requirements)
    processes = settings.config.processes_per_pod
    if processes == 1:
        return _run_process(settings, 0, stop), ""
    return _run_pool(settings, processes, stop)


def _run_process(
    settings: WorkerSettings, index: int, stop: StopSignal, log_prefix: str = ""
) -> ExitCode:
    # Imported once the Optuna internals it builds on are checked: a missing private module
    # must end in that check's clear message (exit code CONFIG), not in an ImportError.
    from optuna_operator.worker.runner import run_process

    return run_process(settings, index, stop, log_prefix)


def _guarded(body: Callable[[], tuple[ExitCode, str]]) -> tuple[ExitCode, str]:
    """Map what went wrong to an exit code and a one-line reason without the password."""
    try:
        return body()
    except ConfigError as err:
        return ExitCode.CONFIG, _redact(str(err))
    except TooManyFailures as err:
        return ExitCode.TOO_MANY_FAILURES, _redact(str(err))
    except Exception as err:
        log.exception("Worker failed")
        return ExitCode.ERROR, _redact(f"{type(err).__name__}: {err}")


def _run_pool(settings: WorkerSettings, processes: int, stop: StopSignal) -> tuple[ExitCode, str]:
    """N trial processes in one pod, one GPU share each, for pods with several GPUs.

    Spawned rather than forked: a forked child would inherit CUDA state, threads and
    database connections that are not safe to share.
    """
    ctx = multiprocessing.get_context("spawn")
    results: SimpleQueue[tuple[int, int, str]] = ctx.SimpleQueue()
    gpus = visible_gpus()

    def spawn(index: int) -> multiprocessing.process.BaseProcess:
        cuda = assign_gpus(gpus, index, processes)
        child = ctx.Process(
            target=_child_main, args=(index, cuda, results), name=f"trial-process-{index}"
        )
        child.start()
        log.info(
            "Started trial process %d (pid %s, CUDA_VISIBLE_DEVICES=%s)",
            index,
            child.pid,
            cuda if cuda is not None else "unchanged",
        )
        return child

    children = [spawn(index) for index in range(processes)]
    forwarded = _supervise(children, spawn, stop)
    messages: dict[int, str] = {}
    while not results.empty():
        index, _, message = results.get()
        messages[index] = message
    codes = {i: c.exitcode for i, c in enumerate(children)}
    if forwarded:
        # A child still importing when SIGTERM came dies of it before it installs its
        # handler; it had not started a trial, so nothing was lost, but the study goes on.
        codes = {
            i: int(ExitCode.INTERRUPTED) if code == -signal.SIGTERM else code
            for i, code in codes.items()
        }
    for wanted in _PRECEDENCE:
        for index, code in codes.items():
            if code == wanted or (wanted == ExitCode.ERROR and code not in _KNOWN):
                return wanted, messages.get(index) or f"trial process {index} exited with {code}"
    return ExitCode.DONE, ""


def _supervise(
    children: list[multiprocessing.process.BaseProcess],
    spawn: Callable[[int], multiprocessing.process.BaseProcess],
    stop: StopSignal,
) -> bool:
    """Wait for the trial processes to end, forwarding a stop and replacing a process whose
    trial timed out; True when a stop was forwarded."""
    forwarded = False
    while True:
        stopping = stop.requested or any(
            c.exitcode in (ExitCode.CONFIG, ExitCode.TOO_MANY_FAILURES) for c in children
        )
        if stopping and not forwarded:
            # A sibling's permanent error would hit the others too; do not wait for it.
            for child in children:
                if child.is_alive():
                    child.terminate()  # SIGTERM: the child interrupts its trial and exits
            forwarded = True
        if not stopping:
            for index, child in enumerate(children):
                if child.exitcode == ExitCode.TRIAL_TIMEOUT:
                    # Its trial hung past trialTimeoutSeconds and is failed; the GPU share
                    # gets a fresh process rather than sitting idle for the rest of the study.
                    children[index] = spawn(index)
        if not any(c.is_alive() for c in children):
            return forwarded
        stop.wait(0.5)


def _child_main(index: int, cuda: str | None, results: SimpleQueue[tuple[int, int, str]]) -> None:
    if cuda is not None:
        # Before the objective is imported: CUDA reads this once, at initialization.
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    _configure_logging(f"process-{index}")
    stop = StopSignal()
    stop.install()

    def body() -> tuple[ExitCode, str]:
        settings = read_settings()
        return _run_process(settings, index, stop, log_prefix=f"[process {index}] "), ""

    code, message = _guarded(body)
    if message:
        print(message, file=sys.stderr, flush=True)
    results.put((index, int(code), message))
    _before_exit()
    sys.exit(int(code))


def _configure_logging(tag: str) -> None:
    level = os.environ.get("OPTUNA_OPERATOR_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [{tag}] %(name)s: %(message)s",
        force=True,
    )
    # One format for Optuna's messages and ours. Optuna's INFO line per finished trial looks
    # up the best trial (a query per trial); the worker logs its trials itself.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(max(logging.WARNING, logging.getLogger().level))


def _redact(text: str) -> str:
    return redact(text, os.environ.get(STORAGE_ENV))
