"""The operator, run as in production, against the real API server, Job controller and
PostgreSQL of the test bed: from a TuningStudy to a finished Optuna study with results."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from kubernetes import client
from tests.integration.studies import OperatorProcess, Studies, study_body, wait_for

from optuna_operator.handlers import CHILD_SELECTOR
from testbed import Bed
from testbed.audit import AuditedRequest, audited_requests

SLOW = {"function": "tests.integration.objectives:slow_quadratic"}


def _load(studies: Studies, name: str) -> optuna.Study:
    """The study as its namespace's own role sees it (its schema, not the admin's)."""
    return optuna.load_study(study_name=name, storage=studies.storage_url())


def test_apply_runs_the_study_to_success_with_results_in_status(studies: Studies) -> None:
    studies.create(study_body("quad", budget={"trials": 12}))
    status = studies.wait_phase("quad", "Succeeded")

    trials = status["trials"]
    assert trials["complete"] + trials["pruned"] == 12
    study = _load(studies, f"{studies.namespace}.quad")
    assert status["bestTrial"]["number"] == study.best_trial.number
    assert status["bestTrial"]["values"] == [pytest.approx(study.best_value)]
    assert status["bestTrial"]["params"] == study.best_trial.params
    assert status["progress"] == "12/12"
    assert status["optunaVersion"] == optuna.__version__
    assert status["completionTime"] and status["startTime"]
    assert set(status["paramImportances"]) >= {"x"}
    assert studies.condition("quad", "Succeeded")["reason"] == "TrialBudgetReached"
    # deletionPolicy Retain: nothing to protect, so no finalizer and no bookkeeping.
    metadata = studies.get("quad")["metadata"]
    assert not metadata.get("finalizers") and not metadata.get("annotations"), metadata
    events = studies.events("quad")
    assert len([e for e in events if e.startswith("CreatedJob")]) == 1, events
    assert len([e for e in events if e.startswith("Succeeded")]) == 1, events


def test_parallelism_change_is_reflected_in_the_job(studies: Studies) -> None:
    studies.create(study_body("scale", objective=SLOW, budget={"trials": 200}))
    job = wait_for(lambda: studies.jobs("scale"), 60, "the worker Job")[0]
    assert job.spec.parallelism == 1
    studies.patch_spec("scale", {"workers": {"parallelism": 3}})
    wait_for(
        lambda: [j for j in studies.jobs("scale") if j.spec.parallelism == 3], 60, "parallelism 3"
    )
    assert [j.metadata.name for j in studies.jobs("scale")] == [job.metadata.name]
    wait_for(
        lambda: (studies.status("scale").get("workers") or {}).get("active") == 3,
        30,
        "three active workers",
    )


def test_suspend_stops_workers_and_resume_continues_the_study(studies: Studies) -> None:
    studies.create(study_body("pause", objective=SLOW, budget={"trials": 30}))
    wait_for(
        lambda: (studies.status("pause").get("trials") or {}).get("complete", 0) >= 3,
        60,
        "a few trials",
    )
    studies.patch_spec("pause", {"suspend": True})
    studies.wait_phase("pause", "Suspended", timeout=120)
    studies.wait_condition("pause", "Suspended", "True")
    wait_for(lambda: studies.jobs("pause")[0].status.active in (None, 0), 60, "workers to stop")
    done_while_suspended = len(_load(studies, f"{studies.namespace}.pause").trials)

    studies.patch_spec("pause", {"suspend": False})
    status = studies.wait_phase("pause", "Succeeded", timeout=240)
    # Exact, though trials interrupted by the suspension were enqueued again.
    assert status["trials"]["complete"] + status["trials"]["pruned"] == 30
    assert len(_load(studies, f"{studies.namespace}.pause").trials) > done_while_suspended
    assert len(studies.jobs("pause")) == 1


def test_operator_restart_mid_study_duplicates_nothing(
    studies: Studies, operator: OperatorProcess
) -> None:
    studies.create(study_body("restart", objective=SLOW, budget={"trials": 25}))
    wait_for(
        lambda: (studies.status("restart").get("trials") or {}).get("complete", 0) >= 2,
        60,
        "trials before the restart",
    )
    operator.stop(kill=True)
    operator.start()
    status = studies.wait_phase("restart", "Succeeded", timeout=240)
    assert len(studies.jobs("restart")) == 1
    names = [s.study_name for s in optuna.get_all_study_summaries(studies.storage_url())]
    assert names.count(f"{studies.namespace}.restart") == 1
    assert status["trials"]["complete"] == len(
        [
            t
            for t in _load(studies, f"{studies.namespace}.restart").trials
            if t.state == optuna.trial.TrialState.COMPLETE
        ]
    )
    assert [e for e in studies.events("restart") if e.startswith("StudyCreated")] != []


def test_missing_secret_is_named_in_a_condition_and_recovers(
    studies: Studies, kube_api: client.ApiClient, storage_url: str
) -> None:
    body = study_body("nosecret", storage={"secretRef": {"name": "my-db", "key": "url"}})
    studies.create(body)
    cond = studies.wait_condition("nosecret", "StorageReady", "False", "SecretNotFound")
    assert "my-db" in cond["message"] and studies.namespace in cond["message"]

    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        studies.namespace, {"metadata": {"name": "my-db"}, "stringData": {"other": "x"}}
    )
    cond = studies.wait_condition("nosecret", "StorageReady", "False", "SecretKeyMissing")
    assert "'url'" in cond["message"]

    core.patch_namespaced_secret("my-db", studies.namespace, {"stringData": {"url": storage_url}})
    studies.wait_condition("nosecret", "StorageReady", "True", timeout=120)
    studies.wait_phase("nosecret", "Succeeded")
    assert storage_url.split("@")[0] not in str(studies.get("nosecret"))


def test_wrong_storage_url_never_leaks_the_password(
    studies: Studies, kube_api: client.ApiClient, storage_url: str
) -> None:
    wrong = storage_url.replace("optuna:", "optuna:wrong-password-", 1)
    client.CoreV1Api(kube_api).create_namespaced_secret(
        studies.namespace, {"metadata": {"name": "bad-db"}, "stringData": {"url": wrong}}
    )
    studies.create(study_body("badurl", storage={"secretRef": {"name": "bad-db"}}))
    cond = studies.wait_condition("badurl", "StorageReady", "False", "StorageUnreachable")
    assert "password" in cond["message"].lower() or "authentication" in cond["message"]
    password = wrong.split("//")[1].split("@")[0].split(":")[1]
    assert password not in str(studies.get("badurl"))
    assert all(password not in e for e in studies.events("badurl"))


def test_objective_that_cannot_be_imported_fails_the_study_with_the_error(
    studies: Studies,
) -> None:
    studies.create(study_body("noimport", objective={"function": "train:objective"}))
    status = studies.wait_phase("noimport", "Failed", timeout=240)
    failed = studies.condition("noimport", "Failed")
    assert failed["reason"] == "JobFailed"
    assert "No module named 'train'" in failed["message"], failed["message"]
    assert status["phase"] == "Failed"


def test_objective_errors_beyond_the_limit_fail_the_study(studies: Studies) -> None:
    body = study_body(
        "raises",
        objective={
            "command": ["python", "-c", "raise SystemExit('bad lr {lr}')"],
            "searchSpace": [{"name": "lr", "float": {"low": 0.1, "high": 1.0}}],
        },
        budget={"trials": 20, "maxFailedTrials": 2},
    )
    studies.create(body)
    studies.wait_phase("raises", "Failed", timeout=240)
    failed = studies.condition("raises", "Failed")
    assert failed["reason"] in ("TooManyFailedTrials", "JobFailed")
    assert "bad lr" in failed["message"]


def test_directions_that_differ_from_the_existing_study_are_refused(studies: Studies) -> None:
    # A study of another TuningStudy is never resumed (test_tenancy.py); one made with
    # Optuna directly may be adopted, and its directions must still match.
    studies.create(study_body("first"))
    studies.wait_phase("first", "Succeeded")
    optuna.create_study(
        study_name=f"{studies.namespace}-shared",
        storage=studies.storage_url(),
        direction="maximize",
    )
    studies.create(
        study_body(
            "second",
            studyName=f"{studies.namespace}-shared",
            directions=["minimize"],
            adoptExistingStudy=True,
        )
    )
    cond = studies.wait_condition("second", "StorageReady", "False", "DirectionsMismatch")
    assert "maximize" in cond["message"] and "minimize" in cond["message"]


def test_deletion_retain_keeps_the_study_and_delete_removes_it(studies: Studies) -> None:
    studies.create(study_body("keep", budget={"trials": 3}))
    studies.create(study_body("drop", budget={"trials": 3}, deletionPolicy="Delete"))
    studies.wait_phase("keep", "Succeeded")
    studies.wait_phase("drop", "Succeeded")
    studies.delete("keep")
    studies.delete("drop")

    def gone(name: str) -> bool:
        try:
            studies.get(name)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(lambda: gone("keep") and gone("drop"), 60, "both TuningStudies to be deleted")
    names = {s.study_name for s in optuna.get_all_study_summaries(studies.storage_url())}
    assert f"{studies.namespace}.keep" in names
    assert f"{studies.namespace}.drop" not in names
    wait_for(lambda: not studies.jobs("keep"), 60, "owned Jobs to be garbage-collected")


def test_multi_objective_study_reports_a_pareto_front(studies: Studies) -> None:
    body = study_body(
        "pareto",
        directions=["maximize", "minimize"],
        objective={"function": "examples.multi_objective:objective"},
        sampler={"type": "NSGAII", "seed": 3, "nsga": {"populationSize": 4}},
        budget={"trials": 10},
    )
    studies.create(body)
    status = studies.wait_phase("pareto", "Succeeded", timeout=240)
    front = status["paretoFront"]
    assert 1 <= len(front) <= 10
    assert all(len(t["values"]) == 2 for t in front)


@pytest.mark.pod_security("restricted")
def test_restricted_namespace_accepts_worker_and_dashboard_pods(studies: Studies) -> None:
    studies.create(study_body("secure", dashboard={"enabled": True}, budget={"trials": 5}))
    studies.wait_phase("secure", "Succeeded")
    pods = studies.core.list_namespaced_pod(studies.namespace).items
    components = {p.metadata.labels.get("app.kubernetes.io/component") for p in pods}
    assert {"worker", "dashboard"} <= components
    replica_sets = (
        client.AppsV1Api(studies.core.api_client)
        .list_namespaced_replica_set(studies.namespace)
        .items
    )
    for rs in replica_sets:
        failures = [c for c in rs.status.conditions or [] if c.type == "ReplicaFailure"]
        assert failures == [], failures


def test_changing_the_objective_replaces_the_workers_and_the_study_continues(
    studies: Studies,
) -> None:
    studies.create(study_body("swap", objective=SLOW, budget={"trials": 30}))
    first = wait_for(lambda: studies.jobs("swap"), 60, "the first worker Job")[0].metadata.name
    wait_for(
        lambda: (studies.status("swap").get("trials") or {}).get("complete", 0) >= 2,
        60,
        "trials from the first workers",
    )
    studies.patch_spec(
        "swap", {"objective": {"function": "tests.integration.objectives:quadratic"}}
    )
    wait_for(
        lambda: [j for j in studies.jobs("swap") if j.metadata.name != first],
        30,
        "a replacement Job",
    )
    status = studies.wait_phase("swap", "Succeeded", timeout=240)
    assert [j.metadata.name for j in studies.jobs("swap")] != [first]
    assert status["trials"]["complete"] >= 30
    names = [s.study_name for s in optuna.get_all_study_summaries(studies.storage_url())]
    assert names.count(f"{studies.namespace}.swap") == 1
    assert any(e.startswith("ReplacingWorkers") for e in studies.events("swap"))


def test_time_budget_ends_the_study(studies: Studies) -> None:
    studies.create(
        study_body("clock", objective=SLOW, budget={"trials": 10000, "timeoutSeconds": 8})
    )
    status = studies.wait_phase("clock", "Succeeded", timeout=240)
    assert studies.condition("clock", "Succeeded")["reason"] == "TimeBudgetReached"
    assert 0 < status["trials"]["complete"] < 10000
    assert status["trials"]["running"] == 0


def test_child_watches_ask_the_api_server_for_labelled_children_only(
    studies: Studies, bed: Bed
) -> None:
    """kopf's `labels=` filter alone is applied after the API server has sent every Job and
    Deployment of the cluster; the API server's audit log shows the selector in the
    operator's list and watch requests themselves."""

    def kopf_requests(resource: str) -> list[AuditedRequest]:
        return [
            r
            for r in audited_requests(bed.audit_log)
            if r.user_agent.startswith("kopf/") and r.resource == resource
        ]

    def watching() -> bool:
        return all(
            any(r.verb == "watch" for r in kopf_requests(resource))
            for resource in ("jobs", "deployments")
        )

    wait_for(watching, 60, "the operator's watches of Jobs and Deployments")
    for resource in ("jobs", "deployments"):
        requests = kopf_requests(resource)
        assert {r.verb for r in requests} == {"list", "watch"}, requests
        assert {r.label_selector for r in requests} == {CHILD_SELECTOR}, requests
    # TuningStudies are all the operator's: their watch needs no selector.
    assert {r.label_selector for r in kopf_requests("tuningstudies")} == {None}


def test_a_trial_added_to_an_idle_study_reaches_its_status_through_the_database(
    studies: Studies,
) -> None:
    """A suspended study is never refreshed periodically; a trial its Optuna study gains
    reaches the status only because the database announces it (storage/notify.py)."""
    studies.create(study_body("told", suspend=True))
    studies.wait_phase("told", "Suspended")
    studies.optuna_study("told").add_trial(optuna.trial.create_trial(value=0.5))

    def shown() -> dict[str, Any] | None:
        status = studies.status("told")
        return status if (status.get("trials") or {}).get("complete") == 1 else None

    status = wait_for(shown, 60, "the added trial in the status")
    assert status["phase"] == "Suspended"
