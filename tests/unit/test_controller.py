"""The controller's bookkeeping: what a watch event queues, events deduplicated, caches and
metric series dropped with the study."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from optuna_operator import metrics
from optuna_operator.api import TuningStudy, TuningStudyStatus
from optuna_operator.config import OperatorSettings
from optuna_operator.controller import Controller
from optuna_operator.reconcile import Children, Event, Outcome, Reconciler
from optuna_operator.recorder import EventRecorder
from optuna_operator.sync import StudySync


class RecordingCluster:
    """Stands in for the API server where only the calls made are of interest."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.posted.append((reason, message))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None  # no copy of operator 0.1.0 to empty


class NoStores:
    def forget(self, name: str) -> None:
        pass


def body(generation: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tuning.optuna-operator.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {
            "name": "s",
            "namespace": "ns",
            "uid": "u-1",
            "generation": generation,
            "resourceVersion": str(10 + generation),
            **meta,
        },
        "spec": {
            "directions": ["minimize"],
            "objective": {"function": "m:f"},
            "budget": {"trials": 5},
        },
        "status": {},
    }


def controller() -> Controller:
    reconciler = Reconciler(RecordingCluster(), NoStores(), OperatorSettings())  # type: ignore[arg-type]
    return Controller(reconciler)


def test_only_spec_changes_and_deletion_queue_a_study() -> None:
    c = controller()
    c.on_study(None, body())
    assert len(c.queue) == 1
    c.queue.forget(("ns", "s"))
    status_write = body()
    status_write["metadata"]["resourceVersion"] = "99"
    status_write["status"] = {"phase": "Running"}
    c.on_study("MODIFIED", status_write)
    assert len(c.queue) == 0 and c.cache.studies[("ns", "s")]["status"] == {"phase": "Running"}
    c.on_study("MODIFIED", body(generation=2))
    assert len(c.queue) == 1


def test_a_late_event_does_not_overwrite_a_newer_object() -> None:
    c = controller()
    newer = body()
    newer["metadata"]["resourceVersion"] = "50"
    c.on_study(None, newer)
    c.on_study("MODIFIED", body())  # resourceVersion 11
    assert c.cache.studies[("ns", "s")]["metadata"]["resourceVersion"] == "50"


def worker_job(**extra: Any) -> dict[str, Any]:
    """A worker Job of study ns/s as a watch event carries it; `extra` adds top-level keys."""
    return {
        "kind": "Job",
        "metadata": {
            "name": "s-workers-1",
            "namespace": "ns",
            "resourceVersion": "5",
            "ownerReferences": [{"kind": "TuningStudy", "name": "s"}],
        },
        "status": {"active": 1},
        **extra,
    }


def test_child_events_queue_the_owner_only_when_progress_changes() -> None:
    c = controller()
    job = worker_job()
    c.on_child("Job", "ADDED", job)
    assert len(c.queue) == 1
    c.queue.forget(("ns", "s"))
    c.on_child("Job", "MODIFIED", {**job, "metadata": {**job["metadata"], "resourceVersion": "6"}})
    assert len(c.queue) == 0
    c.on_child("Job", "MODIFIED", {**job, "status": {"active": 1, "ready": 1}})
    assert len(c.queue) == 1
    c.on_child("Job", "DELETED", job)
    assert c.cache.jobs[("ns", "s")] == {}


def test_deleting_a_study_drops_its_caches_and_metric_series() -> None:
    c = controller()
    c.on_study(None, body())
    study = TuningStudy.model_validate(body())
    metrics.record_study(study, study.status.model_copy(update={"phase": "Running"}))
    labels = {"namespace": "ns", "name": "s", "phase": "Running"}
    assert REGISTRY.get_sample_value("optuna_operator_study_phase", labels) == 1
    c.on_study("DELETED", body())
    assert ("ns", "s") not in c.cache.studies and len(c.queue) == 0
    assert REGISTRY.get_sample_value("optuna_operator_study_phase", labels) is None


def test_events_are_not_repeated() -> None:
    cluster = RecordingCluster()
    recorder = EventRecorder(cluster)  # type: ignore[arg-type]
    for _ in range(3):
        recorder.record(body(), Event("Normal", "CreatedJob", "Created Job s-workers-1"))
    recorder.record(body(), Event("Normal", "NewBestTrial", "Trial 1 is the best so far: 3"))
    recorder.record(body(), Event("Normal", "NewBestTrial", "Trial 2 is the best so far: 2"))
    assert cluster.posted == [
        ("CreatedJob", "Created Job s-workers-1"),
        ("NewBestTrial", "Trial 1 is the best so far: 3"),
    ]


class OrderRecordingCluster(RecordingCluster):
    """Records events and status writes in the order they reach the API server."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls.append(f"event {reason}")

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"status {patch.get('phase')}")
        return {**body(), "status": patch}


class FixedOutcome:
    """A reconciler whose outcome is given: the controller's part is under test."""

    def __init__(self, cluster: OrderRecordingCluster, outcome: Outcome) -> None:
        self.cluster = cluster
        self.outcome = outcome

    def reconcile(self, study: TuningStudy, children: Children) -> Outcome:
        return self.outcome


def test_the_event_explaining_a_status_is_posted_before_the_status() -> None:
    cluster = OrderRecordingCluster()
    failed = Outcome(
        TuningStudyStatus(phase="Failed"),
        events=[Event("Warning", "Failed", "The API server refused Job s-workers")],
    )
    c = Controller(FixedOutcome(cluster, failed))  # type: ignore[arg-type]
    c.syncer.sync(body(), Children())
    assert cluster.calls == ["event Failed", "status Failed"]

    # A spec the models refuse takes the same order.
    cluster.calls.clear()
    invalid = body()
    del invalid["spec"]["objective"]
    c.syncer.sync(invalid, Children())
    assert cluster.calls == ["event InvalidSpec", "status Failed"]


def test_the_cache_keeps_neither_managed_fields_nor_pod_templates() -> None:
    c = controller()
    job = worker_job(
        spec={"suspend": True, "parallelism": 2, "template": {"spec": {"containers": []}}}
    )
    job["metadata"]["managedFields"] = [{"manager": "optuna-operator", "fieldsV1": {}}]
    c.on_child("Job", "ADDED", job)
    kept = c.cache.jobs[("ns", "s")]["s-workers-1"]
    assert "managedFields" not in kept["metadata"]
    assert kept["spec"] == {"suspend": True, "parallelism": 2}
    assert kept["status"] == {"active": 1}
    assert "managedFields" in job["metadata"]  # the event's object is left as it came


def test_trial_changes_wake_only_the_studies_that_run_that_optuna_study() -> None:
    cluster = OrderRecordingCluster()
    suspended = Outcome(TuningStudyStatus(phase="Suspended"))
    c = Controller(FixedOutcome(cluster, suspended))  # type: ignore[arg-type]

    async def scenario() -> tuple[int, int]:
        loop = asyncio.create_task(c.run())
        c.on_study(None, body())
        # Its name is known once its first reconcile is absorbed: a wake queues it then.
        while not len(c.queue) or not cluster.calls:
            c.wake("ns.s")
            await asyncio.sleep(0.01)
        c.queue.forget(("ns", "s"))
        c.wake("ns.other")
        unknown = len(c.queue)
        c.wake("ns.s")  # the default Optuna study name of ns/s
        known = len(c.queue)
        loop.cancel()
        return unknown, known

    assert asyncio.run(scenario()) == (0, 1)


class StatusCluster(RecordingCluster):
    """Also records status patches."""

    def __init__(self) -> None:
        super().__init__()
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(patch)
        return {**body(), "status": patch}


class LeakyReconciler:
    """A reconcile whose messages quote the storage URL, as a driver error would."""

    URL = "postgresql+psycopg2://tenant:s3cret-pw@db:5432/optuna"

    def __init__(self, cluster: StatusCluster) -> None:
        self.cluster = cluster

    def reconcile(self, study: TuningStudy, children: Children) -> Outcome:
        status = TuningStudyStatus.model_validate(
            {
                "conditions": [
                    {
                        "type": "StorageReady",
                        "status": "False",
                        "reason": "X",
                        "message": f"could not connect to {self.URL}",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ]
            }
        )
        event = Event("Warning", "X", "password=s3cret-pw refused")
        return Outcome(status, [event], storage_url=self.URL)


def test_the_writer_removes_credentials_from_every_status_and_event_message() -> None:
    cluster = StatusCluster()
    sync = StudySync(LeakyReconciler(cluster), EventRecorder(cluster))  # type: ignore[arg-type]
    sync.sync(body(), Children())
    written = str(cluster.patches) + str(cluster.posted)
    assert cluster.patches and cluster.posted
    assert "s3cret-pw" not in written
    assert "db:5432/optuna" in written  # the URL is described, not dropped


def test_the_cache_hands_out_copies_and_keeps_the_newest_version() -> None:
    c = controller()
    c.on_study(None, body())
    read = c.cache.studies[("ns", "s")]
    read["status"]["phase"] = "Changed by a reader"
    assert c.cache.studies[("ns", "s")]["status"] == {}  # kept as JSON: readers get a copy
    older = body()
    older["metadata"]["resourceVersion"] = "3"
    older["status"] = {"phase": "Stale"}
    c.cache.keep_study(("ns", "s"), older)
    assert c.cache.studies[("ns", "s")]["metadata"]["resourceVersion"] == "11"
    assert c.cache.studies[("ns", "s")] == {**body(), "status": {}}
