"""The work queue of study keys, in the shape of controller-runtime's: a key is due at a
time, is handed to one reconcile at a time, and a tenant cannot take every thread."""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["Key", "WorkQueue"]

Key = tuple[str, str]  # namespace, name


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
