"""Step 1, observe: read the storage, the Optuna study and the cached children into an
`Observed`. Setting up the namespace's credentials and creating the Optuna study on first
sight happen here too, as the database cannot be read before they exist.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import optuna
from kubernetes.client.exceptions import ApiException

from optuna_operator import manifests
from optuna_operator.api import TuningStudy
from optuna_operator.applied import applied_hash, with_hash
from optuna_operator.conditions import Reason
from optuna_operator.config import OPERATOR_VERSION, OperatorSettings
from optuna_operator.contract import REPLACE_EXIT_CODES, ExitCode
from optuna_operator.dashboards import desired_dashboard
from optuna_operator.kube import Cluster
from optuna_operator.reconcile.model import (
    Children,
    JobState,
    Observed,
    StorageProblem,
    StorageRef,
    owner_of,
)
from optuna_operator.reconcile.queues import AdmissionReader
from optuna_operator.storage.study_store import StoreRegistry, StudyHandle
from optuna_operator.storage.tenancy import Tenancy, TenancyError

__all__ = [
    "SECRET_TTL_SECONDS",
    "Observer",
    "controller_uid",
    "job_state",
    "termination_message",
]

log = logging.getLogger(__name__)


# Secret values read for storage URLs are reused this long: a rotated password reaches new
# workers within a minute, and running studies do not GET a Secret on every refresh.
SECRET_TTL_SECONDS = 60.0


def job_state(job: dict[str, Any]) -> JobState:
    """The fields of a Job object the reconcile acts on."""
    status = job.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    return JobState(
        name=job["metadata"]["name"],
        active=status.get("active", 0) or 0,
        ready=status.get("ready", 0) or 0,
        succeeded=status.get("succeeded", 0) or 0,
        failed=status.get("failed", 0) or 0,
        complete="Complete" in conditions,
        failed_reason=failed.get("reason", "Failed") if failed else None,
        failed_message=failed.get("message", "") if failed else None,
        applied_hash=applied_hash(job),
        suspended=bool((job.get("spec") or {}).get("suspend")),
        uid=str(job["metadata"].get("uid") or ""),
        queue=(job["metadata"].get("labels") or {}).get(manifests.QUEUE_LABEL),
    )


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The most recent worker failure: exit code, kubelet reason and the last line the
    worker printed (the kubelet copies it into the pod status)."""
    failures = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                term = state.get("terminated") or {}
                code = term.get("exitCode")
                # 0 is success; a replaced worker (SIGTERM, trial timeout) is not a failure.
                if not code or code in REPLACE_EXIT_CODES:
                    continue
                text = str(term.get("message") or "").strip()
                last_line = text.splitlines()[-1] if text else ""
                try:
                    meaning = ExitCode(code).name.lower().replace("_", " ")
                except ValueError:
                    meaning = f"signal {code - 128}" if code > 128 else "error"
                detail = f"exit code {code} ({meaning}"
                detail += f", {term['reason']})" if term.get("reason") else ")"
                failures.append(
                    (str(term.get("finishedAt") or ""), f"{detail}: {last_line}"[:500].rstrip(": "))
                )
    if not failures:
        return None
    return sorted(failures)[-1][1]


def controller_uid(obj: dict[str, Any] | None) -> str | None:
    """The uid of the object's controlling owner, if any."""
    for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class Observer:
    """Step 1, observe: the study's storage and Optuna study (database), its children from the
    watch caches, and what Kueue says of a waiting Job. Holds the small caches of Secrets and
    LocalQueues shared across studies."""

    def __init__(
        self, cluster: Cluster, stores: StoreRegistry, settings: OperatorSettings, tenancy: Tenancy
    ) -> None:
        self.cluster = cluster
        self.stores = stores
        self.settings = settings
        self.tenancy = tenancy
        # (namespace, name, key) -> (value, read at monotonic time)
        self._secrets: dict[tuple[str, str, str], tuple[str | None, float]] = {}
        self.queues = AdmissionReader(cluster)
        # uids of studies whose 0.1.0 `<study>-storage` copy was looked at by this process
        self._scrubbed: set[str] = set()

    def forget(self, study: TuningStudy) -> None:
        """Drop what is cached for a deleted study."""
        self._scrubbed.discard(study.metadata.uid or "")

    def observe(self, study: TuningStudy, children: Children, now: datetime) -> Observed:
        """Read the database and the cached children; raises on storage problems."""
        storage = self.resolve_storage(study)
        handle = self.stores.ensure_study(
            storage.url,
            study.study_name,
            list(study.spec.directions),
            study.spec.metric_names,
            study.spec.enqueue_trials,
            {
                "generation": study.metadata.generation,
                "operator_version": OPERATOR_VERSION,
                "optuna_version": optuna.__version__,
            },
            warm_start=study.spec.warm_start.study_name if study.spec.warm_start else None,
            owner=owner_of(study),
            adopt=study.spec.adopt_existing_study,
            before_create=(lambda: self._refuse_legacy(study)) if storage.tenant else None,
        )
        summary = self.stores.summarize(storage.url, handle)
        ctx = self._child_context(study, storage, handle)
        desired_job = with_hash(manifests.worker_job(study, ctx))
        desired_name = desired_job["metadata"]["name"]
        current: JobState | None = None
        stale = []
        for job in children.jobs:
            if job["metadata"].get("deletionTimestamp"):
                continue
            if controller_uid(job) != study.metadata.uid:
                # Not this resource's (e.g. of an earlier one of the same name): never
                # counted or deleted here; applying its name reports the conflict.
                continue
            if job["metadata"]["name"] == desired_name:
                current = job_state(job)
            else:
                stale.append(job["metadata"]["name"])
        workers_message = None
        if current is not None and (current.failed_reason or current.failed):
            pods = self.cluster.list_pods(
                study.metadata.namespace, f"batch.kubernetes.io/job-name={current.name}"
            )
            workers_message = termination_message(pods)
            if current.failed_reason:
                current = replace(current, failed_message=workers_message or current.failed_message)
        pods_refused = None
        if (
            current is not None
            and current.active == 0
            and not (
                current.complete or current.failed_reason or current.suspended or study.spec.suspend
            )
        ):
            # Quota, LimitRange or admission refusals reach only the Job's events.
            pods_refused = self.cluster.last_event_message(
                study.metadata.namespace, "Job", current.name, "FailedCreate"
            )
        # Default storage: the namespace's dashboard serves the study, and a dashboard of its
        # own from before 0.2 (on the same read-only role) goes.
        own_storage = study.spec.storage is not None
        serving = children.dashboard if own_storage else children.namespace_dashboard
        old_dashboard = None if own_storage else children.dashboard
        admission = None
        if ctx.queue_name is not None and current is not None and current.suspended:
            admission = self.queues.admission(study.metadata.namespace, ctx.queue_name, current)
        return Observed(
            now=now,
            storage=storage,
            handle=handle,
            summary=summary,
            job=current,
            stale_jobs=tuple(sorted(stale)),
            dashboard=serving,
            old_dashboard=old_dashboard,
            workers_message=workers_message,
            pods_refused=pods_refused,
            desired_job=desired_job,
            desired_dashboard=desired_dashboard(study, ctx, serving),
            context=ctx,
            queue=ctx.queue_name,
            admission=admission,
        )

    def resolve_storage(self, study: TuningStudy) -> StorageRef:
        """The storage URL of a study and the Secret its pods read it from: the user's
        Secret (spec.storage), or the namespace's own role, set up with the admin URL."""
        namespace = study.metadata.namespace
        if study.spec.storage is not None:
            ref = study.spec.storage.secret_ref
            url = self._read_secret(namespace, ref.name, ref.key)
            return StorageRef(ref.name, ref.key, url)
        default = self.settings.default_storage
        if default is None:
            raise StorageProblem(
                Reason.NO_STORAGE_CONFIGURED,
                "spec.storage is unset and the operator has no default storage; set "
                "spec.storage.secretRef to a Secret holding a postgresql+psycopg2:// URL",
            )
        admin_url = self._read_secret(default.namespace, default.name, default.key)
        try:
            creds = self.tenancy.ensure(namespace, admin_url)
        except TenancyError as exc:
            raise StorageProblem(Reason(exc.reason), exc.message) from None
        self._scrub_legacy_copy(study)
        return StorageRef(creds.secret, creds.url_key, creds.url, tenant=creds)

    def _scrub_legacy_copy(self, study: TuningStudy) -> None:
        """Operator 0.1.0 copied the admin URL into `<study>-storage`; empty that copy once
        per study and process, with the `patch` the operator already has (no `delete`;
        server-side apply cannot drop it: 0.1.0 wrote it as stringData). The empty Secret
        goes with its TuningStudy."""
        uid = study.metadata.uid or ""
        if uid in self._scrubbed:
            return
        name = f"{study.metadata.name}-storage"
        current = self.cluster.get("Secret", study.metadata.namespace, name)
        if current is not None and controller_uid(current) == uid and current.get("data"):
            self.cluster.merge_patch("Secret", study.metadata.namespace, name, {"data": None})
            log.info("Emptied Secret %s/%s of operator 0.1.0", study.metadata.namespace, name)
        self._scrubbed.add(uid)

    def _read_secret(self, namespace: str, name: str, key: str) -> str:
        cache_key = (namespace, name, key)
        cached = self._secrets.get(cache_key)
        if cached is not None and time.monotonic() - cached[1] < SECRET_TTL_SECONDS:
            value = cached[0]
        else:
            try:
                value = self.cluster.read_secret_value(namespace, name, key)
            except ApiException as exc:
                if exc.status in (403, 404):
                    self._secrets.pop(cache_key, None)
                    raise StorageProblem(
                        Reason.SECRET_NOT_FOUND,
                        f"Secret {name} not found in namespace {namespace}; create it with key "
                        f"{key!r} holding the storage URL",
                    ) from None
                raise
            if value:  # a missing key is looked up again next time: the user may add it
                self._secrets[cache_key] = (value, time.monotonic())
        if not value:
            raise StorageProblem(
                Reason.SECRET_KEY_MISSING,
                f"Secret {name} in namespace {namespace} has no key {key!r}; set "
                "spec.storage.secretRef.key or add the key",
            )
        return value

    def _refuse_legacy(self, study: TuningStudy) -> None:
        """A study of operator 0.1.0 still under the admin role is not shadowed by a new,
        empty one: the user is told to migrate it."""
        default = self.settings.default_storage
        assert default is not None  # tenant storage exists only with a default storage
        admin_url = self._read_secret(default.namespace, default.name, default.key)
        try:
            legacy = self.tenancy.legacy_study_exists(admin_url, study.study_name)
        except TenancyError as exc:
            raise StorageProblem(Reason(exc.reason), exc.message) from None
        if not legacy:
            return
        raise StorageProblem(
            Reason.LEGACY_STUDY_NOT_MIGRATED,
            f"Optuna study {study.study_name} was made by operator 0.1.0 in the shared schema; "
            f"move it into namespace {study.metadata.namespace}'s schema with `optuna-operator "
            f"migrate --namespace {study.metadata.namespace}` (README: Upgrading from 0.1.0)",
        )

    def _child_context(
        self, study: TuningStudy, storage: StorageRef, handle: StudyHandle
    ) -> manifests.ChildContext:
        timeout = study.spec.budget.timeout_seconds
        start = handle.start_time
        tenant = storage.tenant
        return manifests.ChildContext(
            storage_secret=storage.secret,
            storage_key=storage.key,
            worker_image=self.settings.worker_image,
            dashboard_image=self.settings.dashboard_image,
            deadline=start + timedelta(seconds=timeout) if timeout else None,
            queue_name=study.spec.workers.queue_name or self.settings.default_queue_name,
            dashboard_url=tenant.readonly_url if tenant else None,
            dashboard_password_key=tenant.readonly_password_key if tenant else None,
            dashboard_allowed_from=self.settings.dashboard_allowed_from,
        )
