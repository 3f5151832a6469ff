"""`make bench`, pool section: the worker pool against one Job per trial, on the same bed.

The same study (TPE, parallelism 4) runs both ways on one fresh test bed with one operator,
with trials of 1 s, 10 s and 60 s (ROWS: fewer trials for the longer ones):

- as a TuningStudy: the operator's Job of 4 worker pods, each running trials until the
  budget is spent;
- the way Katib and Kubeflow Trainer's OptimizationJob do it: one Kubernetes Job per trial,
  whose pod loads the study, asks for one trial, runs it and tells the result; a controller
  loop (this script, polling every 0.25 s) keeps at most 4 such Jobs running.

Both read and write the namespace's own schema through its own credential (the Secret
`optuna-storage`, key `url`, made by the operator: tenancy). A warm-up of both ways (4 trials
of 1 s each) first makes that schema and credential and starts the bed's first Python
processes, so that no measured run pays them. Then each row runs in pairs, one run of each
way, and consecutive pairs alternate which way goes first, so that drift on a shared machine
lands on both; between runs the bench waits until no pod of the namespace is left running.
For each run it prints the time from the first API request to the last finished trial in the
database; for each row the ratio of the two ways in the same pair (Job per trial / pool, the
pool's speed-up) and what each way takes over the ideal (rounds x trial length): the pool's
in all (mostly its start: the operator's set-up, the workers' first start), a Job per
trial's per round (every trial pays it). A row with few rounds understates the pool's
speed-up in a long study, where its start is spread over many more trials.
The Jobs' study is made before their clock starts. The bed's pods are local processes: a
real node pays image pull, container and framework start-up per pod on top, which only
widens the gap.

    BENCH_SECTIONS=pool make bench
    BENCH_POOL_ROWS=1:40:2,10:16:2,60:8:1  # trial seconds:trials:pairs (the default)
"""

from __future__ import annotations

import base64
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from kubernetes import client
from psycopg2.errors import UndefinedTable
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from bench_cluster import GROUP, PLURAL, ROOT, VERSION, BenchCluster
from bench_objective import TRIAL_SECONDS_ENV
from testbed import Bed

NAMESPACE = "bench-pool"
PARALLELISM = 4
POLL_SECONDS = 0.25
TIMEOUT_SECONDS = 900.0
QUIET_TIMEOUT_SECONDS = 120.0
TENANT_SECRET = "optuna-storage"
ROWS_ENV = "BENCH_POOL_ROWS"
POOL, JOBS = "pool", "jobs"
LABEL = "bench-run"

# One trial, the way a pod-per-trial controller runs it: a fresh process per trial.
ONE_TRIAL = """
import os, sys, time, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=os.environ["OPTUNA_STORAGE_URL"],
                          sampler=optuna.samplers.TPESampler())
trial = study.ask()
time.sleep(float(sys.argv[2]))
value = (trial.suggest_float("x", -10, 10) - 2) ** 2 + trial.suggest_float("y", -10, 10) ** 2
study.tell(trial, value)
"""


@dataclass(frozen=True)
class Row:
    """One trial length: `trials` trials of `seconds` each, `pairs` runs of each way."""

    seconds: float
    trials: int
    pairs: int

    @property
    def rounds(self) -> int:
        """Trials one slot runs one after another."""
        return -(-self.trials // PARALLELISM)

    @property
    def ideal(self) -> float:
        return self.rounds * self.seconds


ROWS = (Row(1, 40, 2), Row(10, 16, 2), Row(60, 8, 1))


def parse_rows(value: str) -> tuple[Row, ...]:
    """`seconds:trials:pairs,...`, e.g. `1:40:2,10:16:2,60:8:1`."""
    rows = []
    for item in value.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"{ROWS_ENV}: {item!r} is not seconds:trials:pairs")
        seconds, trials, pairs = float(parts[0]), int(parts[1]), int(parts[2])
        if seconds <= 0 or trials < 1 or pairs < 1:
            raise ValueError(f"{ROWS_ENV}: {item!r} needs seconds > 0, trials and pairs >= 1")
        rows.append(Row(seconds, trials, pairs))
    return tuple(rows)


def orders(rows: Sequence[Row]) -> list[tuple[Row, int, tuple[str, str]]]:
    """(row, pair, which way first) for every pair in run order; consecutive pairs alternate,
    over the rows too."""
    plan: list[tuple[Row, int, tuple[str, str]]] = []
    for row in rows:
        for pair in range(row.pairs):
            first = (POOL, JOBS) if len(plan) % 2 == 0 else (JOBS, POOL)
            plan.append((row, pair, first))
    return plan


def _seconds(value: float) -> str:
    return f"{value:g} s"


def run_name(way: str, row: Row, index: int) -> str:
    """A TuningStudy or Job name prefix: DNS labels, no dots."""
    return f"{way}-{row.seconds:g}s-{index}".replace(".", "p")


@dataclass(frozen=True)
class Pair:
    pool: float
    jobs: float

    @property
    def ratio(self) -> float:
        """The pool's speed-up: the same trials in less time."""
        return self.jobs / self.pool


def table(results: Sequence[tuple[Row, Sequence[Pair]]]) -> list[str]:
    """Markdown: one line per trial length, each pair's numbers separated by " / "; what each
    way takes over the ideal as medians: the pool's in all (mostly its start: the operator's
    set-up, the workers' first start), a Job per trial's per round (each trial slot pays it
    once per trial)."""
    lines = [
        f"| trial | trials (rounds of {PARALLELISM}) | worker pool | one Job per trial | ideal "
        "| pool speed-up | pool over ideal | Job per trial over ideal, per round |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, pairs in results:
        pool = " / ".join(f"{p.pool:.1f}" for p in pairs)
        jobs = " / ".join(f"{p.jobs:.1f}" for p in pairs)
        ratio = " / ".join(f"{p.ratio:.2f}x" for p in pairs)
        pool_adds = statistics.median(p.pool - row.ideal for p in pairs)
        jobs_adds = statistics.median((p.jobs - row.ideal) / row.rounds for p in pairs)
        lines.append(
            f"| {_seconds(row.seconds)} | {row.trials} ({row.rounds}) | {pool} s | {jobs} s | "
            f"{row.ideal:g} s | {ratio} | {pool_adds:.1f} s | {jobs_adds:.1f} s |"
        )
    return lines


def finished(url: str, study_name: str) -> int:
    """Finished trials of one study in the namespace's schema (its role's search_path); 0
    while the operator has made the credential but not yet Optuna's tables."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                text(
                    "SELECT COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = :name AND t.state IN ('COMPLETE', 'PRUNED')"
                ),
                {"name": study_name},
            ).scalar()
    except ProgrammingError as err:
        if not isinstance(err.orig, UndefinedTable):
            raise
        return 0
    finally:
        engine.dispose()
    return int(value or 0)


class PoolBench(BenchCluster):
    """The bed and operator both ways of running the study share."""

    def __init__(self, bed: Bed) -> None:
        super().__init__(bed)
        self.batch = client.BatchV1Api(self.api)

    def setup(self) -> None:
        # start_operator's `kubectl wait` fails outright, instead of waiting, when it reads the
        # CRD before the API server has given it any condition (seen on a loaded machine).
        self.kubectl("apply", "-f", str(ROOT / "crds"))
        extensions = client.ApiextensionsV1Api(self.api)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            crd = extensions.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
            conditions = (crd.status and crd.status.conditions) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            time.sleep(POLL_SECONDS)
        self.start_operator([NAMESPACE])

    def tenant_url(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                secret = self.core.read_namespaced_secret(TENANT_SECRET, NAMESPACE)
                if secret.data and "url" in secret.data:
                    return base64.b64decode(secret.data["url"]).decode()
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
            time.sleep(0.5)
        raise TimeoutError(f"no Secret {TENANT_SECRET} in {NAMESPACE} after 120 s")

    def wait_finished(self, url: str, study_name: str, trials: int, t0: float) -> float:
        while time.monotonic() - t0 < TIMEOUT_SECONDS:
            if finished(url, study_name) >= trials:
                return time.monotonic() - t0
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"{study_name}: {trials} trials not finished in {TIMEOUT_SECONDS} s")

    def wait_quiet(self) -> None:
        """Until no pod of the namespace is pending or running: the next run starts alone."""
        deadline = time.monotonic() + QUIET_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            pods = self.core.list_namespaced_pod(NAMESPACE).items
            if all(p.status is None or p.status.phase in ("Succeeded", "Failed") for p in pods):
                return
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"pods of {NAMESPACE} still running after {QUIET_TIMEOUT_SECONDS} s")

    def run_pool(self, name: str, row: Row) -> float:
        """Seconds from creating the TuningStudy to its last finished trial."""
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TuningStudy",
            "metadata": {"name": name},
            "spec": {
                "directions": ["minimize"],
                "objective": {"function": "hack.bench_objective:sleeping"},
                "budget": {"trials": row.trials},
                "sampler": {"type": "TPE"},
                "workers": {
                    "parallelism": PARALLELISM,
                    "env": [{"name": TRIAL_SECONDS_ENV, "value": f"{row.seconds:g}"}],
                },
                "dashboard": {"enabled": False},
            },
        }
        t0 = time.monotonic()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        return self.wait_finished(self.tenant_url(), f"{NAMESPACE}.{name}", row.trials, t0)

    def trial_job(self, name: str, run: str, study_name: str, seconds: float) -> dict[str, Any]:
        labels = {LABEL: run}
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "trial",
                                "image": "python",
                                "command": ["python", "-c", ONE_TRIAL, study_name, f"{seconds:g}"],
                                "env": [
                                    {
                                        "name": "OPTUNA_STORAGE_URL",
                                        "valueFrom": {
                                            "secretKeyRef": {"name": TENANT_SECRET, "key": "url"}
                                        },
                                    }
                                ],
                            }
                        ],
                    },
                },
            },
        }

    def run_pod_per_trial(self, name: str, row: Row) -> float:
        """Seconds from the first trial's Job to the last finished trial."""
        url = self.tenant_url()
        study_name = f"{NAMESPACE}.{name}"
        optuna.create_study(storage=url, study_name=study_name, direction="minimize")
        selector = f"{LABEL}={name}"
        created = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < TIMEOUT_SECONDS:
            jobs = self.batch.list_namespaced_job(NAMESPACE, label_selector=selector)
            active = 0
            failed = 0
            for job in jobs.items:
                status = job.status
                if status is not None and (status.succeeded or status.failed):
                    failed += int(status.failed or 0)
                    continue
                active += 1
            if failed:
                raise RuntimeError(f"{failed} trial Job(s) failed; see the bed's pod logs")
            while active < PARALLELISM and created < row.trials:
                body = self.trial_job(f"{name}-{created}", name, study_name, row.seconds)
                self.batch.create_namespaced_job(NAMESPACE, body)
                created += 1
                active += 1
            if created >= row.trials and active == 0:
                break
            time.sleep(POLL_SECONDS)
        seconds = self.wait_finished(url, study_name, row.trials, t0)
        # Finished Jobs would lengthen every later run's list; the next run waits for quiet.
        self.batch.delete_collection_namespaced_job(
            NAMESPACE, label_selector=selector, propagation_policy="Background"
        )
        return seconds

    def run(self, way: str, name: str, row: Row) -> float:
        seconds = (self.run_pool if way == POOL else self.run_pod_per_trial)(name, row)
        self.wait_quiet()
        return seconds


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def bench_pool() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = parse_rows(os.environ[ROWS_ENV]) if os.environ.get(ROWS_ENV) else ROWS
    plan = orders(rows)
    print(
        f"Pool vs one Job per trial: TPE, parallelism {PARALLELISM}, one bed and operator, "
        f"{len(plan)} pairs ({', '.join(f'{r.trials} x {_seconds(r.seconds)}' for r in rows)}); "
        f"{load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        bed = Bed(Path(tmp) / "bed").start()
        bench = PoolBench(bed)
        try:
            bench.setup()
            warmup = Row(1, PARALLELISM, 1)
            for way in (POOL, JOBS):
                bench.run(way, f"warmup-{way}", warmup)
            results: dict[Row, list[Pair]] = {row: [] for row in rows}
            for index, (row, pair, first) in enumerate(plan):
                seconds: dict[str, float] = {}
                for way in first:
                    seconds[way] = bench.run(way, run_name(way, row, index), row)
                done = Pair(seconds[POOL], seconds[JOBS])
                results[row].append(done)
                print(
                    f"  {_seconds(row.seconds)} x {row.trials}, pair {pair + 1} "
                    f"({first[0]} first): pool {done.pool:.1f} s, Job per trial "
                    f"{done.jobs:.1f} s, {done.ratio:.2f}x; {load_average()}",
                    flush=True,
                )
        finally:
            bench.stop()
            bed.stop()
    print("\nSeconds from the first API request to the last finished trial:\n")
    print("\n".join(table(list(results.items()))))
    print(f"\n  {load_average()}", flush=True)


if __name__ == "__main__":
    bench_pool()
