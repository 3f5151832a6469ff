"""`make bench`: speed of the status refresh and of the worker, as ratios to baselines run in
the same process on the same throwaway PostgreSQL. Prints numbers; asserts nothing.

1. Status refresh (`StoreRegistry.summarize`) on studies of 1k, 10k and 100k trials, against
   the obvious way (`study.trials` + `study.best_trial`, which load every trial). The
   operator pays this every few seconds for every study, so it must stay flat.
2. Worker (bench_worker.py): `optuna-operator worker` processes against plain
   `study.optimize(n_trials=...)` processes on the same trivial objective at 1, 2 and 4
   processes, a warm-up pair then alternating runs: whole-process time, client CPU per trial
   (whole processes and the trial loop alone) and, separately, what load balancing over one
   shared budget does to the trial loop. Then the exact budget: the largest overshoot of
   budget.trials over 10 runs of 4 workers.
3. Scale (bench_scale.py): 100 and 1,000 TuningStudies (3,000 on request) on one operator,
   dashboards on; what idle studies cost the API server and PostgreSQL over 5 quiet minutes,
   the operator's memory and CPU, status lag, and issue 24's targets met or not.
4. Pool (bench_pool.py): the same study with the worker pool and with one Job per trial
   (the Katib / OptimizationJob way) on one bed, with 1 s, 10 s and 60 s trials (fewer trials
   for the longer ones), alternating which goes first: seconds of each and the ratio.
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
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import optuna
from sqlalchemy import create_engine, text

from bench_idle import bench_idle
from bench_pgbouncer import bench_pgbouncer
from bench_pool import bench_pool
from bench_scale import bench_scale
from bench_worker import bench_worker
from optuna_operator.api import Direction
from optuna_operator.storage.study_store import StoreRegistry
from testbed.postgres import remove_postgres_data, start_postgres
from testbed.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1_000, 10_000, 100_000)
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
                    bench_worker(pg.url)
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
