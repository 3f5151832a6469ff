"""Where the worker's per-trial time goes: cProfile of one `optuna-operator worker` process
and one plain `study.optimize` process, 200 trials each of the bench's trivial objective, TPE,
on a throwaway PostgreSQL (the same setup as `make bench`'s worker section).

    PYTHONPATH=hack:. .venv/bin/python hack/profile_worker.py [OUTPUT_DIR]

Writes optimize.prof and worker.prof (open them with `python -m pstats` or snakeviz) and
prints the costs the worker adds, as seconds under the profiler. Then, with 1, 2 and 4
processes of each side, what PostgreSQL saw per trial (pg_stat_statements): statements,
their server time and rows. Unlike timings on a shared machine, these counts repeat.
"""

from __future__ import annotations

import os
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from sqlalchemy import create_engine, text

from bench_objective import worker_env
from bench_worker import BASELINE, ROOT, WORKER_TRIALS, run_processes
from testbed.postgres import Postgres, remove_postgres_data, run_sql, start_postgres
from testbed.supervisor import Supervisor

PROFILE = [sys.executable, "-m", "cProfile", "-o"]
# (label, pstats function pattern) of what the worker adds around each trial. cProfile sees
# only the main thread: the heartbeat thread's writes are not in it.
COSTS = (
    ("trial loop (optimize)", r"_optimize\.py.*\(_optimize_sequential\)"),
    ("trial attributes", r"\(_set_trial_attr_without_commit\)"),
    ("connection pings", r"\(do_ping\)"),
    ("stale-trial check (heartbeats)", r"\(fail_stale_trials\)"),
    ("trial slot claim", r"storage/worker_storage\.py.*\(_claim_slot\)"),
    ("budget, deadline, goal checks", r"budget\.py.*\(stop_reason\)"),
    ("best-trial lookup for log lines", r"\(_log_completed_trial\)"),
    ("commits", r"method 'commit' of 'psycopg2"),
    ("statements", r"method 'execute' of 'psycopg2"),
)


STATEMENT_PROCESSES = (1, 2, 4)
# Every statement, also those PostgreSQL runs inside others (foreign-key checks).
STATS_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
}


def profile(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        sup = Supervisor(Path(tmp) / "processes.json")
        pg = start_postgres(sup, Path(tmp), extra_settings=STATS_SETTINGS)
        try:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            for name in ("optimize", "worker"):
                optuna.create_study(storage=pg.url, study_name=name)
            env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'hack'}"}
            script = Path(tmp) / "optimize.py"
            script.write_text(BASELINE)
            optimize_args = ["optimize", pg.url, str(WORKER_TRIALS), "0"]
            subprocess.run(
                [*PROFILE, str(out / "optimize.prof"), str(script), *optimize_args],
                env=env,
                check=True,
                cwd=ROOT,
            )
            worker = {**worker_env(pg.url, "worker", WORKER_TRIALS), "POD_NAME": "profile"}
            subprocess.run(
                [*PROFILE, str(out / "worker.prof"), "-m", "optuna_operator.cli", "worker"],
                env=worker,
                check=True,
                cwd=ROOT,
                stderr=subprocess.DEVNULL,
            )
            count_statements(pg)
        finally:
            sup.stop_all()
            remove_postgres_data(pg.root)


def count_statements(pg: Postgres) -> None:
    """Statements per trial of N worker processes and of N optimize() processes."""
    run_sql(pg.root, pg.port, "CREATE EXTENSION pg_stat_statements", database="optuna")
    run_sql(
        pg.root,
        pg.port,
        "GRANT pg_read_all_stats TO optuna; "
        "GRANT EXECUTE ON FUNCTION pg_stat_statements_reset TO optuna",
        database="optuna",
    )
    engine = create_engine(pg.url)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'hack'}"}
    print(f"PostgreSQL per trial ({WORKER_TRIALS} trials, pg_stat_statements):")
    try:
        for processes in STATEMENT_PROCESSES:
            for side in ("optimize", "worker"):
                name = f"statements-{side}-{processes}"
                optuna.create_study(storage=pg.url, study_name=name)
                with engine.begin() as conn:
                    conn.execute(text("SELECT pg_stat_statements_reset()"))
                if side == "optimize":
                    per_process = str(WORKER_TRIALS // processes)
                    commands = [
                        [sys.executable, "-c", BASELINE, name, pg.url, per_process, str(i)]
                        for i in range(processes)
                    ]
                    run_processes(commands, env)
                else:
                    command = [sys.executable, "-m", "optuna_operator.cli", "worker"]
                    run_processes([command] * processes, worker_env(pg.url, name, WORKER_TRIALS))
                with engine.connect() as conn:
                    calls, ms, rows = conn.execute(
                        text(
                            "SELECT sum(calls), sum(total_exec_time), sum(rows) "
                            "FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"
                        )
                    ).one()
                per_trial = (value / WORKER_TRIALS for value in (calls, ms, rows))
                print(
                    "  {} process(es) {:>8}: {:5.1f} statements, {:5.2f} ms in the server, "
                    "{:5.1f} rows".format(processes, side, *per_trial)
                )
    finally:
        engine.dispose()


def cost(stats: pstats.Stats, pattern: str) -> tuple[int, float]:
    """(calls, cumulative seconds) of the functions matching pattern."""
    calls, seconds = 0, 0.0
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if re.search(pattern, f"{filename}:{line}({name})"):
            calls += row[1]
            seconds += row[3]
    return calls, seconds


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="profile-worker-"))
    out.mkdir(parents=True, exist_ok=True)
    profile(out)
    base, ours = pstats.Stats(str(out / "optimize.prof")), pstats.Stats(str(out / "worker.prof"))
    print(f"{WORKER_TRIALS} trials, seconds under cProfile (calls); profiles in {out}")
    print(f"  {'':32} {'optimize()':>18} {'worker':>18}")
    for label, pattern in COSTS:
        (bc, bs), (oc, os_) = cost(base, pattern), cost(ours, pattern)
        print(f"  {label:32} {bs:>8.2f}s ({bc:>6}) {os_:>8.2f}s ({oc:>6})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
