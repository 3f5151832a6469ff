"""Part of step 4, act: sending a study's dashboard, the one child several studies share.

The namespace dashboard is shared by concurrent reconciles of the namespace's studies: its
owner list is recomputed from a fresh read under a per-namespace lock before it is sent, so
two studies joining at once cannot drop each other. What it is made of is
children/dashboards.py's, and who owns it decide.py's (`owned_dashboard`), both pure.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from typing import Any

from optuna_operator.api import TuningStudy
from optuna_operator.children import manifests
from optuna_operator.kube import Cluster
from optuna_operator.reconcile.decide import child_action, owned_dashboard
from optuna_operator.reconcile.model import ChildAction, ChildConflict, Sent, controller_uid

__all__ = ["KINDS", "DashboardSender"]

log = logging.getLogger(__name__)

# The dashboard's objects in the order they are sent (the Deployment first: its state is
# what the status reports) and deleted.
KINDS = ("Deployment", "Service", "NetworkPolicy")


class DashboardSender:
    """Applies and deletes dashboards; one namespace's dashboard is sent by one thread at a
    time (its owner list is read back fresh under that namespace's lock)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _namespace_lock(self, namespace: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(namespace, threading.Lock())

    def send(
        self,
        study: TuningStudy,
        name: str,
        action: ChildAction,
        objects: list[dict[str, Any]],
        current: dict[str, Any] | None,
    ) -> Sent:
        """Carry out `action` on the dashboard `name` made of `objects`; raises
        ChildConflict for an object of someone else's. The namespace's dashboard is read
        again, and its owners and the action decided again, under the namespace's lock."""
        if action == "none":
            return Sent(current)
        shared = study.spec.storage is None
        ns = study.metadata.namespace
        desired = objects  # a study's own dashboard; the namespace's is decided below
        with self._namespace_lock(ns) if shared else nullcontext():
            if shared:
                current = self.cluster.get("Deployment", ns, manifests.NAMESPACE_DASHBOARD)
                desired = owned_dashboard(study, objects, current)
                action = child_action(current, desired)
                if action == "none":
                    return Sent(current)
            for kind in KINDS:
                cached = current if kind == "Deployment" else None
                self._check_ours(study, kind, ns, name, cached)
            if action == "delete":
                for kind in KINDS:
                    self.cluster.delete(kind, ns, name)
                log.info("Deleted dashboard %s/%s", ns, name)
                return Sent(None, deleted=tuple((kind, name) for kind in KINDS))
            deployment, created = self.cluster.apply(desired[0])
            for obj in desired[1:]:
                self.cluster.apply(obj)
            return Sent(deployment, created, applied=(deployment,))

    def _check_ours(
        self, study: TuningStudy, kind: str, ns: str, name: str, cached: dict[str, Any] | None
    ) -> None:
        current = cached or self.cluster.get(kind, ns, name)
        if current is not None and not _is_ours(study, current):
            raise ChildConflict.about(kind, name, current)


def _is_ours(study: TuningStudy, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    if study.spec.storage is None:
        return (meta.get("labels") or {}).get(manifests.NAMESPACE_DASHBOARD_LABEL) == "true"
    return controller_uid(obj) == study.metadata.uid
