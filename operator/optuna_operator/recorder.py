"""Kubernetes Events about studies, without repeats: a study refreshed every few seconds
would otherwise post the same event on every refresh."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from optuna_operator.apiserver import ApiError
from optuna_operator.kube import Cluster
from optuna_operator.reconcile import Event

__all__ = ["EVENT_DEDUP_SECONDS", "EVENT_MIN_INTERVAL", "EventRecorder"]

log = logging.getLogger(__name__)

# Identical events of one study are recorded once in this window; a new best trial at most
# once a minute (a fast study would otherwise post one per refresh).
EVENT_DEDUP_SECONDS = 600.0
EVENT_MIN_INTERVAL = {"NewBestTrial": 60.0}


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
        except ApiError as exc:  # events are best effort
            log.warning("Could not record event %s: %s", event.reason, exc.reason)

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted study."""
        with self._lock:
            for key in [k for k in self._last if k[0] == uid]:
                del self._last[key]
            for reason_key in [k for k in self._last_reason if k[0] == uid]:
                del self._last_reason[reason_key]
