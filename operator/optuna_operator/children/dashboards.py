"""Which dashboard serves a study, what it should be, and sending it.

Dashboards are read-only and reachable only where the chart allows (a NetworkPolicy each):

- default storage: one dashboard per namespace (`optuna-dashboard`), on the namespace's
  read-only role, owned (non-controller owner references) by every study of the namespace
  that wants it, so garbage collection removes it with the last of them;
- a study on its own storage (spec.storage): a dashboard of its own only when
  spec.dashboard.secretRef names a read-only URL; never on the read-write one.

The namespace dashboard is shared by concurrent reconciles of the namespace's studies: its
owner list is recomputed from a fresh read under a per-namespace lock before it is sent, so
two studies joining at once cannot drop each other.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from optuna_operator.api import KIND, TuningStudy
from optuna_operator.children import manifests
from optuna_operator.children.applied import ChildAction, child_action, conflict_message, with_hash
from optuna_operator.kube import Cluster

__all__ = [
    "KINDS",
    "DashboardConflict",
    "DashboardSender",
    "Sent",
    "desired_dashboard",
    "namespace_owners",
]

log = logging.getLogger(__name__)

# The dashboard's objects in the order they are sent (the Deployment first: its state is
# what the status reports) and deleted.
KINDS = ("Deployment", "Service", "NetworkPolicy")


class DashboardConflict(Exception):
    """An object with the dashboard's name exists and is not the operator's."""


def namespace_owners(current: dict[str, Any] | None, study: TuningStudy, wants: bool) -> list[Any]:
    """The namespace dashboard's owner references once `study` joined (wants) or left it:
    the others stay as they are (garbage collection drops those of deleted studies)."""
    uid = study.metadata.uid or ""
    refs = ((current or {}).get("metadata") or {}).get("ownerReferences") or []
    others = [
        manifests.study_owner_reference(str(r["uid"]), str(r["name"]))
        for r in refs
        if r.get("kind") == KIND and r.get("uid") != uid
    ]
    if wants:
        others.append(manifests.study_owner_reference(uid, study.metadata.name))
    return others


def desired_dashboard(
    study: TuningStudy, ctx: manifests.ChildContext, current: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The dashboard objects as they should be after this study's reconcile, each with its
    digest; empty when none should exist. `current` is the dashboard Deployment that serves
    the study (the namespace's with the default storage)."""
    if study.spec.storage is None:
        owners = namespace_owners(current, study, study.spec.dashboard.enabled)
        if not owners:
            return []
        objects = manifests.namespace_dashboard(study.metadata.namespace, owners, ctx)
    elif study.spec.dashboard.enabled and study.spec.dashboard.secret_ref is not None:
        objects = manifests.study_dashboard(study, ctx)
    else:
        return []
    return [with_hash(obj) for obj in objects]


@dataclass(frozen=True)
class Sent:
    """The dashboard Deployment after sending (None: deleted or none), and what changed."""

    deployment: dict[str, Any] | None
    created: bool = False
    applied: tuple[dict[str, Any], ...] = ()
    deleted: tuple[tuple[str, str], ...] = ()


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
        ctx: manifests.ChildContext,
        action: ChildAction,
        desired: list[dict[str, Any]],
        current: dict[str, Any] | None,
    ) -> Sent:
        """Carry out `action` on the dashboard `name`; raises DashboardConflict for an object
        of someone else's. The namespace's dashboard is read again, and what it should be
        decided again, under the namespace's lock."""
        if action == "none":
            return Sent(current)
        shared = study.spec.storage is None
        ns = study.metadata.namespace
        with self._namespace_lock(ns) if shared else nullcontext():
            if shared:
                current = self.cluster.get("Deployment", ns, manifests.NAMESPACE_DASHBOARD)
                desired = desired_dashboard(study, ctx, current)
                action = child_action(current, desired)
                if action == "none":
                    return Sent(current)
            return self._send(study, name, action, desired, current)

    def _send(
        self,
        study: TuningStudy,
        name: str,
        action: ChildAction,
        desired: list[dict[str, Any]],
        current: dict[str, Any] | None,
    ) -> Sent:
        ns = study.metadata.namespace
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
            raise DashboardConflict(conflict_message(kind, name, current))


def _is_ours(study: TuningStudy, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    if study.spec.storage is None:
        return (meta.get("labels") or {}).get(manifests.NAMESPACE_DASHBOARD_LABEL) == "true"
    return any(
        ref.get("controller") and ref.get("uid") == study.metadata.uid
        for ref in meta.get("ownerReferences") or []
    )
