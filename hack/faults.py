"""`make faults`: the fault scenarios of issue 12 on a fresh test bed with the operator running.

For each scenario it prints the time to recover and the trials lost (target 0), and exits 1
when a study did not reach Succeeded, its status counts differ from the database's, or a trial
was lost. The same faults are asserted by tests/integration/test_faults.py and
test_worker_faults.py; this prints the numbers. FAULTS_ONLY=database_down,pod_deleted runs some.

A trial is lost when it was COMPLETE before the fault and is not after it, or when it was
failed by the fault (interrupted, stale heartbeat; not the objective's own error) with its
parameters sampled and no retry of it finished.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from kubernetes import client, config
from optuna.trial import FrozenTrial, TrialState
from tests.integration.studies import (
    DEFAULT_SECRET,
    OPERATOR_NAMESPACE,
    OperatorProcess,
    Studies,
    study_body,
    wait_for,
)

from optuna_operator.contract import ERROR_ATTR, RETRY_OF_ATTR
from testbed import Bed

ROOT = Path(__file__).resolve().parents[1]
SLOW = {"function": "tests.integration.objectives:slow_quadratic"}
OUTAGE_S = 20.0
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Outcome:
    scenario: str
    recovery_s: float
    recovered: str  # what "recovered" means for this scenario
    lost: int
    phase: str
    counts_match: bool

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.phase == "Succeeded" and self.counts_match


class Run:
    """One study in its own namespace, and what the scenario needs to read back."""

    def __init__(self, bed: Bed, api: client.ApiClient, name: str) -> None:
        self.bed = bed
        self.name = name
        namespace = f"faults-{name}"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        self.studies = Studies(api, namespace)

    def create(self, **spec: Any) -> None:
        self.studies.create(study_body(self.name, **spec))
        self.studies.wait_condition(self.name, "StorageReady", "True", timeout=120)

    def trials(self) -> list[FrozenTrial]:
        study_name = f"{self.studies.namespace}.{self.name}"
        # Through the namespace's own credential: its studies live in its schema.
        storage = self.studies.storage_url()
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)

    def finished(self) -> int:
        return sum(t.state in FINISHED for t in self.trials())

    def complete(self) -> set[int]:
        return {t.number for t in self.trials() if t.state == TrialState.COMPLETE}

    def worker_pods(self) -> list[client.V1Pod]:
        pods: list[client.V1Pod] = self.studies.core.list_namespaced_pod(
            self.studies.namespace,
            label_selector=f"app.kubernetes.io/component=worker,"
            f"optuna-operator.io/study={self.name}",
        ).items
        return pods

    def wait_until(self, check: Callable[[], Any], what: str, timeout: float = 300) -> float:
        """Seconds until check() is truthy."""
        started = time.monotonic()
        wait_for(check, timeout, f"{self.name}: {what}", interval=0.2)
        return time.monotonic() - started

    def outcome(
        self, scenario: str, recovery_s: float, recovered: str, complete_before: set[int]
    ) -> Outcome:
        status = self.studies.wait_phase(self.name, "Succeeded", timeout=300)
        trials = self.trials()
        counts = Counter(t.state for t in trials)
        shown = status.get("trials") or {}
        counts_match = (shown.get("complete"), shown.get("pruned"), shown.get("failed")) == (
            counts[TrialState.COMPLETE],
            counts[TrialState.PRUNED],
            counts[TrialState.FAIL],
        )
        return Outcome(
            scenario,
            recovery_s,
            recovered,
            lost(trials, complete_before),
            str(status.get("phase")),
            counts_match,
        )


def lost(trials: list[FrozenTrial], complete_before: set[int]) -> int:
    by_number = {t.number: t for t in trials}
    gone = sum(1 for n in complete_before if by_number[n].state != TrialState.COMPLETE)
    retried = {
        int(t.user_attrs.get(RETRY_OF_ATTR, t.system_attrs.get("failed_trial", -1)))
        for t in trials
        if t.state in FINISHED
    }
    dropped = sum(
        1
        for t in trials
        if t.state == TrialState.FAIL
        and ERROR_ATTR not in t.user_attrs
        and t.params
        and t.number not in retried
    )
    return gone + dropped


def infinite_value(bed: Bed, api: client.ApiClient) -> Outcome:
    run = Run(bed, api, "inf")
    command = [
        "bash",
        "-c",
        'if [ "$OPTUNA_TRIAL_NUMBER" = 1 ]; then echo "optuna:result inf"; '
        'else echo "optuna:result $1"; fi',
        "objective",
        "{x}",
    ]
    space = [{"name": "x", "float": {"low": 0, "high": 1}}]
    started = time.monotonic()
    run.create(objective={"command": command, "searchSpace": space}, budget={"trials": 6})
    run.wait_until(lambda: run.studies.status("inf").get("phase") == "Succeeded", "Succeeded")
    took = time.monotonic() - started
    best = run.studies.status("inf").get("bestValue")
    return run.outcome("objective returns inf", took, f"apply -> Succeeded, Best {best}", set())


def pod_deleted(bed: Bed, api: client.ApiClient) -> Outcome:
    run = Run(bed, api, "preempt")
    run.create(objective=SLOW, budget={"trials": 30}, workers={"parallelism": 2})
    run.wait_until(
        lambda: (
            len([p for p in run.worker_pods() if p.status.phase == "Running"]) == 2
            and run.finished() >= 4
        ),
        "two running workers",
    )
    originals = {p.metadata.name for p in run.worker_pods()}
    before = run.complete()
    run.studies.core.delete_namespaced_pod(sorted(originals)[0], run.studies.namespace)
    took = run.wait_until(
        lambda: [
            p
            for p in run.worker_pods()
            if p.metadata.name not in originals and p.status.phase == "Running"
        ],
        "a replacement pod running",
    )
    return run.outcome("worker pod deleted", took, "delete -> replacement Running", before)


def database_down(bed: Bed, api: client.ApiClient) -> Outcome:
    run = Run(bed, api, "dbdown")
    run.create(objective=SLOW, budget={"trials": 40}, workers={"parallelism": 2})
    run.wait_until(lambda: run.finished() >= 6, "6 finished trials")
    pods = {p.metadata.name for p in run.worker_pods()}
    before = run.complete()
    bed.stop_component("postgres")
    time.sleep(OUTAGE_S)  # the outage itself
    bed.start_component("postgres")
    count = run.finished()
    took = run.wait_until(lambda: run.finished() > count, "a trial finished after the outage")
    outcome = run.outcome(
        f"PostgreSQL down {OUTAGE_S:.0f} s", took, "db back -> next trial finished", before
    )
    ended = [
        f"{p.metadata.name} exit {p.status.container_statuses[0].state.terminated.exit_code}: "
        + (bed.pod_log(run.studies.namespace, p.metadata.name).splitlines() or [""])[-1][:200]
        for p in run.worker_pods()
        if p.metadata.name in pods and p.status.phase == "Failed"
    ]
    outcome.recovered += f", worker pods that failed: {len(ended)}"
    for line in ended:
        print(f"    {line}", flush=True)
    return outcome


def apiserver_down(bed: Bed, api: client.ApiClient) -> Outcome:
    run = Run(bed, api, "apidown")
    run.create(objective=SLOW, budget={"trials": 40}, workers={"parallelism": 2})
    run.wait_until(lambda: run.finished() >= 4, "4 finished trials")
    before = run.complete()
    bed.stop_component("kube-apiserver")
    time.sleep(OUTAGE_S)
    bed.start_component("kube-apiserver")
    took = run.wait_until(
        lambda: (
            run.studies.status("apidown").get("phase") == "Succeeded"
            and all(p.status.phase in ("Succeeded", "Failed") for p in run.worker_pods())
        ),
        "Succeeded, every worker pod terminal in the API",
    )
    return run.outcome(
        f"kube-apiserver down {OUTAGE_S:.0f} s",
        took,
        "API back -> study Succeeded, pods terminal",
        before,
    )


def trial_hangs(bed: Bed, api: client.ApiClient) -> Outcome:
    run = Run(bed, api, "hang")
    timeout = 5
    run.create(
        objective={
            "function": "tests.integration.objectives:first_trial_hangs",
            "trialTimeoutSeconds": timeout,
        },
        budget={"trials": 8},
    )
    run.wait_until(
        lambda: any(t.number == 0 and t.state == TrialState.FAIL for t in run.trials()),
        "trial 0 failed by its timeout",
    )
    took = run.wait_until(lambda: run.finished() >= 1, "a trial finished on a fresh worker")
    return run.outcome(
        f"function hangs (trialTimeoutSeconds {timeout})",
        took,
        "trial failed -> next trial finished",
        set(),
    )


SCENARIOS = (infinite_value, pod_deleted, database_down, apiserver_down, trial_hangs)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="optuna-faults-") as tmp:
        print("Starting a test bed ...", flush=True)
        bed = Bed(Path(tmp) / "bed").start()
        operator: OperatorProcess | None = None
        outcomes: list[Outcome] = []
        try:
            print(f"Test bed up in {bed.startup_s:.0f} s", flush=True)
            subprocess.run(
                [str(bed.bin_dir / "kubectl"), "apply", "-f", str(ROOT / "crds")],
                env={**os.environ, **bed.env()},
                check=True,
                capture_output=True,
            )
            api = config.new_client_from_config(config_file=str(bed.kubeconfig))
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
            core.create_namespaced_secret(
                OPERATOR_NAMESPACE,
                {"metadata": {"name": DEFAULT_SECRET}, "stringData": {"url": bed.storage_url}},
            )
            operator = OperatorProcess(bed.kubeconfig, Path(tmp) / "operator.log")
            operator.start()
            only = os.environ.get("FAULTS_ONLY", "")
            for scenario in (s for s in SCENARIOS if not only or s.__name__ in only.split(",")):
                try:
                    outcome = scenario(bed, api)
                except AssertionError as err:
                    print(f"{scenario.__name__}: did not recover: {err}", flush=True)
                    outcome = Outcome(
                        scenario.__name__, float("nan"), str(err)[:80], -1, "?", False
                    )
                outcomes.append(outcome)
                print(
                    f"{outcome.scenario:<38} recovered in {outcome.recovery_s:6.1f} s "
                    f"({outcome.recovered}); trials lost {outcome.lost}; {outcome.phase}; "
                    f"status counts {'match' if outcome.counts_match else 'DIFFER'}",
                    flush=True,
                )
        finally:
            if operator is not None:
                operator.stop()
            bed.stop()
    failed = [o.scenario for o in outcomes if not o.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("All scenarios recovered with no trial lost.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
