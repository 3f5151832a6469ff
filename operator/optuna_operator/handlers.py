"""The kopf layer: decorators only. Every handler parses the body once and calls the
level-based `Reconciler.reconcile`; status goes out through `patch.status`."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import ValidationError

from optuna_operator import metrics
from optuna_operator.api import GROUP, PLURAL, VERSION, DeletionPolicy, TuningStudy
from optuna_operator.conditions import ConditionType, Reason, set_condition
from optuna_operator.config import OperatorSettings
from optuna_operator.kube import Cluster
from optuna_operator.reconcile import Reconciler, StorageProblem
from optuna_operator.study_store import StorageError, StoreRegistry

__all__ = ["build_registry"]

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "optuna-operator.io"
# Outside kopf's own prefix on purpose: kopf ignores its prefix when diffing, and a change
# here must count as an update of the TuningStudy so it is reconciled at once.
WORKERS_ANNOTATION = "workers.optuna-operator.io/observed"
DELETE_RETRIES = 5


def _api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


def _parse(body: kopf.Body) -> TuningStudy:
    try:
        return TuningStudy.model_validate(
            {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}
        )
    except ValidationError as exc:
        raise kopf.PermanentError(f"Invalid TuningStudy: {exc.errors()[0]['msg']}") from exc


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) turning `old` into `new`: removed keys become None at
    every depth, or a best trial's params would keep keys of an earlier best trial."""
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value:
            patch[key] = value
    return patch


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Handlers bound to one Reconciler, created at start-up and closed at clean-up."""
    registry = kopf.OperatorRegistry()
    operator_settings = settings  # the startup handler's own `settings` is kopf's
    state: dict[str, Any] = {}
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A private registry does not get kopf's default login handlers.
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Kopf's bookkeeping goes to annotations under our prefix, never into status.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/delete-study"
        settings.posting.level = logging.INFO
        settings.execution.max_workers = 16
        # A deleted study waits for its refresh timer to stop; kopf re-checks only every 60 s
        # by default, which held deletions for a minute whenever a refresh was running.
        settings.background.cancellation_polling = 1.0
        state["stores"] = StoreRegistry()
        state["reconciler"] = Reconciler(Cluster(_api_client()), state["stores"], operator_settings)
        if operator_settings.metrics_port:
            metrics.serve(operator_settings.metrics_port)

    @kopf.on.cleanup(registry=registry)
    def close(**_: Any) -> None:
        stores: StoreRegistry | None = state.get("stores")
        if stores is not None:
            stores.close()
        reconciler: Reconciler | None = state.get("reconciler")
        if reconciler is not None:
            reconciler.cluster.close()

    def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        study = _parse(body)
        reconciler: Reconciler = state["reconciler"]
        outcome = reconciler.reconcile(study)
        patch.status.update(merge_patch(dict(body.status), outcome.status.to_wire()))
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            log.info(
                "%s %s/%s: %s",
                event.reason,
                study.metadata.namespace,
                study.metadata.name,
                event.message,
            )
        metrics.observe(study, outcome.status)

    def invalid_spec(body: kopf.Body, patch: kopf.Patch, exc: kopf.PermanentError) -> None:
        conditions = set_condition(
            [],
            ConditionType.FAILED,
            True,
            Reason.INVALID_SPEC,
            str(exc),
            body.metadata.get("generation"),
        )
        patch.status["conditions"] = [c.to_wire() for c in conditions]
        patch.status["phase"] = "Failed"

    def guarded(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        try:
            reconcile(body=body, patch=patch, **kwargs)
        except kopf.PermanentError as exc:
            invalid_spec(body, patch, exc)
            raise

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*resource, registry=registry, id="reconcile")(guarded)
    kopf.timer(
        *resource,
        registry=registry,
        id="refresh",
        interval=settings.status_interval,
        initial_delay=settings.status_interval,
    )(guarded)

    @kopf.on.event(
        "batch",
        "v1",
        "jobs",
        registry=registry,
        id="worker-job-changed",
        labels={"app.kubernetes.io/managed-by": "optuna-operator"},
    )
    def worker_job_changed(body: kopf.Body, **_: Any) -> None:
        """Refresh the owning study when its workers start, finish or fail, not only on the
        timer: the Job's progress is summarized into an annotation on the TuningStudy."""
        owner = next(
            (o for o in body.metadata.get("ownerReferences", []) if o.get("kind") == "TuningStudy"),
            None,
        )
        if owner is None:
            return
        job_status = body.get("status", {})
        conditions = sorted(
            c["type"] for c in job_status.get("conditions") or [] if c.get("status") == "True"
        )
        observed = (
            f"{body.metadata.name} active={job_status.get('active', 0)} "
            f"ready={job_status.get('ready', 0)} succeeded={job_status.get('succeeded', 0)} "
            f"failed={job_status.get('failed', 0)} {','.join(conditions)}"
        ).strip()
        reconciler: Reconciler = state["reconciler"]
        reconciler.cluster.annotate(
            "TuningStudy", str(body.metadata.namespace), owner["name"], WORKERS_ANNOTATION, observed
        )

    @kopf.on.delete(
        *resource,
        registry=registry,
        id="delete-study",
        when=lambda spec, **_: spec.get("deletionPolicy") == DeletionPolicy.DELETE.value,
    )
    def delete_study(body: kopf.Body, retry: int, **_: Any) -> None:
        study = _parse(body)
        reconciler: Reconciler = state["reconciler"]
        try:
            deleted = reconciler.delete_study(study)
        except (StorageProblem, StorageError) as exc:
            if retry >= DELETE_RETRIES:
                # Never hold a namespace hostage: give up and say the study was kept.
                kopf.warn(
                    body,
                    reason="StudyRetained",
                    message=f"Could not delete Optuna study {study.study_name}: {exc}",
                )
                return
            raise kopf.TemporaryError(f"Cannot delete the study yet: {exc}", delay=10) from exc
        if deleted:
            kopf.info(
                body,
                reason="StudyDeleted",
                message=f"Deleted Optuna study {study.study_name} (deletionPolicy Delete)",
            )

    return registry
