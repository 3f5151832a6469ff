"""`make bench`: speed of the status refresh and of the worker, as ratios to baselines run in
the same process on the same throwaway PostgreSQL. Prints numbers; asserts nothing.

1. Status refresh (`StoreRegistry.summarize`) on studies of 1k, 10k and 100k trials, against
   the obvious way (`study.trials` + `study.best_trial`, which load every trial). The
   operator pays this every few seconds for every study, so it must stay flat.
2. Worker throughput: `optuna-operator worker` processes against plain
   `study.optimize(n_trials=...)` processes on the same trivial objective: what the worker's
   budget checks, heartbeats and bookkeeping cost per trial: whole processes (start-up and
   exit included) and the trial loop alone (first trial started to last finished, from the
   database). Then the exact budget: the largest overshoot of budget.trials over 10 runs of
   4 workers.
3. Scale (bench_scale.py): 100, 500 and 1,000 TuningStudies on one operator; what idle
   studies cost the API server and PostgreSQL, the operator's memory and CPU, status lag.
4. Pool (bench_pool.py): the same 40-trial study with the worker pool and with one Job per
   trial (the Katib / OptimizationJob way) on one bed: trials/s of each and the ratio.
5. PgBouncer (bench_pgbouncer.py): 100 worker processes directly and through PgBouncer:
   trials/s and the server connections each way.
6. Idle (bench_idle.py): pod-seconds held idle at the end of a 4-worker, 40-trial study,
   workers waiting for a slot (the old way) against leaving when none can come, as a ratio.

BENCH_SECTIONS (comma-separated, default all: status,worker,scale,pool,pgbouncer,idle) picks
the sections.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import optuna
from sqlalchemy import create_engine, text

from bench_idle import bench_idle
from bench_objective import worker_env
from bench_pgbouncer import bench_pgbouncer
from bench_pool import bench_pool
from bench_scale import bench_scale
from optuna_operator.api import Direction
from optuna_operator.storage.study_store import StoreRegistry
from testbed.postgres import remove_postgres_data, start_postgres
from testbed.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1_000, 10_000, 100_000)
WORKER_TRIALS = 200
WORKER_PROCESSES = (1, 2, 4)
WORKER_REPEATS = 5
OVERSHOOT_RUNS, OVERSHOOT_WORKERS, OVERSHOOT_BUDGET = 10, 4, 20
SECTIONS = ("status", "worker", "scale", "pool", "pgbouncer", "idle")


def fill(url: str, name: str, n: int, multi: bool) -> None:
    """Insert n finished trials with SQL: creating 100k through Optuna would take an hour."""
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    study = optuna.create_study(storage=url, study_name=name, directions=directions)
    sid = study._study_id
    engine = create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                "SELECT g, :sid, CASE WHEN g % 10 = 0 THEN 'PRUNED'::trialstate "
                "ELSE 'COMPLETE'::trialstate END, :now, :now FROM generate_series(0, :n - 1) g"
            ),
            {"sid": sid, "n": n, "now": now},
        )
        for objective in range(len(directions)):
            conn.execute(
                text(
                    "INSERT INTO trial_values (trial_id, objective, value, value_type) "
                    "SELECT trial_id, :obj, sin(number * (:obj + 1)) * 100, "
                    "'FINITE'::trialvaluetype FROM trials WHERE study_id = :sid"
                ),
                {"sid": sid, "obj": objective},
            )
        conn.execute(
            text(
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                "SELECT trial_id, 'x', number % 100, :dist FROM trials WHERE study_id = :sid"
            ),
            {
                "sid": sid,
                "dist": json.dumps(
                    {
                        "name": "FloatDistribution",
                        "attributes": {"low": 0.0, "high": 100.0, "log": False, "step": None},
                    }
                ),
            },
        )
    with engine.connect() as conn:
        # What autovacuum does after a bulk insert on a real server: without statistics the
        # planner may scan the whole study instead of the newest trials.
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    engine.dispose()


def timed(fn: object, repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bench_status(url: str) -> None:
    print("Status refresh: StoreRegistry.summarize vs loading all trials (median of 5)")
    print(f"  {'trials':>8} {'objectives':>10} {'summarize':>11} {'load all':>10} {'ratio':>7}")
    stores = StoreRegistry()
    for multi in (False, True):
        for n in SIZES:
            name = f"bench-{n}-{'multi' if multi else 'single'}"
            fill(url, name, n, multi)
            directions = [Direction.MAXIMIZE, Direction.MINIMIZE] if multi else [Direction.MAXIMIZE]
            handle = stores.ensure_study(url, name, directions, None, None, {})
            stores.summarize(url, handle)  # first call scans everything once (Pareto cache)
            ours = timed(lambda h=handle: stores.summarize(url, h))
            study = optuna.load_study(study_name=name, storage=url)

            def naive(s: optuna.Study = study, m: bool = multi) -> None:
                trials = s.get_trials(deepcopy=False)
                _ = s.best_trials if m else s.best_trial
                _ = len(trials)

            baseline = timed(naive, repeat=1 if n >= 100_000 else 3)
            print(
                f"  {n:>8} {2 if multi else 1:>10} {ours * 1000:>9.1f}ms "
                f"{baseline * 1000:>8.0f}ms {baseline / ours:>6.0f}x"
            )
    stores.close()


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


BASELINE = """
import optuna, sys
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2],
                          sampler=optuna.samplers.TPESampler(seed=int(sys.argv[4])))
def objective(t):
    return (t.suggest_float("x", -10, 10) - 2) ** 2 + t.suggest_float("y", -10, 10) ** 2
study.optimize(objective, n_trials=int(sys.argv[3]))
"""


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


def bench_worker(url: str, processes: int) -> None:
    """Median of WORKER_REPEATS alternating runs of each, so that a burst of load on a shared
    machine lands on both sides."""
    per_process = WORKER_TRIALS // processes
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'hack'}"}
    baseline_runs, worker_runs = [], []
    baseline_spans, worker_spans = [], []
    for repeat in range(WORKER_REPEATS):
        base_name = f"bench-baseline-{processes}-{repeat}"
        ours_name = f"bench-worker-{processes}-{repeat}"
        for name in (base_name, ours_name):
            optuna.create_study(storage=url, study_name=name)
        baseline_runs.append(
            run_processes(
                [
                    [sys.executable, "-c", BASELINE, base_name, url, str(per_process), str(i)]
                    for i in range(processes)
                ],
                env,
            )
        )
        worker_runs.append(
            run_processes(
                [[sys.executable, "-m", "optuna_operator.cli", "worker"]] * processes,
                worker_env(url, ours_name, WORKER_TRIALS),
            )
        )
        baseline_spans.append(trials_span(url, base_name))
        worker_spans.append(trials_span(url, ours_name))
    baseline = statistics.median(r.seconds for r in baseline_runs)
    ours = statistics.median(r.seconds for r in worker_runs)
    cpu_ratio = statistics.median(r.cpu_seconds for r in worker_runs) / statistics.median(
        r.cpu_seconds for r in baseline_runs
    )
    span_ratio = statistics.median(worker_spans) / statistics.median(baseline_spans)
    print(
        f"  {processes} process(es): optimize() {WORKER_TRIALS / baseline:6.1f} trials/s, "
        f"worker {WORKER_TRIALS / ours:6.1f} trials/s, worker/optimize() time "
        f"{ours / baseline:4.2f}x, trial loop {span_ratio:4.2f}x (target <= 1.05), "
        f"CPU {cpu_ratio:4.2f}x (medians of {WORKER_REPEATS}; outside the loop "
        f"{_outside(baseline_runs, baseline_spans)} / {_outside(worker_runs, worker_spans)})"
    )


def _outside(runs: list[Run], spans: list[float]) -> str:
    """The processes' time outside the trial loop (start-up, exit), median seconds."""
    return f"{statistics.median(r.seconds - s for r, s in zip(runs, spans, strict=True)):.2f} s"


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


def main() -> int:
    sections = set(os.environ.get("BENCH_SECTIONS", ",".join(SECTIONS)).split(","))
    if sections - set(SECTIONS):
        raise SystemExit(f"BENCH_SECTIONS: unknown {sorted(sections - set(SECTIONS))}")
    if sections & {"status", "worker", "idle"}:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            sup = Supervisor(Path(tmp) / "processes.json")
            pg = start_postgres(sup, Path(tmp))
            try:
                optuna.logging.set_verbosity(optuna.logging.WARNING)
                if "status" in sections:
                    bench_status(pg.url)
                if "worker" in sections:
                    print(f"Worker throughput, {WORKER_TRIALS} trials of a trivial objective, TPE:")
                    for processes in WORKER_PROCESSES:
                        bench_worker(pg.url, processes)
                    bench_overshoot(pg.url)
                if "idle" in sections:
                    bench_idle(pg.url)
            finally:
                sup.stop_all()
                remove_postgres_data(pg.root)
    if "scale" in sections:
        bench_scale()
    if "pool" in sections:
        bench_pool()
    if "pgbouncer" in sections:
        bench_pgbouncer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
