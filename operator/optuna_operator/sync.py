"""One reconcile of one study, run in a worker thread: our finalizer, the reconcile
(reconcile/), the events that explain it, then the status, written only when it changed.

This is where what the reconcile says leaves the operator, so credentials are removed here,
from every event and condition message (trial errors and refusals quote text the operator
does not control), and nowhere else.

The only finalizer is ours, on studies with `deletionPolicy: Delete`, where it protects the
Optuna study in the database until it is deleted. Before its first reconcile in a process, a
study on the default storage also has the copy of the admin URL that operator 0.1.0 left
beside it emptied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from optuna_operator import metrics
from optuna_operator.api import DeletionPolicy, PhaseName, TuningStudy
from optuna_operator.apiserver import ApiError
from optuna_operator.contract import redact
from optuna_operator.lifecycle.conditions import ConditionType, Reason
from optuna_operator.reconcile import Children, Event, Reconciler, StorageProblem
from optuna_operator.reconcile.model import controller_uid
from optuna_operator.reconcile.status import set_condition
from optuna_operator.recorder import EventRecorder
from optuna_operator.storage.study_store import StorageError

__all__ = ["FINALIZER", "StudySync", "SyncResult", "merge_patch", "parse_study"]

log = logging.getLogger(__name__)

# Protects the Optuna study of a `deletionPolicy: Delete` TuningStudy until it is deleted.
FINALIZER = "optuna-operator.io/delete-study"
# A study that cannot be deleted from the database does not hold its namespace forever.
DELETE_RETRIES = 5


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


def parse_study(body: dict[str, Any]) -> TuningStudy:
    """The typed study of a watched body; raises ValidationError on a spec the models refuse."""
    return TuningStudy.model_validate(
        {
            "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
    )


@dataclass
class SyncResult:
    """What a reconcile hands back to the event loop."""

    body: dict[str, Any] | None = None  # the study as last stored, None when gone
    applied: tuple[dict[str, Any], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()
    requeue_after: float | None = None
    retry: bool = False
    errors: list[str] = field(default_factory=list)
    # The Optuna study's name: trial changes announced under it wake this study.
    study_name: str | None = None


class StudySync:
    """Reconciles one study at a time per key; talks to the API server and the database."""

    def __init__(self, reconciler: Reconciler, recorder: EventRecorder) -> None:
        self.reconciler = reconciler
        self.cluster = reconciler.cluster
        self.recorder = recorder
        # uids of studies whose 0.1.0 `<study>-storage` copy this process looked at
        self._scrubbed: set[str] = set()

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted study."""
        self._scrubbed.discard(uid)

    def sync(self, body: dict[str, Any], children: Children, failures: int = 0) -> SyncResult:
        """Reconcile one study: finalizer, children, status and events. `failures` is how
        many reconciles of it failed in a row."""
        meta = body["metadata"]
        try:
            study = parse_study(body)
        except ValidationError as exc:
            return self._invalid(body, exc)
        try:
            if meta.get("deletionTimestamp"):
                return self._finalize(body, study, failures)
            current = self._ensure_finalizer(body, study)
            if current is None:
                return SyncResult(None)
            if study.spec.storage is None:
                self._scrub_legacy_copy(study)
            return self._reconcile(current, study, children)
        except ApiError as exc:
            log.warning(
                "Reconcile of %s/%s: API error %s %s",
                meta["namespace"],
                meta["name"],
                exc.status,
                exc.reason,
            )
            return SyncResult(body, retry=True, errors=["api"])

    def _reconcile(
        self, body: dict[str, Any], study: TuningStudy, children: Children
    ) -> SyncResult:
        outcome = self.reconciler.reconcile(study, children)
        url = outcome.storage_url
        # Events first: whoever sees a new phase or condition can already read the
        # event that explains it (a status written first leaves a window without one).
        for event in outcome.events:
            self._record(body, event, url)
        for condition in outcome.status.conditions:
            condition.message = redact(condition.message, url)
        body = self._write_status(body, outcome.status.to_wire())
        metrics.record_study(study, outcome.status)
        return SyncResult(
            body,
            applied=outcome.applied,
            deleted=outcome.deleted,
            requeue_after=outcome.requeue_after,
            retry=outcome.retry,
            errors=["storage"] if outcome.retry else [],
            study_name=study.study_name,
        )

    def _record(self, body: dict[str, Any], event: Event, url: str | None = None) -> None:
        """Record an event about the study, its message without credentials."""
        self.recorder.record(body, replace(event, message=redact(event.message, url)))

    def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Patch the status only when it changed; returns the study as stored."""
        patch = merge_patch(body.get("status") or {}, status)
        if not patch:
            return body
        meta = body["metadata"]
        return self.cluster.patch_status(meta["namespace"], meta["name"], patch)

    def _invalid(self, body: dict[str, Any], exc: ValidationError) -> SyncResult:
        """A spec the models refuse (the CRD schema should have): Failed, no retry."""
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        message = redact(f"Invalid TuningStudy: {where}: {error['msg']}")
        generation = body["metadata"].get("generation")
        conditions = set_condition(
            [], ConditionType.FAILED, True, Reason.INVALID_SPEC, message, generation
        )
        status = {
            **(body.get("status") or {}),
            "phase": PhaseName.FAILED.value,
            "observedGeneration": generation,
            "conditions": [c.to_wire() for c in conditions],
        }
        self._record(body, Event("Warning", Reason.INVALID_SPEC, message))
        return SyncResult(self._write_status(body, status))

    def _ensure_finalizer(self, body: dict[str, Any], study: TuningStudy) -> dict[str, Any] | None:
        """Our finalizer is on the study exactly when deletionPolicy is Delete."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        wanted = study.spec.deletion_policy == DeletionPolicy.DELETE
        if (FINALIZER in finalizers) == wanted:
            return body
        new = [*finalizers, FINALIZER] if wanted else [f for f in finalizers if f != FINALIZER]
        return self.cluster.set_finalizers(
            meta["namespace"], meta["name"], new, meta["resourceVersion"]
        )

    def _scrub_legacy_copy(self, study: TuningStudy) -> None:
        """Operator 0.1.0 copied the admin URL into `<study>-storage`; empty that copy once
        per study and process, with the `patch` the operator already has (no `delete`;
        server-side apply cannot drop it: 0.1.0 wrote it as stringData). The empty Secret
        goes with its TuningStudy."""
        uid = study.metadata.uid or ""
        if uid in self._scrubbed:
            return
        namespace, name = study.metadata.namespace, f"{study.metadata.name}-storage"
        current = self.cluster.get("Secret", namespace, name)
        if current is not None and controller_uid(current) == uid and current.get("data"):
            self.cluster.merge_patch("Secret", namespace, name, {"data": None})
            log.info("Emptied Secret %s/%s of operator 0.1.0", namespace, name)
        self._scrubbed.add(uid)

    def _finalize(self, body: dict[str, Any], study: TuningStudy, failures: int) -> SyncResult:
        """Delete the Optuna study of a `deletionPolicy: Delete` study, then let it go."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return SyncResult(body)
        try:
            if self.reconciler.delete_study(study):
                message = f"Deleted Optuna study {study.study_name} (deletionPolicy Delete)"
                self._record(body, Event("Normal", Reason.STUDY_DELETED, message))
        except (StorageProblem, StorageError) as exc:
            if failures + 1 < DELETE_RETRIES:
                return SyncResult(body, retry=True, errors=["storage"])
            # Never hold a namespace hostage: give up and say the study was kept.
            reason = getattr(exc, "message", None) or str(exc)
            message = f"Could not delete Optuna study {study.study_name}: {reason}"
            self._record(body, Event("Warning", Reason.STUDY_RETAINED, message))
        rest = [f for f in finalizers if f != FINALIZER]
        stored = self.cluster.set_finalizers(
            meta["namespace"], meta["name"], rest, meta["resourceVersion"]
        )
        return SyncResult(stored)
