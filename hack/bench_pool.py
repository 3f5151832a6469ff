"""`make bench`, pool section: the worker pool against one Job per trial, on the same bed.

The same study (a 1 s objective, TPE, parallelism 4, 40 trials) runs twice on one fresh
test bed with one operator:

- as a TuningStudy: the operator's Job of 4 worker pods, each running trials until the
  budget is spent;
- the way Katib and Kubeflow Trainer's OptimizationJob do it: one Kubernetes Job per trial,
  whose pod loads the study, asks for one trial, runs it and tells the result; a controller
  loop (this script, polling every 0.25 s) keeps at most 4 such Jobs running.

Both read and write the namespace's own schema through its own credential (the Secret
`optuna-storage`, key `url`, made by the operator: tenancy). For each it prints the time from
the first API request to the 40th finished trial in the database, trials/s, and the ratio.
The pool's time includes what the operator does first (the namespace's role and schema, the
study); the Jobs' study is made before their clock starts, so the ratio is conservative.
The bed's pods are local processes: a real node pays image pull, container and framework
start-up per pod on top, which only widens the gap.
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from kubernetes import client
from sqlalchemy import create_engine, text

from bench_cluster import GROUP, PLURAL, VERSION, BenchCluster
from testbed import Bed

NAMESPACE = "bench-pool"
TRIALS = 40
PARALLELISM = 4
POLL_SECONDS = 0.25
TIMEOUT_SECONDS = 900.0
TENANT_SECRET = "optuna-storage"

# One trial, the way a pod-per-trial controller runs it: a fresh process per trial.
ONE_TRIAL = """
import os, sys, time, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=os.environ["OPTUNA_STORAGE_URL"],
                          sampler=optuna.samplers.TPESampler())
trial = study.ask()
time.sleep(1.0)
value = (trial.suggest_float("x", -10, 10) - 2) ** 2 + trial.suggest_float("y", -10, 10) ** 2
study.tell(trial, value)
"""


def finished(url: str, study_name: str) -> int:
    """Finished trials of one study in the namespace's schema (its role's search_path)."""
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
    finally:
        engine.dispose()
    return int(value or 0)


class PoolBench(BenchCluster):
    """The bed and operator both ways of running the study share."""

    def __init__(self, bed: Bed) -> None:
        super().__init__(bed)
        self.batch = client.BatchV1Api(self.api)

    def setup(self) -> None:
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

    def wait_finished(self, url: str, study_name: str, t0: float) -> float:
        while time.monotonic() - t0 < TIMEOUT_SECONDS:
            if finished(url, study_name) >= TRIALS:
                return time.monotonic() - t0
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"{study_name}: {TRIALS} trials not finished in {TIMEOUT_SECONDS} s")

    def run_pool(self) -> float:
        """Seconds from creating the TuningStudy to its 40th finished trial."""
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TuningStudy",
            "metadata": {"name": "pool"},
            "spec": {
                "directions": ["minimize"],
                "objective": {"function": "hack.bench_objective:slow"},
                "budget": {"trials": TRIALS},
                "sampler": {"type": "TPE"},
                "workers": {"parallelism": PARALLELISM},
                "dashboard": {"enabled": False},
            },
        }
        t0 = time.monotonic()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        return self.wait_finished(self.tenant_url(), f"{NAMESPACE}.pool", t0)

    def trial_job(self, name: str, study_name: str) -> dict[str, Any]:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": {"bench": "pod-per-trial"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"bench": "pod-per-trial"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "trial",
                                "image": "python",
                                "command": ["python", "-c", ONE_TRIAL, study_name],
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

    def run_pod_per_trial(self) -> float:
        """Seconds from the first trial's Job to the 40th finished trial."""
        url = self.tenant_url()
        study_name = f"{NAMESPACE}.pod-per-trial"
        optuna.create_study(storage=url, study_name=study_name, direction="minimize")
        created = 0
        failed = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < TIMEOUT_SECONDS:
            jobs = self.batch.list_namespaced_job(NAMESPACE, label_selector="bench=pod-per-trial")
            active = 0
            for job in jobs.items:
                status = job.status
                if status is not None and (status.succeeded or status.failed):
                    failed += int(status.failed or 0)
                    continue
                active += 1
            if failed:
                raise RuntimeError(f"{failed} trial Job(s) failed; see the bed's pod logs")
            while active < PARALLELISM and created < TRIALS:
                self.batch.create_namespaced_job(
                    NAMESPACE, self.trial_job(f"trial-{created}", study_name)
                )
                created += 1
                active += 1
            if created >= TRIALS and active == 0:
                break
            time.sleep(POLL_SECONDS)
        return self.wait_finished(url, study_name, t0)


def bench_pool() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"Pool vs pod-per-trial: {TRIALS} trials of a 1 s objective, TPE, parallelism "
        f"{PARALLELISM}, one bed and operator:",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        bed = Bed(Path(tmp) / "bed").start()
        bench = PoolBench(bed)
        try:
            bench.setup()
            pool = bench.run_pool()
            print(f"  worker pool (TuningStudy): {pool:6.1f}s  {TRIALS / pool:5.2f} trials/s")
            per_trial = bench.run_pod_per_trial()
            print(
                f"  one Job per trial:         {per_trial:6.1f}s  {TRIALS / per_trial:5.2f} "
                "trials/s"
            )
            print(
                f"  pool / pod-per-trial throughput: {per_trial / pool:4.2f}x "
                f"(ideal: {PARALLELISM} trials/s, {TRIALS // PARALLELISM} s)",
                flush=True,
            )
        finally:
            bench.stop()
            bed.stop()


if __name__ == "__main__":
    bench_pool()
