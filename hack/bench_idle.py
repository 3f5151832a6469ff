"""Pod-seconds held idle at the end of a study (issue 21): workers that wait for a trial slot
that cannot come, against workers that leave at once.

4 worker processes (as 4 pods would run them) share one 40-trial study on a throwaway
PostgreSQL; trials take 0.5-2.5 s. A worker is idle from the end of its last trial to its
exit: with `OPTUNA_OPERATOR_WAIT_FOR_SLOTS=1` (the behaviour before) it waits there until
the last running trial of the study finishes; by default it leaves as soon as live trials
hold every remaining slot. Runs alternate between the two, so that other load on a shared
machine lands on both; prints the medians and their ratio; asserts nothing.

    PYTHONPATH=hack:. .venv/bin/python hack/bench_idle.py
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
WORKERS, TRIALS, REPEATS = 4, 40, 3
SHORTEST, LONGEST = 0.5, 2.5


def varied(trial: optuna.Trial) -> float:
    """A trial of 0.5-2.5 s, the same length for the same trial number in every run."""
    x = trial.suggest_float("x", -10, 10)
    time.sleep(random.Random(trial.number).uniform(SHORTEST, LONGEST))
    return (x - 2) ** 2


@dataclass(frozen=True)
class Run:
    idle_pod_seconds: float  # sum over workers of (exit - end of its last trial)
    pod_seconds: float  # sum over workers of (exit - start)
    finished: int


def _env(url: str, study_name: str, pod: str, wait_for_slots: bool) -> dict[str, str]:
    """The bench's worker environment (bench_objective.py), with this module's objective."""
    from bench_objective import worker_env
    from optuna_operator.contract import CONFIG_ENV
    from optuna_operator.worker.settings import WAIT_FOR_SLOTS_ENV

    env = worker_env(url, study_name, TRIALS)
    config = json.loads(env[CONFIG_ENV])
    config["objective"] = {"function": "bench_idle:varied"}
    env |= {CONFIG_ENV: json.dumps(config), "POD_NAME": pod}
    if wait_for_slots:
        env[WAIT_FOR_SLOTS_ENV] = "1"
    return env


def run_study(url: str, name: str, wait_for_slots: bool) -> Run:
    optuna.create_study(storage=url, study_name=name)
    pods = [f"{name}-w{i}" for i in range(WORKERS)]
    started = time.time()
    procs = {
        pod: subprocess.Popen(
            [sys.executable, "-m", "optuna_operator.worker"],
            env=_env(url, name, pod, wait_for_slots),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pod in pods
    }
    exits: dict[str, float] = {}
    while len(exits) < len(procs):
        for pod, proc in procs.items():
            if pod not in exits and proc.poll() is not None:
                if proc.returncode != 0:
                    raise SystemExit(f"worker {pod} exited with {proc.returncode}")
                exits[pod] = time.time()
        time.sleep(0.01)
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    last_end: dict[str, float] = {}
    for trial in trials:
        pod = str(trial.user_attrs.get("worker", "")).rsplit("/", 1)[0]
        if trial.datetime_complete is not None:
            # Naive local time, written on this machine: comparable with time.time().
            end = trial.datetime_complete.timestamp()
            last_end[pod] = max(last_end.get(pod, started), end)
    idle = sum(exits[pod] - last_end.get(pod, started) for pod in pods)
    finished = sum(1 for t in trials if t.state.is_finished() and t.state.name != "FAIL")
    return Run(idle, sum(exits[pod] - started for pod in pods), finished)


def bench_idle(url: str) -> tuple[float, float]:
    """Median idle pod-seconds before (waiting workers) and after (leaving workers)."""
    before: list[Run] = []
    after: list[Run] = []
    for repeat in range(REPEATS):
        before.append(run_study(url, f"bench-idle-wait-{repeat}", wait_for_slots=True))
        after.append(run_study(url, f"bench-idle-leave-{repeat}", wait_for_slots=False))
    old = statistics.median(r.idle_pod_seconds for r in before)
    new = statistics.median(r.idle_pod_seconds for r in after)
    print(
        f"Idle pod-seconds at the end of a {WORKERS}-worker, {TRIALS}-trial study "
        f"(trials {SHORTEST}-{LONGEST} s, median of {REPEATS}):"
    )
    for label, runs in (("waiting (before)", before), ("leaving (after)", after)):
        print(
            f"  {label:>16}: idle {statistics.median(r.idle_pod_seconds for r in runs):6.2f} "
            f"pod-s of {statistics.median(r.pod_seconds for r in runs):6.2f} pod-s; "
            f"finished trials {sorted({r.finished for r in runs})}"
        )
    print(f"  after/before: {new / old:.3f} ({old / max(new, 1e-9):.0f}x less idle time)")
    return old, new


def main() -> int:
    from testbed.postgres import remove_postgres_data, start_postgres
    from testbed.supervisor import Supervisor

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        sup = Supervisor(Path(tmp) / "processes.json")
        pg = start_postgres(sup, Path(tmp))
        try:
            bench_idle(pg.url)
        finally:
            sup.stop_all()
            remove_postgres_data(pg.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
