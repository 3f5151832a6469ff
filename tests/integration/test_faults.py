"""Faults on the whole test bed with the operator running (issue 12, items 3, 4, 8): an
infinite objective value, a worker pod deleted mid-study, the kube-apiserver restarted
mid-study. Each study must still reach Succeeded with counts equal to the database's."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from typing import Any

import optuna
from kubernetes import client
from optuna.trial import FrozenTrial, TrialState
from tests.integration.studies import Studies, study_body, wait_for

from optuna_operator.contract import ExitCode
from testbed import Bed

SLOW = {"function": "tests.integration.objectives:slow_quadratic"}
WORKER_SELECTOR = "app.kubernetes.io/component=worker"


def _trials(studies: Studies, name: str) -> list[FrozenTrial]:
    # Through the namespace's own credential: its studies live in its schema.
    study = optuna.load_study(
        study_name=f"{studies.namespace}.{name}", storage=studies.storage_url()
    )
    return study.get_trials(deepcopy=False)


def _create(studies: Studies, name: str, **spec: Any) -> None:
    """Apply the study and wait until the operator created it in the database (its schema,
    on a fresh database), which the tests then read."""
    studies.create(study_body(name, **spec))
    studies.wait_condition(name, "StorageReady", "True")


def _finished(trials: list[FrozenTrial]) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _assert_counts_match(status: dict[str, Any], trials: list[FrozenTrial]) -> None:
    counts = Counter(t.state for t in trials)
    assert status["trials"]["complete"] == counts[TrialState.COMPLETE]
    assert status["trials"]["pruned"] == counts[TrialState.PRUNED]
    assert status["trials"]["failed"] == counts[TrialState.FAIL]
    assert status["trials"]["running"] == counts[TrialState.RUNNING] == 0


def _worker_pods(studies: Studies, name: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = studies.core.list_namespaced_pod(
        studies.namespace, label_selector=f"{WORKER_SELECTOR},optuna-operator.io/study={name}"
    ).items
    return pods


def test_an_infinite_objective_value_is_shown_and_the_study_finishes(
    studies: Studies, bed: Bed
) -> None:
    command = [
        "bash",
        "-c",
        'if [ "$OPTUNA_TRIAL_NUMBER" = 1 ]; then echo "optuna:result inf"; '
        'else echo "optuna:result $1"; fi',
        "objective",
        "{x}",
    ]
    objective = {"command": command, "searchSpace": [{"name": "x", "float": {"low": 0, "high": 1}}]}
    studies.create(study_body("inf", objective=objective, budget={"trials": 4}))
    status = studies.wait_phase("inf", "Succeeded")

    assert status["bestTrial"]["number"] == 1
    assert status["bestTrial"]["values"] == ["Infinity"]
    assert status["bestValue"] == "Infinity"
    assert status["progress"] == "4/4"
    _assert_counts_match(status, _trials(studies, "inf"))
    shown = subprocess.run(
        [str(bed.bin_dir / "kubectl"), "get", "ts", "inf", "-n", studies.namespace],
        env={**os.environ, **bed.env()},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shown[-4:-1] == ["Succeeded", "4/4", "Infinity"], shown


def test_a_deleted_worker_pod_is_replaced_without_counting_as_a_failure(
    studies: Studies, bed: Bed
) -> None:
    budget = 30
    _create(
        studies, "preempt", objective=SLOW, budget={"trials": budget}, workers={"parallelism": 2}
    )

    def busy_pods() -> list[str]:
        running = {p.metadata.name for p in _worker_pods(studies, "preempt")}
        on = {
            str(t.user_attrs.get("worker", "")).split("/")[0] for t in _trials(studies, "preempt")
        }
        return sorted(running & on) if len(running & on) == 2 else []

    originals = wait_for(busy_pods, 120, "both worker pods running trials")
    victim = originals[0]
    studies.core.delete_namespaced_pod(victim, studies.namespace)

    def replacement() -> list[str]:
        return [
            p.metadata.name
            for p in _worker_pods(studies, "preempt")
            if p.metadata.name not in originals
        ]

    wait_for(replacement, 120, "a replacement worker pod")
    status = studies.wait_phase("preempt", "Succeeded")

    log = bed.pod_log(studies.namespace, victim).splitlines()
    assert log[-1] == "stopped by a signal before the study was done; the Job starts a replacement"
    trials = _trials(studies, "preempt")
    # The trial it was running (none if the signal fell between two trials) ran again, if it
    # had sampled its parameters (slow_quadratic sleeps first).
    interrupted = [
        t
        for t in trials
        if "interrupted" in t.user_attrs and t.user_attrs["worker"] == f"{victim}/0"
    ]
    assert len(interrupted) <= 1
    for trial in interrupted:
        assert trial.state == TrialState.FAIL
        retries = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
        assert [r.state for r in retries] == ([TrialState.COMPLETE] if trial.params else [])
    assert _finished(trials) == budget
    _assert_counts_match(status, trials)
    (job,) = studies.jobs("preempt")
    # Ignored by the podFailurePolicy: the Job's failure budget is untouched.
    assert not job.status.failed, job.status
    assert status["workers"]["failed"] == 0


def test_an_api_server_restart_mid_study_leaves_nothing_running(studies: Studies, bed: Bed) -> None:
    budget = 40
    _create(
        studies, "apirestart", objective=SLOW, budget={"trials": budget}, workers={"parallelism": 2}
    )
    wait_for(lambda: _finished(_trials(studies, "apirestart")) >= 4, 120, "4 trials")
    pods = [p.metadata.name for p in _worker_pods(studies, "apirestart")]
    assert len(pods) == 2
    executor_log = bed.logs_dir / "executor.log"

    bed.stop_component("kube-apiserver")
    try:
        # The workers need only the database: they finish the study, and the executor sees
        # both pods succeed, while no status write can reach the API.
        def both_exited() -> bool:
            text = executor_log.read_text()
            return all(f"pod {studies.namespace}/{pod}: Succeeded" in text for pod in pods)

        wait_for(both_exited, 180, "both worker pods to exit while the API server is down")
    finally:
        bed.start_component("kube-apiserver")

    status = studies.wait_phase("apirestart", "Succeeded")
    for pod in _worker_pods(studies, "apirestart"):
        assert pod.status.phase == "Succeeded", (pod.metadata.name, pod.status.phase)
        (container,) = pod.status.container_statuses
        assert container.state.terminated.exit_code == ExitCode.DONE
    trials = _trials(studies, "apirestart")
    assert _finished(trials) == budget
    _assert_counts_match(status, trials)
