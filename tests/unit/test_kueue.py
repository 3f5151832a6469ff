"""Worker Jobs queued in Kueue: the Job manifest, `decide` (create once, never patch; delete to
stop or requeue), the admission read from a Workload, and the status it gives. Pure."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from optuna_operator.api import TuningStudy
from optuna_operator.children.desired import Desired
from optuna_operator.children.manifests import (
    MIN_PARALLELISM_ANNOTATION,
    QUEUE_LABEL,
    ChildContext,
    worker_job,
)
from optuna_operator.config import add_run_arguments, settings_from_args
from optuna_operator.lifecycle.stopping import assess
from optuna_operator.reconcile import (
    APPLIED_HASH_ANNOTATION,
    Acted,
    JobState,
    Observed,
    Plan,
    StorageRef,
    build_status,
    decide,
    kueue,
)
from optuna_operator.storage.study_store import StudyHandle, StudySummary

NOW = datetime(2030, 1, 1, tzinfo=UTC)
HANDLE = StudyHandle(1, "ns.s", (), NOW, created=False)
STORAGE = StorageRef("s-storage", "url", "postgresql+psycopg2://u:p@h/db")
CTX = ChildContext("s-storage", "url", "worker:1", "dash:1")
QUEUE = "gpu"
PENDING_MESSAGE = (
    "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor "
    "default, 1 more needed"
)


def study(**spec: Any) -> TuningStudy:
    body = {
        "directions": ["maximize"],
        "objective": {"function": "m:f"},
        "budget": {"trials": 10},
        "dashboard": {"enabled": False},
        **spec,
    }
    return TuningStudy.model_validate(
        {"metadata": {"name": "s", "namespace": "ns", "uid": "u1"}, "spec": body}
    )


def job(**fields: Any) -> JobState:
    base = {"name": "s-workers-1", "applied_hash": "job-hash", "uid": "j1"}
    return JobState(**{**base, **fields})


def observed(
    job: JobState | None = None,
    summary: StudySummary | None = None,
    admission: kueue.Admission | None = None,
    queue: str | None = QUEUE,
) -> Observed:
    return Observed(
        now=NOW,
        storage=STORAGE,
        handle=HANDLE,
        summary=summary or StudySummary(),
        job=job,
        desired=Desired(job={"metadata": {"annotations": {APPLIED_HASH_ANNOTATION: "job-hash"}}}),
        queue=queue,
        admission=admission,
    )


def assessed(s: TuningStudy, o: Observed) -> Observed:
    """`o` with the budgets assessed, as observe completes it."""
    return replace(o, assessment=assess(s.spec, s.status, o.summary, o.now, copied=HANDLE.copied))


def plan_for(s: TuningStudy, o: Observed) -> Plan:
    return decide(s, assessed(s, o), 10.0)


def condition(status: Any, type_: str) -> Any:
    return next((c for c in status.conditions if c.type == type_), None)


# ------------------------------------------------------------------- the Job manifest


def test_a_queued_job_carries_the_label_and_starts_suspended() -> None:
    manifest = worker_job(study(), replace(CTX, queue_name=QUEUE))
    assert manifest["metadata"]["labels"][QUEUE_LABEL] == QUEUE
    assert manifest["spec"]["suspend"] is True


def test_without_a_queue_the_job_is_unchanged() -> None:
    manifest = worker_job(study(), CTX)
    assert QUEUE_LABEL not in manifest["metadata"]["labels"]
    assert manifest["spec"]["suspend"] is False
    assert worker_job(study(suspend=True), CTX)["spec"]["suspend"] is True


def test_min_parallelism_asks_kueue_for_partial_admission_only_with_a_queue() -> None:
    s = study(workers={"parallelism": 4, "minParallelism": 2})
    queued = worker_job(s, replace(CTX, queue_name=QUEUE))
    assert queued["metadata"]["annotations"] == {MIN_PARALLELISM_ANNOTATION: "2"}
    assert "annotations" not in worker_job(s, CTX)["metadata"]


def test_the_queue_does_not_change_the_pod_template_or_the_job_name() -> None:
    plain, queued = worker_job(study(), CTX), worker_job(study(), replace(CTX, queue_name=QUEUE))
    assert plain["spec"]["template"] == queued["spec"]["template"]
    assert plain["metadata"]["name"] == queued["metadata"]["name"]


# ------------------------------------------------------------------- decide


def test_a_queued_study_creates_its_job() -> None:
    assert plan_for(study(), observed()).job == "apply"


def test_a_job_kueue_unsuspended_is_never_sent_again() -> None:
    plan = plan_for(study(), observed(job(active=1, ready=1)))
    assert (plan.job, plan.phase.phase) == ("none", "Running")


def test_a_suspended_queued_job_is_queued_and_left_alone() -> None:
    plan = plan_for(study(), observed(job(suspended=True)))
    assert (plan.job, plan.phase.phase, plan.phase.reason) == (
        "none",
        "Queued",
        "WaitingForAdmission",
    )
    assert plan.requeue_after == 10.0


def test_a_changed_queued_job_is_requeued_by_deletion_not_patched() -> None:
    plan = plan_for(study(), observed(job(active=2, ready=2, applied_hash="old")))
    assert plan.job == "requeue"


def test_spec_suspend_deletes_a_queued_job() -> None:
    assert plan_for(study(suspend=True), observed(job(active=2, ready=2))).job == "stop"
    idle = plan_for(study(suspend=True), observed())
    assert (idle.job, idle.phase.phase) == ("none", "Suspended")


def test_a_finished_study_deletes_its_still_queued_job() -> None:
    done = StudySummary(complete=10)
    assert plan_for(study(), observed(job(suspended=True), done)).job == "stop"
    assert plan_for(study(), observed(None, done)).job == "none"


def test_preempted_workers_trials_are_failed_while_queued() -> None:
    plan = plan_for(study(), observed(job(suspended=True), StudySummary(complete=4, running=2)))
    assert plan.fail_stale_trials and plan.phase.phase == "Queued"


def test_a_job_whose_queue_was_removed_is_replaced_not_patched() -> None:
    had_queue = job(active=2, ready=2, applied_hash="old", queue=QUEUE)
    assert plan_for(study(), observed(had_queue, queue=None)).job == "requeue"


def test_without_a_queue_suspend_still_patches_the_job() -> None:
    plan = plan_for(
        study(suspend=True), observed(job(active=2, ready=2, applied_hash="old"), queue=None)
    )
    assert plan.job == "apply"


# ------------------------------------------------------------------- Kueue's Workload


def workload(conditions: list[dict[str, str]], cluster_queue: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions}
    if cluster_queue:
        status["admission"] = {"clusterQueue": cluster_queue}
    return {"status": status}


def test_a_pending_workload_gives_kueues_message_and_the_cluster_queue() -> None:
    wl = workload([{"type": "QuotaReserved", "status": "False", "message": PENDING_MESSAGE}])
    admission = kueue.admission(QUEUE, wl, "team-gpu")
    assert not admission.admitted
    assert admission.sentence() == (
        f"Waiting for admission in LocalQueue gpu (ClusterQueue team-gpu): {PENDING_MESSAGE}"
    )


def test_an_eviction_explains_the_suspension_first() -> None:
    wl = workload(
        [
            {"type": "QuotaReserved", "status": "False", "message": PENDING_MESSAGE},
            {"type": "Evicted", "status": "True", "message": "Preempted to accommodate a workload"},
        ]
    )
    assert kueue.admission(QUEUE, wl, "cq").message == "Preempted to accommodate a workload"


def test_an_admitted_workload_names_its_cluster_queue() -> None:
    wl = workload([{"type": "Admitted", "status": "True", "message": "ok"}], "assigned")
    admission = kueue.admission(QUEUE, wl, "from-local-queue")
    assert admission.admitted and admission.cluster_queue == "assigned"


def test_no_workload_yet_says_to_check_kueue() -> None:
    assert "Kueue has not created a Workload" in kueue.admission(QUEUE, None, None).message


# ------------------------------------------------------------------- status


def test_status_says_the_workers_wait_for_admission() -> None:
    s = study()
    waiting = job(suspended=True)
    admission = kueue.admission(
        QUEUE,
        workload([{"type": "QuotaReserved", "status": "False", "message": PENDING_MESSAGE}]),
        "team-gpu",
    )
    o = observed(waiting, admission=admission)
    status, _ = build_status(s, assessed(s, o), plan_for(s, o), Acted(job=waiting))
    assert status.phase == "Queued"
    admitted = condition(status, "WorkersAdmitted")
    assert (admitted.status, admitted.reason) == ("False", "WaitingForAdmission")
    assert "ClusterQueue team-gpu" in admitted.message and PENDING_MESSAGE in admitted.message
    workers = condition(status, "WorkersReady")
    assert (workers.reason, workers.message) == ("WaitingForAdmission", admitted.message)


def test_status_says_admitted_once_kueue_starts_the_job() -> None:
    s, running = study(), job(active=1, ready=1)
    o = observed(running)
    status, _ = build_status(s, assessed(s, o), plan_for(s, o), Acted(job=running))
    admitted = condition(status, "WorkersAdmitted")
    assert (status.phase, admitted.status, admitted.reason) == ("Running", "True", "Admitted")


def test_no_admission_condition_without_a_queue() -> None:
    s, running = study(), job(active=1, ready=1)
    queued = observed(running)
    status, _ = build_status(s, assessed(s, queued), plan_for(s, queued), Acted(job=running))
    assert condition(status, "WorkersAdmitted") is not None
    s = s.model_copy(update={"status": status})
    plain = observed(running, queue=None)
    status, _ = build_status(s, assessed(s, plain), plan_for(s, plain), Acted(job=running))
    assert condition(status, "WorkersAdmitted") is None


def test_deleting_a_queued_job_is_an_event() -> None:
    s = study(suspend=True)
    o = observed(job(active=1, ready=1))
    _, events = build_status(s, assessed(s, o), plan_for(s, o), Acted(job=None))
    assert ("DeletedQueuedJob", "Deleted Job s-workers-1: spec.suspend is true") in [
        (e.reason, e.message) for e in events
    ]


def test_the_operator_wide_default_queue_comes_from_a_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parse(*argv: str) -> str | None:
        parser = argparse.ArgumentParser()
        add_run_arguments(parser)
        return settings_from_args(parser.parse_args(list(argv))).default_queue_name

    assert parse() is None
    assert parse("--default-queue-name", "gpu") == "gpu"
    monkeypatch.setenv("OPTUNA_OPERATOR_DEFAULT_QUEUE_NAME", "batch")
    assert parse() == "batch"
