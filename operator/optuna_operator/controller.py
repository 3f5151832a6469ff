"""When a study is reconciled: a work queue fed by watch events, in the shape of
controller-runtime's.

kopf delivers watch events of TuningStudies, worker Jobs and dashboard Deployments; the
controller keeps the latest object of each in memory (watchcache.py) and queues a study when
something that matters changed (its spec or deletion, a child's progress). A study whose
workers run is queued again after the status interval; an idle study (Succeeded, Failed,
Suspended) is not looked at again until something changes, so it costs neither API
requests nor queries.

No kopf timer or daemon is used: those put a finalizer on every object (kopf issue #1074).
One reconcile (sync.py) runs in a worker thread; one key is reconciled by one thread at a
time (a key queued while it is being reconciled runs again afterwards), so per-study state
needs no further locking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from optuna_operator import metrics
from optuna_operator.reconcile import Reconciler
from optuna_operator.recorder import EventRecorder
from optuna_operator.sync import StudySync, SyncResult, parse_study
from optuna_operator.watchcache import WatchCache
from optuna_operator.workqueue import Key, WorkQueue

__all__ = ["Controller"]

log = logging.getLogger(__name__)

# Retries of a failing study back off to at most a minute: a fixed Secret or database is
# noticed within a minute though neither is watched.
MAX_BACKOFF_SECONDS = 60.0
# A study woken by trial changes is reconciled at most this often: a study finishing many
# trials a second costs one refresh a second, not one per trial.
WAKE_MIN_SECONDS = 1.0


class Controller:
    """Watch caches, the work queue and the loop that reconciles queued studies."""

    def __init__(self, reconciler: Reconciler, workers: int = 8) -> None:
        self.reconciler = reconciler
        self.recorder = EventRecorder(reconciler.cluster)
        self.syncer = StudySync(reconciler, self.recorder)
        self.cache = WatchCache()
        # Half the threads at most for one namespace: the other tenants keep the rest.
        self.queue = WorkQueue(per_namespace=max(1, workers // 2))
        self._failures: dict[Key, int] = {}
        # Optuna study name <-> the studies reconciled under it, for wake(); and when each
        # study's last reconcile started.
        self._by_name: dict[str, set[Key]] = {}
        self._name_of: dict[Key, str] = {}
        self._started: dict[Key, float] = {}
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
        elif self.cache.put_study(body):
            self.queue.add(key)

    def on_child(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        """A worker Job or dashboard Deployment changed: queue its study when what the
        reconcile reads of it changed."""
        for key in self.cache.put_child(kind, event_type, body):
            self.queue.add(key)

    def wake(self, study_name: str) -> None:
        """Trials of the Optuna study `study_name` changed (storage/notify.py): reconcile
        the studies that run it, at most once per WAKE_MIN_SECONDS each."""
        now = time.monotonic()
        for key in self._by_name.get(study_name, ()):
            since = now - self._started.get(key, -WAKE_MIN_SECONDS)
            self.queue.add(key, max(0.0, WAKE_MIN_SECONDS - since))

    def _remember_name(self, key: Key, study_name: str | None) -> None:
        old = self._name_of.pop(key, None)
        if old is not None:
            self._by_name[old].discard(key)
            if not self._by_name[old]:
                del self._by_name[old]
        if study_name is not None:
            self._name_of[key] = study_name
            self._by_name.setdefault(study_name, set()).add(key)

    def _forget(self, key: Key, body: dict[str, Any]) -> None:
        """Everything cached for a deleted study goes, metrics series included."""
        self.queue.forget(key)
        self.cache.forget(key)
        self._failures.pop(key, None)
        self._started.pop(key, None)
        self._remember_name(key, None)
        self.recorder.forget(str(body["metadata"].get("uid")))
        self.syncer.forget(str(body["metadata"].get("uid")))
        metrics.forget(*key)
        with contextlib.suppress(ValidationError):
            self.reconciler.forget(parse_study(body))

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

    async def drain(self, timeout: float) -> None:
        """After `run` was cancelled: wait up to `timeout` seconds for the reconciles still
        running in their threads."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._executor.shutdown, wait=True), timeout)

    async def _process(self, key: Key, slots: asyncio.Semaphore) -> None:
        try:
            body = self.cache.studies.get(key)
            if body is None:
                return
            loop = asyncio.get_running_loop()
            started = self._started[key] = time.monotonic()
            result = await loop.run_in_executor(
                self._executor,
                self.syncer.sync,
                body,
                self.cache.children(key),
                self._failures.get(key, 0),
            )
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
        if result.study_name is not None:
            self._remember_name(key, result.study_name)
        self.cache.keep_study(key, result.body)
        for obj in result.applied:
            self.cache.keep_child(key, obj)
        for kind, name in result.deleted:
            self.cache.drop_child(key, kind, name)
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
