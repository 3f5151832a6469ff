"""Step 4, act: apply or delete the children the plan names, export the best trial, then
fail stale trials and compute importances when a study finishes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from optuna_operator.api import TuningStudy
from optuna_operator.apiserver import ApiError
from optuna_operator.children.applied import manifest_hash
from optuna_operator.kube import Cluster
from optuna_operator.lifecycle.conditions import Reason
from optuna_operator.reconcile.dashboard import DashboardSender
from optuna_operator.reconcile.model import (
    Acted,
    ChildConflict,
    JobState,
    Observed,
    Plan,
    Sent,
    controller_uid,
)
from optuna_operator.storage.study_store import StorageError, StoreRegistry

__all__ = [
    "Actor",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _JobsSent:
    """The worker Job after the act step, and what changed."""

    job: JobState | None
    created: bool = False
    applied: tuple[dict[str, Any], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()
    rejected: tuple[str, str] | None = None


class Actor:
    """Step 4, act: apply or delete exactly what the plan names; the only step that changes
    the cluster's children. Nothing is sent when nothing differs."""

    def __init__(self, cluster: Cluster, stores: StoreRegistry) -> None:
        self.cluster = cluster
        self.stores = stores
        self.dashboards = DashboardSender(cluster)
        # (namespace, ConfigMap name) -> digest of the spec.export ConfigMap last applied
        self._exports: dict[tuple[str, str], str] = {}

    def forget(self, study: TuningStudy) -> None:
        """Drop what is cached for a deleted study."""
        if study.spec.export is not None:
            self._exports.pop((study.metadata.namespace, study.spec.export.config_map_name), None)

    def act(self, study: TuningStudy, observed: Observed, plan: Plan) -> Acted:
        """Apply or delete what the plan names; a child the API server refuses, or whose
        name another owner holds, is reported, not raised, so the status can say why."""
        assert observed.storage is not None and observed.handle is not None
        jobs = self._act_on_jobs(study, observed, plan)
        old = (
            self._delete_old_dashboard(study, observed) if plan.delete_old_dashboard else Sent(None)
        )
        dashboard = Sent(observed.dashboard)
        rejected = jobs.rejected
        if plan.dashboard != "none" and rejected is None:
            dashboard, rejected = self._act_on_dashboard(study, observed, plan)
        if observed.desired.export is not None:
            self._export(observed.desired.export)
        if plan.fail_stale_trials:
            try:
                self.stores.fail_stale_trials(
                    observed.storage.url,
                    observed.handle.name,
                    study.spec.workers.heartbeat_interval_seconds,
                )
            except StorageError as exc:  # the next refresh tries again
                log.warning("Could not fail stale trials of %s: %s", observed.handle.name, exc)
        if plan.stop_workers:
            self.stores.stop_workers(
                observed.storage.url, observed.handle, study.spec.budget.timeout_seconds
            )
        importances = None
        if plan.importances:
            try:
                url, name = observed.storage.url, study.study_name
                importances = self.stores.param_importances(url, name) or None
            except Exception as exc:  # importance is a courtesy; never fail the study for it
                log.warning(
                    "Could not compute parameter importances for %s: %s",
                    study.study_name,
                    type(exc).__name__,
                )
        return Acted(
            job=jobs.job,
            job_created=jobs.created,
            dashboard=dashboard.deployment,
            dashboard_created=dashboard.created,
            rejected=rejected,
            importances=importances,
            applied=jobs.applied + dashboard.applied,
            deleted=jobs.deleted + old.deleted + dashboard.deleted,
        )

    def _act_on_jobs(self, study: TuningStudy, observed: Observed, plan: Plan) -> _JobsSent:
        """Delete Jobs of an older template, then restart, requeue, stop or apply the Job."""
        deleted = [("Job", name) for name in plan.delete_jobs]
        for _, name in deleted:
            self.cluster.delete("Job", study.metadata.namespace, name)
        job = observed.job
        if plan.job in ("restart", "requeue", "stop") and job is not None:
            self.cluster.delete("Job", study.metadata.namespace, job.name)
            return _JobsSent(None, deleted=(*deleted, ("Job", job.name)))
        if plan.job != "apply":
            return _JobsSent(job, deleted=tuple(deleted))
        desired = observed.desired.job
        try:
            if job is None:  # not in the cache: a Job of that name may be someone else's
                self._check_controlled(study, desired)
            if observed.queue:  # created only: Kueue owns what it injects on admission
                stored, created = self.cluster.create(desired)
            else:
                stored, created = self.cluster.apply(desired)
        except ApiError as exc:
            refusal = _refusal(exc, "Job", desired["metadata"]["name"])
            return _JobsSent(job, deleted=tuple(deleted), rejected=(Reason.CHILD_REJECTED, refusal))
        except ChildConflict as exc:
            rejected = (Reason.CHILD_CONFLICT, str(exc))
            return _JobsSent(job, deleted=tuple(deleted), rejected=rejected)
        return _JobsSent(JobState.from_job(stored), created, (stored,), tuple(deleted))

    def _delete_old_dashboard(self, study: TuningStudy, observed: Observed) -> Sent:
        """A study's own dashboard made by a release before 0.2 and controlled by this study
        (the watch caches only such): the namespace's read-only dashboard replaces it."""
        assert observed.old_dashboard is not None
        name = observed.old_dashboard["metadata"]["name"]
        for kind in ("Deployment", "Service"):
            self.cluster.delete(kind, study.metadata.namespace, name)
        return Sent(None, deleted=(("Deployment", name), ("Service", name)))

    def _act_on_dashboard(
        self, study: TuningStudy, observed: Observed, plan: Plan
    ) -> tuple[Sent, tuple[str, str] | None]:
        """Send the dashboard the plan names; a refusal or a conflict is reported."""
        name = observed.desired.dashboard_name
        try:
            sent = self.dashboards.send(
                study, name, plan.dashboard, observed.desired.dashboard, observed.dashboard
            )
        except ApiError as exc:
            return Sent(observed.dashboard), (
                Reason.CHILD_REJECTED,
                _refusal(exc, "Deployment", name),
            )
        except ChildConflict as exc:
            return Sent(observed.dashboard), (Reason.CHILD_CONFLICT, str(exc))
        return sent, None

    def _check_controlled(
        self, study: TuningStudy, desired: dict[str, Any], cached: dict[str, Any] | None = None
    ) -> None:
        """Raise ChildConflict when an object of the child's name exists and is not
        controlled by this TuningStudy (uid): it is never taken over or deleted."""
        meta = desired["metadata"]
        current = cached or self.cluster.get(desired["kind"], meta["namespace"], meta["name"])
        if current is not None and controller_uid(current) != study.metadata.uid:
            raise ChildConflict.about(desired["kind"], meta["name"], current)

    def _export(self, config_map: dict[str, Any]) -> None:
        """Write the best trial to the spec.export ConfigMap when it changed. Not checked
        for a foreign owner like the other children: the operator never reads ConfigMaps,
        and the admission policy already requires the study's author to hold `update` on
        this one, so writing it lends the author nothing."""
        digest = manifest_hash(config_map)
        key = (config_map["metadata"]["namespace"], config_map["metadata"]["name"])
        if self._exports.get(key) != digest:
            self.cluster.apply(config_map)
            self._exports[key] = digest


def _refusal(exc: ApiError, kind: str, name: str) -> str:
    """The API server's reason for refusing a child, as a sentence for the status; errors
    that are not a refusal of this object (5xx, timeouts) are raised on."""
    if exc.status not in (400, 403, 404, 409, 422):
        raise exc
    try:
        detail = json.loads(exc.body or b"{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        detail = exc.reason
    return f"The API server refused {kind} {name}: {detail}"[:1000]
