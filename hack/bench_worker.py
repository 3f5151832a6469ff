"""`make bench`, worker section: `optuna-operator worker` processes against plain
`study.optimize(n_trials=...)` processes on the same trivial objective (bench_objective.py),
on one throwaway PostgreSQL.

At 1, 2 and 4 processes, after one unreported warm-up pair, WORKER_REPEATS runs of each side
in alternating order (even repeats optimize() first, odd ones the worker first), so that a
burst of load on a shared machine lands on both. For each side, medians of:

- whole-process time: start of the processes to the last exit;
- client CPU per trial, whole processes: user + system time of the client processes
  (start-up and exit included) over the trials;
- client CPU per trial, trial loop: each process's CPU from its first trial's objective call
  to its last one (`bench_objective.recorded`, the same on both sides), summed, over the
  trials in between; what a trial costs the client, without start-up, exit or idle waits;
- trial loop: the study's first trial start to its last trial end, as the database recorded
  them.

Load balance, separately: the N optimize() processes run n/N trials each, the N workers share
one budget. Where the processes get unequal CPU (4 processes on 2 cores), optimize()'s
fastest process is done early and the study waits for the slowest (the "end tail": from the
first process's last trial start to the last process's), while the workers take trials until
the budget is spent and end together. The trial-loop ratio carries that effect; the time
per trial while all processes are busy (from the last process's first trial to the first
process's last trial) does not.

Then the exact budget: the largest overshoot of budget.trials over OVERSHOOT_RUNS runs of
OVERSHOOT_WORKERS workers.

    BENCH_SECTIONS=worker make bench
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from sqlalchemy import create_engine, text

from bench_objective import TRIAL_LOG_ENV, worker_env

ROOT = Path(__file__).resolve().parents[1]
WORKER_TRIALS = 200
WORKER_PROCESSES = (1, 2, 4)
WORKER_REPEATS = 4
WARMUP_TRIALS = 50
OVERSHOOT_RUNS, OVERSHOOT_WORKERS, OVERSHOOT_BUDGET = 10, 4, 20
OPTIMIZE, WORKER = "optimize", "worker"

# One plain-Optuna process: argv study, storage, trials, seed, objective (bench_objective).
BASELINE = """
import sys
import optuna
import bench_objective
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2],
                          sampler=optuna.samplers.TPESampler(seed=int(sys.argv[4])))
function = sys.argv[5] if len(sys.argv) > 5 else "objective"
study.optimize(getattr(bench_objective, function), n_trials=int(sys.argv[3]))
"""


@dataclass(frozen=True)
class Run:
    """Wall time of a set of processes, and the CPU time they used (user + system), which
    other load on a shared machine disturbs far less than the wall time."""

    seconds: float
    cpu_seconds: float


def run_processes(commands: list[list[str]], env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for c in commands
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a benchmark process failed: exit codes {codes}")
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(seconds, cpu)


def trials_span(url: str, study_name: str) -> float:
    """Seconds from the study's first trial start to its last trial end, as the database
    recorded them: the trial loop without the processes' start-up and exit."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            first, last = conn.execute(
                text(
                    "SELECT min(t.datetime_start), max(t.datetime_complete) FROM trials t "
                    "JOIN studies s USING (study_id) WHERE s.study_name = :name"
                ),
                {"name": study_name},
            ).one()
    finally:
        engine.dispose()
    return float((last - first).total_seconds())


@dataclass(frozen=True)
class ProcessLog:
    """What `bench_objective.recorded` wrote for one process."""

    starts: list[float]
    cpu_first: float
    cpu_last: float

    @classmethod
    def read(cls, path: Path) -> ProcessLog:
        data = json.loads(path.read_text())
        return cls(data["starts"], data["cpu_first"], data["cpu_last"])


def loop_cpu_per_trial(logs: Sequence[ProcessLog]) -> float:
    """Client CPU seconds per trial inside the trial loop: each process's CPU from its first
    trial to its last, summed, over the trials in between."""
    intervals = sum(len(log.starts) - 1 for log in logs)
    if intervals <= 0:
        raise ValueError("no process ran two trials")
    return sum(log.cpu_last - log.cpu_first for log in logs) / intervals


@dataclass(frozen=True)
class Balance:
    """How the trials spread over the processes of one run."""

    fewest: int  # trials of the process that ran the fewest
    most: int
    tail: float  # seconds from the first process's last trial start to the last one's
    busy_per_trial: float | None  # seconds per trial while every process had trials left


def balance(logs: Sequence[ProcessLog]) -> Balance:
    counts = [len(log.starts) for log in logs if log.starts]
    if not counts:
        raise ValueError("no process ran a trial")
    firsts = [log.starts[0] for log in logs if log.starts]
    lasts = [log.starts[-1] for log in logs if log.starts]
    lo, hi = max(firsts), min(lasts)
    busy = sum(1 for log in logs for start in log.starts if lo <= start < hi)
    return Balance(
        fewest=min(counts),
        most=max(counts),
        tail=max(lasts) - hi,
        busy_per_trial=(hi - lo) / busy if busy and hi > lo else None,
    )


def order(repeat: int) -> tuple[str, str]:
    """Which side runs first in a repeat: alternating, so that drift lands on both."""
    return (OPTIMIZE, WORKER) if repeat % 2 == 0 else (WORKER, OPTIMIZE)


@dataclass(frozen=True)
class Sample:
    """One side, one run."""

    run: Run
    span: float
    logs: list[ProcessLog]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class Summary:
    """Medians of one side's samples at one process count."""

    trials_per_s: float
    seconds: float
    cpu_per_trial: float  # whole processes
    loop_cpu_per_trial: float
    span: float
    outside: float  # the processes' time outside the trial loop (start-up, exit)
    fewest: int
    most: int
    tail: float
    busy_per_trial: float | None

    @classmethod
    def of(cls, samples: Sequence[Sample], trials: int) -> Summary:
        balances = [balance(s.logs) for s in samples]
        busy = [b.busy_per_trial for b in balances if b.busy_per_trial is not None]
        seconds = _median([s.run.seconds for s in samples])
        return cls(
            trials_per_s=trials / seconds,
            seconds=seconds,
            cpu_per_trial=_median([s.run.cpu_seconds / trials for s in samples]),
            loop_cpu_per_trial=_median([loop_cpu_per_trial(s.logs) for s in samples]),
            span=_median([s.span for s in samples]),
            outside=_median([s.run.seconds - s.span for s in samples]),
            fewest=min(b.fewest for b in balances),
            most=max(b.most for b in balances),
            tail=_median([b.tail for b in balances]),
            busy_per_trial=_median(busy) if busy else None,
        )


def _ratio(ours: float | None, base: float | None) -> str:
    return f"{ours / base:.2f}x" if ours is not None and base else "—"


def _spread(fewest: int, most: int) -> str:
    return str(fewest) if fewest == most else f"{fewest}-{most}"


def worker_table(rows: Sequence[tuple[int, Summary, Summary]]) -> list[str]:
    """Markdown: per process count, `optimize()` against the worker (worker / optimize())."""
    lines = [
        "| processes | `optimize()` trials/s | worker trials/s | time | client CPU per trial, "
        "whole processes | client CPU per trial, trial loop | trial loop | outside the loop |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for processes, base, ours in rows:
        lines.append(
            f"| {processes} | {base.trials_per_s:.1f} | {ours.trials_per_s:.1f} | "
            f"{_ratio(ours.seconds, base.seconds)} | "
            f"{base.cpu_per_trial * 1000:.1f} / {ours.cpu_per_trial * 1000:.1f} ms, "
            f"{_ratio(ours.cpu_per_trial, base.cpu_per_trial)} | "
            f"{base.loop_cpu_per_trial * 1000:.1f} / {ours.loop_cpu_per_trial * 1000:.1f} ms, "
            f"{_ratio(ours.loop_cpu_per_trial, base.loop_cpu_per_trial)} | "
            f"{_ratio(ours.span, base.span)} | {base.outside:.2f} / {ours.outside:.2f} s |"
        )
    return lines


def balance_table(rows: Sequence[tuple[int, Summary, Summary]]) -> list[str]:
    """Markdown: how the trials spread over the processes, and what that does to the loop."""
    lines = [
        "| processes | trials per process `optimize()` / worker | end tail `optimize()` / "
        "worker | trial loop | time per trial, all processes busy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for processes, base, ours in rows:
        lines.append(
            f"| {processes} | {_spread(base.fewest, base.most)} / "
            f"{_spread(ours.fewest, ours.most)} | {base.tail:.2f} / {ours.tail:.2f} s | "
            f"{_ratio(ours.span, base.span)} | "
            f"{_ratio(ours.busy_per_trial, base.busy_per_trial)} |"
        )
    return lines


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'hack'}"}


def run_side(
    url: str, side: str, name: str, processes: int, trials: int, log_dir: Path | None
) -> Run:
    """N processes of one side on a new study; with log_dir, each records its trials there."""
    optuna.create_study(storage=url, study_name=name)
    function = "objective" if log_dir is None else "recorded"
    if side == OPTIMIZE:
        env = _env()
        per_process = str(trials // processes)
        commands = [
            [sys.executable, "-c", BASELINE, name, url, per_process, str(i), function]
            for i in range(processes)
        ]
    else:
        env = worker_env(url, name, trials, function=function)
        commands = [[sys.executable, "-m", "optuna_operator.cli", "worker"]] * processes
    if log_dir is not None:
        env[TRIAL_LOG_ENV] = str(log_dir)
    return run_processes(commands, env)


def bench_processes(url: str, processes: int) -> tuple[Summary, Summary]:
    """One warm-up pair, then WORKER_REPEATS pairs in alternating order."""
    for side in (OPTIMIZE, WORKER):
        run_side(url, side, f"warmup-{side}-{processes}", processes, WARMUP_TRIALS, None)
    samples: dict[str, list[Sample]] = {OPTIMIZE: [], WORKER: []}
    for repeat in range(WORKER_REPEATS):
        for side in order(repeat):
            name = f"bench-{side}-{processes}-{repeat}"
            with tempfile.TemporaryDirectory(prefix="bench-trials-") as tmp:
                run = run_side(url, side, name, processes, WORKER_TRIALS, Path(tmp))
                logs = [ProcessLog.read(p) for p in sorted(Path(tmp).glob("*.json"))]
            if len(logs) != processes:
                raise SystemExit(f"{name}: {len(logs)} trial logs from {processes} processes")
            samples[side].append(Sample(run, trials_span(url, name), logs))
    return (
        Summary.of(samples[OPTIMIZE], WORKER_TRIALS),
        Summary.of(samples[WORKER], WORKER_TRIALS),
    )


def bench_overshoot(url: str) -> None:
    """The exact budget: complete + pruned over budget.trials, worst of OVERSHOOT_RUNS."""
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    overshoots = []
    for run in range(OVERSHOOT_RUNS):
        name = f"bench-overshoot-{run}"
        optuna.create_study(storage=url, study_name=name)
        run_processes(
            [[sys.executable, "-m", "optuna_operator.cli", "worker"]] * OVERSHOOT_WORKERS,
            worker_env(url, name, OVERSHOOT_BUDGET),
        )
        trials = optuna.load_study(study_name=name, storage=url).get_trials(
            deepcopy=False, states=finished_states
        )
        overshoots.append(len(trials) - OVERSHOOT_BUDGET)
    print(
        f"  exact budget: {OVERSHOOT_WORKERS} workers, budget {OVERSHOOT_BUDGET}, "
        f"{OVERSHOOT_RUNS} runs: largest overshoot {max(overshoots)} (target 0), "
        f"largest shortfall {max(0, -min(overshoots))}"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def bench_worker(url: str) -> None:
    print(
        f"Worker against optimize(): {WORKER_TRIALS} trials of a trivial objective, TPE, "
        f"{WORKER_PROCESSES} processes, a warm-up pair then medians of {WORKER_REPEATS} "
        f"alternating runs; {load_average()}",
        flush=True,
    )
    rows = []
    for processes in WORKER_PROCESSES:
        base, ours = bench_processes(url, processes)
        rows.append((processes, base, ours))
        print(
            f"  {processes} process(es) done: time {_ratio(ours.seconds, base.seconds)}, "
            f"loop CPU per trial {_ratio(ours.loop_cpu_per_trial, base.loop_cpu_per_trial)}",
            flush=True,
        )
    print("\nworker / optimize(); CPU per trial as optimize() / worker:\n")
    print("\n".join(worker_table(rows)))
    print("\nLoad balance (optimize(): n/N trials per process; workers: one shared budget):\n")
    print("\n".join(balance_table(rows)))
    print()
    bench_overshoot(url)
    print(f"  {load_average()}", flush=True)
