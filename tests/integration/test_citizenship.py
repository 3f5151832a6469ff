"""A good cluster citizen: a finalizer only where it protects the Optuna study, no writes for
idle studies, and studies that delete with no operator running."""

from __future__ import annotations

import time

from kubernetes import client
from tests.integration.studies import OperatorProcess, Studies, study_body, wait_for

FINALIZER = "optuna-operator.io/delete-study"
INTERVAL = 2  # the session operator's --status-interval


def _gone(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except client.ApiException as exc:
        return exc.status == 404
    return False


def test_finalizer_follows_the_deletion_policy(studies: Studies) -> None:
    studies.create(study_body("keep", budget={"trials": 2}))
    studies.create(study_body("drop", budget={"trials": 2}, deletionPolicy="Delete"))
    studies.wait_phase("keep", "Succeeded")
    wait_for(
        lambda: FINALIZER in (studies.get("drop")["metadata"].get("finalizers") or []),
        30,
        "the Delete study to get the finalizer",
    )
    assert not studies.get("keep")["metadata"].get("finalizers")
    studies.patch_spec("drop", {"deletionPolicy": "Retain"})
    wait_for(
        lambda: not studies.get("drop")["metadata"].get("finalizers"),
        30,
        "the finalizer to go with deletionPolicy Retain",
    )


def test_idle_studies_are_not_written_to(studies: Studies) -> None:
    studies.create(study_body("done", budget={"trials": 2}))
    studies.create(study_body("paused", budget={"trials": 2}, suspend=True))
    studies.wait_phase("done", "Succeeded")
    studies.wait_phase("paused", "Suspended")
    # Let the last status write of each land, then nothing may change for 4 intervals.
    time.sleep(INTERVAL)
    before = {n: studies.get(n)["metadata"]["resourceVersion"] for n in ("done", "paused")}
    jobs_before = {j.metadata.name: j.metadata.resource_version for j in studies.jobs("paused")}
    time.sleep(4 * INTERVAL)
    after = {n: studies.get(n)["metadata"]["resourceVersion"] for n in ("done", "paused")}
    jobs_after = {j.metadata.name: j.metadata.resource_version for j in studies.jobs("paused")}
    assert after == before
    assert jobs_after == jobs_before


def test_retain_study_and_its_namespace_delete_with_no_operator(
    studies: Studies,
    operator: OperatorProcess,
    kube_api: client.ApiClient,
    namespace_factory: object,
) -> None:
    studies.create(study_body("orphan", budget={"trials": 2}))
    other = Studies(kube_api, namespace_factory())  # type: ignore[operator]
    other.create(study_body("in-namespace", budget={"trials": 2}))
    studies.wait_phase("orphan", "Succeeded")
    other.wait_phase("in-namespace", "Succeeded")
    operator.stop()
    try:
        studies.delete("orphan")
        wait_for(lambda: _gone(lambda: studies.get("orphan")), 30, "the study to be deleted")
        core = client.CoreV1Api(kube_api)
        core.delete_namespace(other.namespace)
        wait_for(
            lambda: _gone(lambda: core.read_namespace(other.namespace)),
            120,
            "the namespace with a study to be deleted",
        )
    finally:
        operator.start()
