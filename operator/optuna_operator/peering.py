"""Whether another operator replica is in charge, read from kopf's peering objects."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from optuna_operator.kube import Cluster

__all__ = ["PeeringGate"]


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
        paused = any(self._outranks(peer) for peer in (body.get("status") or {}).values())
        with self._lock:
            self._seen[scope] = (paused, time.monotonic())
        return paused

    def _outranks(self, peer: object) -> bool:
        """Whether a peer's entry is alive and has a higher priority than this replica."""
        if not isinstance(peer, dict) or int(peer.get("priority", 0)) <= self.priority:
            return False
        try:
            lastseen = datetime.fromisoformat(str(peer["lastseen"]))
        except (KeyError, ValueError):
            return False
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - lastseen).total_seconds()
        return age < float(peer.get("lifetime", 60))
