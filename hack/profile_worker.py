"""Where the worker's per-trial time goes: cProfile of one `optuna-operator worker` process
and one plain `study.optimize` process, 200 trials each of the bench's trivial objective, TPE,
on a throwaway PostgreSQL (the same setup as `make bench`'s worker section).

    PYTHONPATH=hack:. .venv/bin/python hack/profile_worker.py [OUTPUT_DIR]

Writes optimize.prof and worker.prof (open them with `python -m pstats` or snakeviz) and
prints the costs the worker adds, as seconds under the profiler.
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

from bench import BASELINE, ROOT, WORKER_TRIALS
from bench_objective import worker_env
from testbed.postgres import remove_postgres_data, start_postgres
from testbed.supervisor import Supervisor

PROFILE = [sys.executable, "-m", "cProfile", "-o"]
# (label, pstats function pattern) of what the worker adds around each trial. cProfile sees
# only the main thread: the heartbeat thread's writes are not in it.
COSTS = (
    ("trial loop (optimize)", r"_optimize\.py.*\(_optimize_sequential\)"),
    ("trial attributes", r"\(_set_trial_attr_without_commit\)"),
    ("connection pings", r"\(do_ping\)"),
    ("stale-trial check (heartbeats)", r"\(fail_stale_trials\)"),
    ("trial slot claim", r"worker/storage\.py.*\(_claim_slot\)"),
    ("budget, deadline, goal checks", r"budget\.py.*\(stop_reason\)"),
    ("best-trial lookup for log lines", r"\(_log_completed_trial\)"),
    ("commits", r"method 'commit' of 'psycopg2"),
    ("statements", r"method 'execute' of 'psycopg2"),
)


def profile(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        sup = Supervisor(Path(tmp) / "processes.json")
        pg = start_postgres(sup, Path(tmp))
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
        finally:
            sup.stop_all()
            remove_postgres_data(pg.root)


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
