"""What the API server or the Job controller refuses is named in the status at once."""

from __future__ import annotations

from kubernetes import client
from tests.integration.studies import Studies, study_body, wait_for


def _quota(api: client.ApiClient, namespace: str, hard: dict[str, str]) -> None:
    client.CoreV1Api(api).create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-room"}, "spec": {"hard": hard}}
    )


def test_a_refused_worker_job_fails_the_study_with_the_reason(
    studies: Studies, kube_api: client.ApiClient
) -> None:
    _quota(kube_api, studies.namespace, {"count/jobs.batch": "0"})
    studies.create(study_body("nojob"))
    status = studies.wait_phase("nojob", "Failed", timeout=60)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ChildRejected"
    assert "exceeded quota" in failed["message"] and "nojob-workers" in failed["message"]
    workers = next(c for c in status["conditions"] if c["type"] == "WorkersReady")
    assert (workers["status"], workers["reason"]) == ("False", "ChildRejected")
    assert any(e.startswith("Failed: The API server refused Job") for e in studies.events("nojob"))

    # Room again: the next retry (backed off, at most a minute) creates the Job.
    client.CoreV1Api(kube_api).delete_namespaced_resource_quota("no-room", studies.namespace)
    studies.wait_phase("nojob", "Succeeded", timeout=180)


def test_worker_pods_the_job_cannot_create_are_named(
    studies: Studies, kube_api: client.ApiClient
) -> None:
    _quota(kube_api, studies.namespace, {"pods": "0"})
    studies.create(study_body("nopods"))
    cond = studies.wait_condition("nopods", "WorkersReady", "False", "WorkerPodsRefused", 90)
    assert "exceeded quota" in cond["message"], cond["message"]
    assert studies.status("nopods")["phase"] == "Pending"
    wait_for(
        lambda: any(e.startswith("WorkerPodsRefused") for e in studies.events("nopods")),
        30,
        "a WorkerPodsRefused event",
    )


def test_crash_looping_workers_are_named_with_their_exit_code(studies: Studies) -> None:
    studies.create(
        study_body("crashy", objective={"function": "tests.integration.objectives:crash"})
    )
    cond = studies.wait_condition("crashy", "WorkersReady", "False", "WorkersCrashing", 120)
    assert "exit code 17" in cond["message"], cond["message"]
    # The Job restarts the pods: not Failed (a restarted pod may be up for a moment).
    status = studies.status("crashy")
    assert status["phase"] in ("Pending", "Running")
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["status"] == "False"
