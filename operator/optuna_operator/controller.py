"""When a study is reconciled: a work queue fed by watch events, in the shape of
controller-runtime's.

kopf delivers watch events of TuningStudies, worker Jobs and dashboard Deployments; the
controller keeps the latest object of each in memory and queues a study when something that
matters changed (its spec or deletion, a child's progress). A study whose workers run is
queued again after the status interval; an idle study (Succeeded, Failed, Suspended) is not
looked at again until something changes, so it costs neither API requests nor queries.

No kopf timer or daemon is used: those put a finalizer on every object (kopf issue #1074).
The only finalizer is ours, on studies with `deletionPolicy: Delete`, where it protects the
Optuna study in the database.

One key is reconciled by one worker thread at a time (a key queued while it is being
reconciled runs again afterwards), so per-study state needs no further locking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from optuna_operator import metrics
from optuna_operator.api import DeletionPolicy, TuningStudy
from optuna_operator.conditions import ConditionType, Reason, set_condition
from optuna_operator.contract import redact
from optuna_operator.kube import Cluster
from optuna_operator.manifests import NAMESPACE_DASHBOARD_LABEL
from optuna_operator.reconcile import Children, Event, Reconciler, StorageProblem
from optuna_operator.storage.study_store import StorageError

__all__ = ["FINALIZER", "Controller", "PeeringGate", "WorkQueue", "merge_patch"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name

# Protects the Optuna study of a `deletionPolicy: Delete` TuningStudy until it is deleted.
FINALIZER = "optuna-operator.io/delete-study"
# A study that cannot be deleted from the database does not hold its namespace forever.
DELETE_RETRIES = 5
# Retries of a failing study back off to at most a minute: a fixed Secret or database is
# noticed within a minute though neither is watched.
MAX_BACKOFF_SECONDS = 60.0
# Identical events of one study are recorded once in this window; a new best trial at most
# once a minute (a fast study would otherwise post one per refresh).
EVENT_DEDUP_SECONDS = 600.0
EVENT_MIN_INTERVAL = {"NewBestTrial": 60.0}


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


def _newer(body: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether `body` is at least as new as `than`. resourceVersions are opaque, but the
    API server's are etcd revisions; comparing them keeps a late watch event from
    overwriting the object a PATCH just returned."""
    if than is None:
        return True
    new, old = body["metadata"].get("resourceVersion"), than["metadata"].get("resourceVersion")
    if isinstance(new, str) and isinstance(old, str) and new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


class WorkQueue:
    """Keys due at a time; a key handed out is not handed out again until `done`, and at most
    `per_namespace` keys of one namespace are out at once: a tenant whose storage hangs
    holds that many reconcile threads, never all of them."""

    def __init__(self, per_namespace: int | None = None) -> None:
        self._due: dict[Key, float] = {}
        self._processing: set[Key] = set()
        self._wakeup = asyncio.Event()
        self.per_namespace = per_namespace

    def _namespace_full(self, namespace: str) -> bool:
        if self.per_namespace is None:
            return False
        out = sum(1 for key in self._processing if key[0] == namespace)
        return out >= self.per_namespace

    def add(self, key: Key, delay: float = 0.0) -> None:
        """Queue `key` after `delay` seconds; an earlier due time already queued wins."""
        due = time.monotonic() + delay
        self._due[key] = min(due, self._due.get(key, due))
        self._wakeup.set()

    def forget(self, key: Key) -> None:
        """Drop a queued key (its object is gone)."""
        self._due.pop(key, None)

    def done(self, key: Key) -> None:
        """The key's reconcile ended; a re-queue that came meanwhile may now run."""
        self._processing.discard(key)
        self._wakeup.set()

    def __len__(self) -> int:
        return len(self._due)

    async def get(self) -> Key:
        """The next due key that is not being processed; waits until there is one."""
        while True:
            now = time.monotonic()
            waiting = [
                (due, key)
                for key, due in self._due.items()
                if key not in self._processing and not self._namespace_full(key[0])
            ]
            if waiting:
                due, key = min(waiting)
                if due <= now:
                    del self._due[key]
                    self._processing.add(key)
                    return key
            self._wakeup.clear()
            timeout = (min(waiting)[0] - now) if waiting else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)


class PeeringGate:
    """Whether another operator replica is in charge.

    kopf pauses its watches while a peer with a higher priority is alive, but the
    controller's own re-queues would go on; they check this gate. It reads kopf's peering
    object (status: `{identity: {priority, lastseen, lifetime}}`, kopf's documented format),
    at most once per `recheck` seconds per namespace.
    """

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        priority: int,
        clusterwide: bool,
        recheck: float = 5.0,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.priority = priority
        self.clusterwide = clusterwide
        self.recheck = recheck
        self._seen: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def paused(self, namespace: str) -> bool:
        """True while a live peer has a higher priority than this replica."""
        scope = "" if self.clusterwide else namespace
        with self._lock:
            cached = self._seen.get(scope)
            if cached is not None and time.monotonic() - cached[1] < self.recheck:
                return cached[0]
        path = (
            f"/apis/kopf.dev/v1/clusterkopfpeerings/{self.name}"
            if self.clusterwide
            else f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/{self.name}"
        )
        body = self.cluster.get_cluster_object(path) or {}
        now = datetime.now(UTC)
        paused = False
        for peer in (body.get("status") or {}).values():
            if not isinstance(peer, dict) or int(peer.get("priority", 0)) <= self.priority:
                continue
            try:
                lastseen = datetime.fromisoformat(str(peer["lastseen"]))
            except (KeyError, ValueError):
                continue
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=UTC)
            if (now - lastseen).total_seconds() < float(peer.get("lifetime", 60)):
                paused = True
        with self._lock:
            self._seen[scope] = (paused, time.monotonic())
        return paused


class EventRecorder:
    """Posts Events, dropping repeats: the same event of a study within EVENT_DEDUP_SECONDS,
    and rate-limited reasons more often than EVENT_MIN_INTERVAL."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._last: dict[tuple[str, str, str, str], float] = {}
        self._last_reason: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def record(self, body: dict[str, Any], event: Event) -> None:
        """Post `event` about `body` unless it repeats a recent one."""
        uid = str(body["metadata"].get("uid"))
        now = time.monotonic()
        key = (uid, event.type, event.reason, event.message)
        with self._lock:
            if now - self._last.get(key, -1e9) < EVENT_DEDUP_SECONDS:
                return
            interval = EVENT_MIN_INTERVAL.get(event.reason)
            if interval and now - self._last_reason.get((uid, event.reason), -1e9) < interval:
                return
            self._last[key] = now
            self._last_reason[(uid, event.reason)] = now
        meta = body["metadata"]
        log.info("%s %s/%s: %s", event.reason, meta["namespace"], meta["name"], event.message)
        try:
            self.cluster.post_event(body, event.type, event.reason, event.message)
        except ApiException as exc:  # events are best effort
            log.warning("Could not record event %s: %s", event.reason, exc.reason)

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted study."""
        with self._lock:
            for key in [k for k in self._last if k[0] == uid]:
                del self._last[key]
            for reason_key in [k for k in self._last_reason if k[0] == uid]:
                del self._last_reason[reason_key]


@dataclass
class SyncResult:
    """What a reconcile hands back to the event loop."""

    body: dict[str, Any] | None = None  # the study as last stored, None when gone
    applied: tuple[dict[str, Any], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()
    requeue_after: float | None = None
    retry: bool = False
    errors: list[str] = field(default_factory=list)


class Controller:
    """Watch caches, the work queue and the loop that reconciles queued studies."""

    def __init__(
        self,
        reconciler: Reconciler,
        interval: float,
        workers: int = 8,
        peering: PeeringGate | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.cluster = reconciler.cluster
        self.interval = interval
        self.peering = peering
        self.recorder = EventRecorder(self.cluster)
        # Half the threads at most for one namespace: the other tenants keep the rest.
        self.queue = WorkQueue(per_namespace=max(1, workers // 2))
        self.studies: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[Key, dict[str, dict[str, Any]]] = {}
        self.dashboards: dict[Key, dict[str, Any]] = {}
        # namespace -> its dashboard Deployment (default storage), served to every study
        self.namespace_dashboards: dict[str, dict[str, Any]] = {}
        self._triggers: dict[Key, tuple[Any, ...]] = {}
        self._child_seen: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._failures: dict[Key, int] = {}
        self._workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")

    # ------------------------------------------------------------------ watch events
    # Called from kopf's event loop; the caches are only changed there.

    def on_study(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A TuningStudy was listed, added, modified or deleted."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self._forget(key, body)
            return
        if _newer(body, self.studies.get(key)):
            self.studies[key] = body
        # Status writes (ours) change nothing here: only a new object, a spec change, a
        # deletion or a finalizer that does not match the deletion policy queue the study.
        trigger = (
            meta.get("uid"),
            meta.get("generation"),
            bool(meta.get("deletionTimestamp")),
            tuple(meta.get("finalizers") or ()),
        )
        if self._triggers.get(key) != trigger:
            self._triggers[key] = trigger
            self.queue.add(key)

    def on_child(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        """A worker Job or dashboard Deployment changed: queue its study when what the
        reconcile reads of it changed."""
        meta = body["metadata"]
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "TuningStudy"]
        if not owners:
            return
        ns = meta["namespace"]
        # A namespace's dashboard is owned by every study it serves: each hears of it.
        shared = (meta.get("labels") or {}).get(NAMESPACE_DASHBOARD_LABEL) == "true"
        keys = [(ns, o["name"]) for o in (owners if shared else owners[:1])]
        child_key = (kind, ns, meta["name"])
        if event_type == "DELETED":
            self._drop_child(keys[0], kind, meta["name"])
            self._child_seen.pop(child_key, None)
            for key in keys:
                self.queue.add(key)
            return
        self._store_child(keys[0], body)
        status = body.get("status") or {}
        seen = (
            bool(meta.get("deletionTimestamp")),
            (meta.get("annotations") or {}).get("optuna-operator.io/applied-hash"),
            status.get("active"),
            status.get("ready"),
            status.get("succeeded"),
            status.get("failed"),
            status.get("availableReplicas"),
            tuple(
                sorted(
                    c.get("type", "")
                    for c in status.get("conditions") or []
                    if c.get("status") == "True"
                )
            ),
        )
        if self._child_seen.get(child_key) != seen:
            self._child_seen[child_key] = seen
            for key in keys:
                self.queue.add(key)

    def _store_child(self, key: Key, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if body.get("kind") == "Job":
            jobs = self.jobs.setdefault(key, {})
            if _newer(body, jobs.get(meta["name"])):
                jobs[meta["name"]] = body
        elif body.get("kind") != "Deployment":
            return
        elif (meta.get("labels") or {}).get(NAMESPACE_DASHBOARD_LABEL) == "true":
            if _newer(body, self.namespace_dashboards.get(key[0])):
                self.namespace_dashboards[key[0]] = body
        elif _newer(body, self.dashboards.get(key)):
            self.dashboards[key] = body

    def _drop_child(self, key: Key, kind: str, name: str) -> None:
        shared = self.namespace_dashboards.get(key[0])
        if kind == "Job":
            self.jobs.get(key, {}).pop(name, None)
        elif kind == "Deployment" and shared is not None and shared["metadata"]["name"] == name:
            del self.namespace_dashboards[key[0]]
        elif kind == "Deployment":
            current = self.dashboards.get(key)
            if current is not None and current["metadata"]["name"] == name:
                del self.dashboards[key]

    def _forget(self, key: Key, body: dict[str, Any]) -> None:
        """Everything cached for a deleted study goes, metrics series included."""
        self.queue.forget(key)
        self.studies.pop(key, None)
        self._triggers.pop(key, None)
        self._failures.pop(key, None)
        self.jobs.pop(key, None)
        self.dashboards.pop(key, None)
        self.recorder.forget(str(body["metadata"].get("uid")))
        metrics.forget(*key)
        with contextlib.suppress(ValidationError):
            self.reconciler.forget(_parse(body))

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Reconcile queued studies, `workers` at a time, until cancelled."""
        slots = asyncio.Semaphore(self._workers)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                key = await self.queue.get()
                task = asyncio.create_task(self._process(key, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _process(self, key: Key, slots: asyncio.Semaphore) -> None:
        try:
            body = self.studies.get(key)
            if body is None:
                return
            children = Children(
                jobs=tuple(self.jobs.get(key, {}).values()),
                dashboard=self.dashboards.get(key),
                namespace_dashboard=self.namespace_dashboards.get(key[0]),
            )
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            result = await loop.run_in_executor(self._executor, self.sync, body, children)
            metrics.observe_reconcile(time.monotonic() - started, result.errors)
            self._absorb(key, result)
        except Exception:  # never let one study stop the loop
            log.exception("Reconcile of %s/%s failed", *key)
            self._requeue(key, None, retry=True)
        finally:
            self.queue.done(key)
            slots.release()

    def _absorb(self, key: Key, result: SyncResult) -> None:
        if result.body is None:
            return
        if _newer(result.body, self.studies.get(key)):
            self.studies[key] = result.body
        for obj in result.applied:
            self._store_child(key, obj)
        for kind, name in result.deleted:
            self._drop_child(key, kind, name)
        self._requeue(key, result.requeue_after, result.retry)

    def _requeue(self, key: Key, after: float | None, retry: bool) -> None:
        if retry:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            backoff = min(MAX_BACKOFF_SECONDS, 2.5 * 2**failures)
            after = backoff if after is None else min(after, backoff)
        else:
            self._failures.pop(key, None)
        if after is not None:
            self.queue.add(key, after)

    # ------------------------------------------------------------------ one reconcile
    # Runs in a worker thread; talks to the API server and the database.

    def sync(self, body: dict[str, Any], children: Children) -> SyncResult:
        """Reconcile one study: finalizer, children, status and events."""
        meta = body["metadata"]
        if self.peering is not None and self.peering.paused(meta["namespace"]):
            return SyncResult(body, requeue_after=self.interval)
        try:
            study = _parse(body)
        except ValidationError as exc:
            return self._invalid(body, exc)
        try:
            if meta.get("deletionTimestamp"):
                return self._finalize(body, study)
            current = self._ensure_finalizer(body, study)
            if current is None:
                return SyncResult(None)
            body = current
            outcome = self.reconciler.reconcile(study, children)
            # Events first: whoever sees a new phase or condition can already read the
            # event that explains it (a status written first leaves a window without one).
            for event in outcome.events:
                self.recorder.record(body, event)
            body = self._write_status(body, outcome.status.to_wire())
            metrics.observe(study, outcome.status)
            return SyncResult(
                body,
                applied=outcome.applied,
                deleted=outcome.deleted,
                requeue_after=outcome.requeue_after,
                retry=outcome.retry,
                errors=["storage"] if outcome.retry else [],
            )
        except ApiException as exc:
            log.warning(
                "Reconcile of %s/%s: API error %s %s",
                meta["namespace"],
                meta["name"],
                exc.status,
                exc.reason,
            )
            return SyncResult(body, retry=True, errors=["api"])

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
        message = f"Invalid TuningStudy: {where}: {error['msg']}"
        generation = body["metadata"].get("generation")
        conditions = set_condition(
            [], ConditionType.FAILED, True, Reason.INVALID_SPEC, message, generation
        )
        status = {
            **(body.get("status") or {}),
            "phase": "Failed",
            "observedGeneration": generation,
            "conditions": [c.to_wire() for c in conditions],
        }
        self.recorder.record(body, Event("Warning", Reason.INVALID_SPEC, message))
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

    def _finalize(self, body: dict[str, Any], study: TuningStudy) -> SyncResult:
        """Delete the Optuna study of a `deletionPolicy: Delete` study, then let it go."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return SyncResult(body)
        key = (meta["namespace"], meta["name"])
        try:
            if self.reconciler.delete_study(study):
                self.recorder.record(
                    body,
                    Event(
                        "Normal",
                        Reason.STUDY_DELETED,
                        f"Deleted Optuna study {study.study_name} (deletionPolicy Delete)",
                    ),
                )
        except (StorageProblem, StorageError) as exc:
            if self._failures.get(key, 0) + 1 < DELETE_RETRIES:
                return SyncResult(body, retry=True, errors=["storage"])
            # Never hold a namespace hostage: give up and say the study was kept.
            message = redact(getattr(exc, "message", None) or str(exc))
            self.recorder.record(
                body,
                Event(
                    "Warning",
                    Reason.STUDY_RETAINED,
                    f"Could not delete Optuna study {study.study_name}: {message}",
                ),
            )
        rest = [f for f in finalizers if f != FINALIZER]
        stored = self.cluster.set_finalizers(
            meta["namespace"], meta["name"], rest, meta["resourceVersion"]
        )
        return SyncResult(stored)


def _parse(body: dict[str, Any]) -> TuningStudy:
    return TuningStudy.model_validate(
        {
            "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
    )
