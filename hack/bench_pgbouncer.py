"""`BENCH_SECTIONS=pgbouncer make bench`: 100 worker processes on one PostgreSQL, directly and
through PgBouncer (transaction pooling, Debian's package): trials/s and the server
connections each way.

Both runs use one PostgreSQL (max_connections 500, so the direct run fits) and one namespace
role each, as the operator sets them up (tenancy.provision); PgBouncer logs them in with
auth_query, as the chart's does. The workers are `optuna-operator worker` processes, 10 "pods"
of `processesPerPod: 10`, on the trivial objective: a trial is nothing but its database
statements, the worst case for a pooler. Peak server connections come from pg_stat_activity,
sampled every 50 ms. Also used by tests/integration/test_pgbouncer.py.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench_objective import worker_env
from optuna_operator.storage.tenancy import pooled_url, provision, tenant_names, with_user
from testbed.pgbouncer import Console, PgBouncer, pgbouncer_version, start_pgbouncer
from testbed.postgres import remove_postgres_data, start_postgres
from testbed.supervisor import Supervisor

__all__ = [
    "DIRECT_CONNECTIONS",
    "Peak",
    "WorkerRun",
    "bench_pgbouncer",
    "run_workers",
    "tenant_url",
]

ROOT = Path(__file__).resolve().parents[1]
PODS = 10
PROCESSES_PER_POD = 10
TRIALS = 1000
POOL_SIZE = 20
RESTARTS = 3
RESERVE = 10
# The server connections run_workers itself opens at most, besides the Peak sampler's.
DIRECT_CONNECTIONS = 2


def tenant_url(admin_url: str, namespace: str) -> str:
    """A namespace role and schema, made as the operator makes them; the role's direct URL."""
    names = tenant_names(namespace)
    password = secrets.token_urlsafe(24)
    engine = create_engine(admin_url)
    with engine.begin() as conn:
        provision(conn, names, password, secrets.token_urlsafe(24))
    engine.dispose()
    return with_user(admin_url, names.role, password)


class Peak:
    """Samples, every 50 ms until stopped, the client backends PostgreSQL serves (less the
    sampler's own) and, with a PgBouncer, the clients connected to it."""

    def __init__(self, admin_url: str, bouncer: PgBouncer | None = None) -> None:
        self.server = 0
        self.clients = 0
        self._bouncer = bouncer
        self._engine = create_engine(admin_url, pool_size=1, max_overflow=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()

    def _run(self) -> None:
        query = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        console = Console(self._bouncer) if self._bouncer is not None else None
        with self._engine.connect() as conn:
            while not self._stop.wait(0.05):
                self.server = max(self.server, int(conn.execute(query).scalar_one()))
                conn.rollback()
                if console is not None:
                    pools = console.show("POOLS")
                    clients = sum(
                        int(str(p["cl_active"])) + int(str(p["cl_waiting"]))
                        for p in pools
                        if p["database"] != "pgbouncer"
                    )
                    self.clients = max(self.clients, clients)
        if console is not None:
            console.close()


@dataclass(frozen=True)
class WorkerRun:
    seconds: float  # first worker started to last worker exited (start-up included)
    trials: int  # finished trials (complete)
    trial_seconds: float  # first trial started to last trial finished
    peak_server: int  # client backends at PostgreSQL
    peak_clients: int  # clients at PgBouncer; 0 without one
    restarts: int  # worker pods that failed and were started again, as their Job would

    @property
    def trials_per_second(self) -> float:
        return self.trials / self.trial_seconds


def run_workers(
    url: str,
    admin_url: str,
    study_name: str,
    trials: int,
    bouncer: PgBouncer | None = None,
    pods: int = PODS,
    processes_per_pod: int = PROCESSES_PER_POD,
    logs: Path | None = None,
) -> WorkerRun:
    """`pods` worker processes of `processes_per_pod` each finish a study of `trials` trials
    at `url` (the study is made first, directly, as the operator does). A pod that fails is
    started again, at most RESTARTS times, as its Job would start a replacement."""
    with _direct_storage(url, admin_url) as storage:
        optuna.create_study(storage=storage, study_name=study_name)
    env = worker_env(url, study_name, trials, processes_per_pod)
    with tempfile.TemporaryDirectory(prefix="bench-pgb-") as tmp, Peak(admin_url, bouncer) as peak:
        logs = logs or Path(tmp)
        log_dir = logs

        def start(pod: int, attempt: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "optuna_operator.cli", "worker"],
                env={**env, "POD_NAME": f"{study_name}-{pod}-{attempt}"},
                cwd=ROOT,
                stdout=(log_dir / f"{pod}.{attempt}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )

        t0 = time.perf_counter()
        attempts = [0] * pods
        procs = [start(i, 0) for i in range(pods)]
        codes: list[int | None] = [None] * pods
        while any(c is None for c in codes):
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"workers still running after 600 s: exit codes {codes}")
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if codes[i] is None and proc.poll() is not None:
                    if proc.returncode != 0 and attempts[i] < RESTARTS:
                        attempts[i] += 1
                        procs[i] = start(i, attempts[i])
                    else:
                        codes[i] = proc.returncode
        seconds = time.perf_counter() - t0
        if any(codes):
            failed = [i for i, c in enumerate(codes) if c]
            tail = (logs / f"{failed[0]}.{attempts[failed[0]]}.log").read_text()[-1500:]
            raise RuntimeError(
                f"worker exit codes {codes}; last failure of pod {failed[0]}:\n{tail}"
            )
    with _direct_storage(url, admin_url) as storage:
        study = optuna.load_study(study_name=study_name, storage=storage)
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    starts = [t.datetime_start for t in done if t.datetime_start is not None]
    ends = [t.datetime_complete for t in done if t.datetime_complete is not None]
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    return WorkerRun(
        seconds=seconds,
        trials=complete,
        trial_seconds=(max(ends) - min(starts)).total_seconds(),
        peak_server=peak.server,
        peak_clients=peak.clients,
        restarts=sum(attempts),
    )


@contextmanager
def _direct_storage(url: str, admin_url: str) -> Iterator[RDBStorage]:
    """The same role's storage on the server itself (the operator's way in), its connections
    closed when done: an engine left to the garbage collector keeps a server slot open that
    PgBouncer's pools may need. Optuna opens two connections at once while it checks the
    schema (DIRECT_CONNECTIONS)."""
    admin = make_url(admin_url)
    direct = make_url(url).set(host=admin.host, port=admin.port)
    storage = RDBStorage(
        direct.render_as_string(hide_password=False), engine_kwargs={"poolclass": NullPool}
    )
    try:
        yield storage
    finally:
        storage.engine.dispose()


def bench_pgbouncer() -> None:
    workers = PODS * PROCESSES_PER_POD
    print(
        f"Many workers on one PostgreSQL: {workers} worker processes ({PODS} pods x "
        f"{PROCESSES_PER_POD}), {TRIALS} trials of a trivial objective, TPE; PgBouncer "
        f"{pgbouncer_version()} transaction pooling, pool {POOL_SIZE} + reserve {RESERVE}"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sup = Supervisor(Path(tmp) / "processes.json")
        pg = start_postgres(sup, Path(tmp), max_connections=500)
        try:
            bouncer = start_pgbouncer(
                sup,
                Path(tmp),
                pg,
                "optuna",
                pool_size=POOL_SIZE,
                reserve_pool_size=RESERVE,
            )
            direct = run_workers(tenant_url(pg.url, "bench-direct"), pg.url, "direct", TRIALS)
            pooled = run_workers(
                pooled_url(tenant_url(pg.url, "bench-pooled"), bouncer.address),
                pg.url,
                "pooled",
                TRIALS,
                bouncer,
            )
        finally:
            sup.stop_all()
            remove_postgres_data(pg.root)
    header = ("", "trials/s", "wall s", "server conns (peak)", "clients at pooler", "restarts")
    print("  {:>10} {:>9} {:>7} {:>20} {:>18} {:>9}".format(*header))
    for name, run in (("direct", direct), ("PgBouncer", pooled)):
        print(
            f"  {name:>10} {run.trials_per_second:9.1f} {run.seconds:7.1f} "
            f"{run.peak_server:>20} {run.peak_clients or '-':>18} {run.restarts:>9}"
        )
    speed = pooled.trials_per_second / direct.trials_per_second
    print(
        f"  PgBouncer / direct: trials/s {speed:.2f}x, "
        f"server connections {pooled.peak_server / direct.peak_server:.2f}x"
    )
