"""Worker Jobs admitted by a real Kueue on the bed (the `kueue` fixture): quota, admission
status, preemption and spec.suspend. Each test makes its own ClusterQueue (quota: one CPU,
what one worker pod requests) and a LocalQueue `q` in its namespace."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from kubernetes import client
from tests.integration.studies import Studies, study_body, wait_for

from testbed import Bed
from testbed.kueue import Kueue

KUEUE = ("kueue.x-k8s.io", "v1beta2")
QUEUE = "q"
FLAVOR = "testbed-default"
ONE_CPU = {"requests": {"cpu": "1"}}
OPERATOR_MANAGER = "optuna-operator"


class Queues:
    """A ClusterQueue with one CPU of quota and LocalQueue `q` in the test's namespace;
    PriorityClasses for preemption. Cluster-scoped objects are deleted after the test."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.scheduling = client.SchedulingV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace
        self.suffix = uuid.uuid4().hex[:6]
        self.cluster_queue = f"cq-{self.suffix}"
        self._priority_classes: list[str] = []

    def create(self) -> None:
        group, version = KUEUE
        try:
            self.custom.create_cluster_custom_object(
                group,
                version,
                "resourceflavors",
                {
                    "apiVersion": f"{group}/{version}",
                    "kind": "ResourceFlavor",
                    "metadata": {"name": FLAVOR},
                },
            )
        except client.ApiException as err:
            if err.status != 409:
                raise
        self.custom.create_cluster_custom_object(
            group,
            version,
            "clusterqueues",
            {
                "apiVersion": f"{group}/{version}",
                "kind": "ClusterQueue",
                "metadata": {"name": self.cluster_queue},
                "spec": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": self.namespace}
                    },
                    "resourceGroups": [
                        {
                            "coveredResources": ["cpu"],
                            "flavors": [
                                {
                                    "name": FLAVOR,
                                    "resources": [{"name": "cpu", "nominalQuota": "1"}],
                                }
                            ],
                        }
                    ],
                    "preemption": {"withinClusterQueue": "LowerPriority"},
                },
            },
        )
        self.custom.create_namespaced_custom_object(
            group,
            version,
            self.namespace,
            "localqueues",
            {
                "apiVersion": f"{group}/{version}",
                "kind": "LocalQueue",
                "metadata": {"name": QUEUE},
                "spec": {"clusterQueue": self.cluster_queue},
            },
        )

        def active() -> bool:
            cq = self.custom.get_cluster_custom_object(
                group, version, "clusterqueues", self.cluster_queue
            )
            return any(
                c["type"] == "Active" and c["status"] == "True"
                for c in (cq.get("status") or {}).get("conditions", [])
            )

        wait_for(active, 60, f"ClusterQueue {self.cluster_queue} to be Active")

    def priority_class(self, stem: str, value: int) -> str:
        name = f"{stem}-{self.suffix}"
        self.scheduling.create_priority_class({"metadata": {"name": name}, "value": value})
        self._priority_classes.append(name)
        return name

    def plain_job(self, name: str, seconds: int, priority_class: str | None = None) -> None:
        """A Job that is not a study's: one pod that sleeps, in queue `q`."""
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "sleep",
                    "image": "busybox",
                    "command": ["sleep", str(seconds)],
                    "resources": ONE_CPU,
                }
            ],
        }
        if priority_class:
            pod["priorityClassName"] = priority_class
        self.batch.create_namespaced_job(
            self.namespace,
            {
                "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": QUEUE}},
                "spec": {"template": {"spec": pod}},
            },
        )

    def job_complete(self, name: str) -> bool:
        job = self.batch.read_namespaced_job(name, self.namespace)
        return any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or [])

    def cleanup(self) -> None:
        group, version = KUEUE
        for name in self._priority_classes:
            self.scheduling.delete_priority_class(name)
        try:
            self.custom.delete_cluster_custom_object(
                group, version, "clusterqueues", self.cluster_queue
            )
        except client.ApiException as err:
            if err.status != 404:
                raise


@pytest.fixture
def queues(kueue: Kueue, kube_api: client.ApiClient, namespace: str) -> Iterator[Queues]:
    made = Queues(kube_api, namespace)
    made.create()
    try:
        yield made
    finally:
        made.cleanup()


def queued_study(
    name: str, trials: int, objective: str = "quadratic", **workers: Any
) -> dict[str, Any]:
    return study_body(
        name,
        budget={"trials": trials},
        objective={"function": f"tests.integration.objectives:{objective}"},
        workers={"parallelism": 1, "queueName": QUEUE, "resources": ONE_CPU, **workers},
    )


def operator_owns_suspend(job: client.V1Job) -> bool:
    """Whether the operator's field manager owns spec.suspend (it must not after Kueue
    admitted the Job: Kueue's update took it over, and the operator never sends it again)."""
    for entry in job.metadata.managed_fields or []:
        spec = (entry.fields_v1 or {}).get("f:spec") or {}
        if entry.manager == OPERATOR_MANAGER and "f:suspend" in spec:
            return True
    return False


def test_kueue_admits_a_plain_job(queues: Queues) -> None:
    """The bed's Kueue end to end: the webhook suspends a queued Job, Kueue admits it within
    the ClusterQueue's quota and unsuspends it, and the executor runs its pod to completion."""
    queues.plain_job("smoke", 1)
    job = queues.batch.read_namespaced_job("smoke", queues.namespace)
    assert job.spec.suspend is True, "Kueue's mutating webhook did not suspend the Job"
    wait_for(lambda: queues.job_complete("smoke"), 120, "the queued plain Job to complete")


def test_a_study_waits_for_quota_held_by_another_study_then_succeeds(
    studies: Studies, queues: Queues, bed: Bed
) -> None:
    studies.create(queued_study("holder", 30, objective="slow_quadratic"))
    studies.wait_phase("holder", "Running", timeout=180)
    studies.create(queued_study("waiter", 6))

    def waiting_for_quota() -> dict[str, Any] | None:
        # Kueue's reason arrives once it has made the Workload and tried to admit it.
        c = studies.condition("waiter", "WorkersAdmitted")
        return c if c and "insufficient unused quota" in c["message"] else None

    waiting = wait_for(waiting_for_quota, 120, "waiter's condition to give Kueue's reason")
    assert (waiting["status"], waiting["reason"]) == ("False", "WaitingForAdmission")
    assert studies.status("waiter")["phase"] == "Queued"
    # The queue, the ClusterQueue and Kueue's own reason, in one sentence.
    message = waiting["message"]
    assert f"LocalQueue {QUEUE} (ClusterQueue {queues.cluster_queue})" in message, message
    assert "insufficient unused quota for cpu" in message, message
    listed = subprocess.run(
        [str(bed.bin_dir / "kubectl"), "get", "ts", "-n", studies.namespace],
        env={**os.environ, **bed.env()},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(line.split()[:2] == ["waiter", "Queued"] for line in listed.splitlines()), listed
    [job] = studies.jobs("waiter")
    assert job.spec.suspend is True
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == QUEUE

    holder = studies.wait_phase("holder", "Succeeded", timeout=300)
    assert holder["trials"]["complete"] >= 30
    studies.wait_phase("waiter", "Succeeded", timeout=240)
    admitted = studies.condition("waiter", "WorkersAdmitted")
    assert admitted is not None
    assert (admitted["status"], admitted["reason"]) == ("True", "Admitted"), admitted
    [job] = studies.jobs("waiter")
    assert not operator_owns_suspend(job), job.metadata.managed_fields


def test_a_preempted_study_loses_no_completed_trial_and_finishes_after_readmission(
    studies: Studies, queues: Queues
) -> None:
    low = queues.priority_class("low", 100)
    high = queues.priority_class("high", 1000)
    studies.create(
        queued_study(
            "victim",
            40,
            objective="slow_quadratic",
            priorityClassName=low,
            heartbeatIntervalSeconds=5,
        )
    )

    def completed() -> dict[int, float]:
        trials = studies.optuna_study("victim").get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        )
        return {t.number: float(t.value or 0.0) for t in trials}

    wait_for(lambda: len(completed()) >= 5, 240, "5 completed trials before preemption")
    queues.plain_job("preemptor", 15, priority_class=high)

    evicted = studies.wait_condition(
        "victim", "WorkersAdmitted", "False", "WaitingForAdmission", timeout=120
    )
    before = completed()
    assert studies.status("victim")["phase"] == "Queued", evicted
    wait_for(lambda: queues.job_complete("preemptor"), 120, "the high-priority Job to finish")

    status = studies.wait_phase("victim", "Succeeded", timeout=300)
    after = completed()
    lost = {n: v for n, v in before.items() if after.get(n) != v}
    assert not lost, f"completed trials changed or vanished after preemption: {lost}"
    assert len(after) >= 40 - status["trials"]["pruned"]
    running = studies.optuna_study("victim").get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
    )
    assert not running, [t.number for t in running]
    # Kueue's own words for the eviction reached the status.
    assert "reempted" in evicted["message"], evicted


def test_spec_suspend_deletes_the_queued_job_and_resume_requeues_it(
    studies: Studies, queues: Queues
) -> None:
    studies.create(queued_study("pause", 25, objective="slow_quadratic"))
    studies.wait_phase("pause", "Running", timeout=180)

    studies.patch_spec("pause", {"suspend": True})
    studies.wait_phase("pause", "Suspended", timeout=120)
    wait_for(lambda: not studies.jobs("pause"), 60, "the queued Job to be deleted")
    stopped = studies.wait_condition("pause", "WorkersAdmitted", "False", "NoWorkerJob")
    assert "spec.suspend is true" in stopped["message"]
    # The quota is free again: another Job is admitted while the study is suspended.
    queues.plain_job("meanwhile", 1)
    wait_for(lambda: queues.job_complete("meanwhile"), 120, "a Job to use the released quota")

    name = f"{studies.namespace}.pause"
    done_while_suspended = len(
        optuna.load_study(study_name=name, storage=studies.storage_url()).trials
    )
    studies.patch_spec("pause", {"suspend": False})
    studies.wait_phase("pause", "Succeeded", timeout=240)
    assert (
        len(optuna.load_study(study_name=name, storage=studies.storage_url()).trials)
        > done_while_suspended
    )
    [job] = studies.jobs("pause")
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == QUEUE
    assert not operator_owns_suspend(job), job.metadata.managed_fields


def test_a_parallelism_change_requeues_the_job_with_the_new_size(
    studies: Studies, queues: Queues
) -> None:
    half_cpu = {"requests": {"cpu": "500m"}}
    studies.create(queued_study("scale", 60, objective="slow_quadratic", resources=half_cpu))
    studies.wait_phase("scale", "Running", timeout=180)
    [before] = studies.jobs("scale")
    assert before.spec.parallelism == 1

    # Two half-CPU workers fit the one-CPU quota only as a new Workload of the new size.
    studies.patch_spec("scale", {"workers": {"parallelism": 2}})

    def two_running() -> client.V1Job | None:
        jobs = studies.jobs("scale")
        job = jobs[0] if len(jobs) == 1 else None
        if job is None or job.metadata.uid == before.metadata.uid:
            return None
        return job if job.spec.parallelism == 2 and (job.status.ready or 0) == 2 else None

    after = wait_for(two_running, 180, "the requeued Job to run two workers")
    assert not operator_owns_suspend(after), after.metadata.managed_fields
    assert any("DeletedQueuedJob" in e for e in studies.events("scale")), studies.events("scale")
    studies.wait_phase("scale", "Succeeded", timeout=240)


def test_partial_admission_starts_fewer_workers_within_the_quota(
    studies: Studies, queues: Queues
) -> None:
    # Three one-CPU workers do not fit the one-CPU quota; minParallelism lets Kueue start one.
    studies.create(queued_study("partial", 12, parallelism=3, minParallelism=1))
    status = studies.wait_phase("partial", "Succeeded", timeout=240)
    assert status["trials"]["complete"] >= 12
    [job] = studies.jobs("partial")
    assert job.metadata.annotations["kueue.x-k8s.io/job-min-parallelism"] == "1"
    # Kueue admitted one pod's worth and set parallelism to it; the operator left it so.
    assert job.spec.parallelism == 1
    assert not operator_owns_suspend(job), job.metadata.managed_fields


def test_a_queued_study_does_not_spend_its_time_budget_in_the_queue(
    studies: Studies, queues: Queues
) -> None:
    holder = queued_study("hold", 100000, objective="slow_quadratic")
    holder["spec"]["budget"]["timeoutSeconds"] = 40  # holds the quota for 40 s of running
    studies.create(holder)
    studies.wait_phase("hold", "Running", timeout=180)
    waiter = queued_study("patient", 100000)
    waiter["spec"]["budget"]["timeoutSeconds"] = 5
    created = time.monotonic()
    studies.create(waiter)
    studies.wait_phase("patient", "Queued", timeout=120)
    # Longer in the queue than its whole budget, while the holder still holds the quota.
    time.sleep(max(0.0, 8 - (time.monotonic() - created)))
    status = studies.status("patient")
    assert status["phase"] == "Queued" and not status.get("activeSeconds"), status
    assert studies.status("hold")["phase"] == "Running"

    assert studies.wait_phase("hold", "Succeeded", timeout=300)["reason"] == "TimeBudget"
    status = studies.wait_phase("patient", "Succeeded", timeout=240)
    assert status["reason"] == "TimeBudget" and status["activeSeconds"] >= 5, status
    admitted = studies.condition("patient", "WorkersAdmitted")
    assert admitted is not None and admitted["status"] == "True", admitted
