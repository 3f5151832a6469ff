"""The trivial objective `make bench` times (the same as its plain-Optuna baseline), and the
environment a worker Job would give the pods that run it."""

import atexit
import json
import os
import resource
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
# Set by the worker section: the directory where `recorded` leaves one file per process.
TRIAL_LOG_ENV = "BENCH_TRIAL_LOG"
# Set by the pool section on the worker pods: how long `sleeping` sleeps.
TRIAL_SECONDS_ENV = "BENCH_TRIAL_SECONDS"


def objective(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -10, 10) - 2) ** 2 + trial.suggest_float("y", -10, 10) ** 2


def slow(trial: optuna.Trial) -> float:
    """One trial a second: the scale benchmark's running studies stay running."""
    time.sleep(1.0)
    return objective(trial)


def sleeping(trial: optuna.Trial) -> float:
    """A trial of $BENCH_TRIAL_SECONDS seconds (default 1): the pool section's objective."""
    time.sleep(float(os.environ.get(TRIAL_SECONDS_ENV, "1")))
    return objective(trial)


class _Recorder:
    """When each trial of this process started and the process's CPU time (user + system,
    all threads) at its first and its latest trial, written at exit to $BENCH_TRIAL_LOG/<pid>.json.
    What it adds per trial (a clock read, a getrusage call, a list append) is the same on
    both sides of the comparison."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.cpu_first = 0.0
        self.cpu_last = 0.0

    def trial(self) -> None:
        now = time.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        if not self.starts:
            self.cpu_first = cpu
            atexit.register(self.write)
        self.starts.append(now)
        self.cpu_last = cpu

    def write(self) -> None:
        directory = os.environ.get(TRIAL_LOG_ENV)
        if not directory:
            return
        record = {"starts": self.starts, "cpu_first": self.cpu_first, "cpu_last": self.cpu_last}
        (Path(directory) / f"{os.getpid()}.json").write_text(json.dumps(record))


_recorder = _Recorder()


def recorded(trial: optuna.Trial) -> float:
    """`objective`, noting the trial's start and the process's CPU time (the worker
    section's per-trial client CPU, its load balance)."""
    _recorder.trial()
    return objective(trial)


def worker_env(
    url: str,
    study_name: str,
    trials: int,
    processes_per_pod: int = 1,
    function: str = "objective",
) -> dict[str, str]:
    """What a worker Job gives its pods, for a study of one of this module's objectives."""
    from optuna_operator.api import WorkerConfig

    config = WorkerConfig.model_validate(
        {
            "studyName": study_name,
            "directions": ["minimize"],
            "objective": {"function": f"bench_objective:{function}"},
            "budget": {"trials": trials},
            "sampler": {"type": "TPE"},
            "pruner": {"type": "None"},
            "processesPerPod": processes_per_pod,
        }
    )
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'hack'}",
        "OPTUNA_OPERATOR_WORKER_CONFIG": config.model_dump_json(by_alias=True),
        "OPTUNA_STORAGE_URL": url,
        "POD_NAME": "bench",
    }
