"""The latest TuningStudies, worker Jobs and dashboard Deployments from the watches, and
whether a watch event changed what a reconcile reads.

Our own status writes come back as watch events; queueing a study for each would reconcile
every study twice per refresh. So only a new object, a spec change, a deletion or a
finalizer change queues a study, and a child queues its study only when its progress
(counts, conditions, the applied hash) changed. Objects are kept without what no reconcile
reads (_slim), as compact JSON (_Kept). Changed only from the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from optuna_operator.children.manifests import NAMESPACE_DASHBOARD_LABEL
from optuna_operator.reconcile import Children
from optuna_operator.workqueue import Key

__all__ = ["WatchCache"]


def _newer(new: str | None, old: str | None) -> bool:
    """Whether resourceVersion `new` is at least as new as `old`. resourceVersions are
    opaque, but the API server's are etcd revisions; comparing them keeps a late watch
    event from overwriting the object a PATCH just returned."""
    if isinstance(new, str) and isinstance(old, str) and new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


def _child_progress(body: dict[str, Any]) -> tuple[Any, ...]:
    """What a reconcile reads of a Job or Deployment: a change of it queues the study."""
    meta, status = body["metadata"], body.get("status") or {}
    conditions = status.get("conditions") or []
    return (
        bool(meta.get("deletionTimestamp")),
        (meta.get("annotations") or {}).get("optuna-operator.io/applied-hash"),
        status.get("active"),
        status.get("ready"),
        status.get("succeeded"),
        status.get("failed"),
        status.get("availableReplicas"),
        tuple(sorted(c.get("type", "") for c in conditions if c.get("status") == "True")),
    )


def _slim(body: dict[str, Any]) -> dict[str, Any]:
    """The object as the cache keeps it: without managedFields (half of a study's bytes) and,
    for a child, without its pod template (most of a Job's), which no reconcile reads.
    At 1,000 studies (800 with a suspended Job) it keeps ~14 MiB instead of ~34."""
    slim = {**body, "metadata": {k: v for k, v in body["metadata"].items() if k != "managedFields"}}
    spec = body.get("spec")
    if body.get("kind") in ("Job", "Deployment") and isinstance(spec, dict):
        slim["spec"] = {k: v for k, v in spec.items() if k != "template"}
    return slim


K = TypeVar("K")


class _Kept(Mapping[K, dict[str, Any]], Generic[K]):
    """Objects by key, each kept as compact JSON beside its name and resourceVersion, and
    parsed when read. A parsed body takes about four times its JSON's bytes in Python dicts
    and strings (each body its own copy of every key): at 1,000 studies the parsed cache was
    ~20 KiB per study, most of the operator's growth per study; a reconcile parses only the
    few objects it reads."""

    def __init__(self) -> None:
        self._items: dict[K, tuple[str, str | None, bytes]] = {}

    def __getitem__(self, key: K) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self._items[key][2])
        return body

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def name(self, key: K) -> str | None:
        item = self._items.get(key)
        return item[0] if item is not None else None

    def keep(self, key: K, body: dict[str, Any]) -> None:
        """Keep `body` (slimmed) unless a newer version is already here."""
        meta = body["metadata"]
        current = self._items.get(key)
        if current is None or _newer(meta.get("resourceVersion"), current[1]):
            compact = json.dumps(_slim(body), separators=(",", ":")).encode()
            self._items[key] = (str(meta["name"]), meta.get("resourceVersion"), compact)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)


def _is_shared(meta: dict[str, Any]) -> bool:
    return (meta.get("labels") or {}).get(NAMESPACE_DASHBOARD_LABEL) == "true"


class WatchCache:
    """Studies and their children as last seen, keyed by study."""

    def __init__(self) -> None:
        self.studies: _Kept[Key] = _Kept()
        self.jobs: dict[Key, _Kept[str]] = {}  # by study, then by Job name
        self.dashboards: _Kept[Key] = _Kept()
        # namespace -> its dashboard Deployment (default storage), served to every study
        self.namespace_dashboards: _Kept[str] = _Kept()
        self._triggers: dict[Key, tuple[Any, ...]] = {}
        self._child_seen: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def put_study(self, body: dict[str, Any]) -> bool:
        """Keep a listed, added or modified study; True when it should be reconciled."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        self.keep_study(key, body)
        trigger = (
            meta.get("uid"),
            meta.get("generation"),
            bool(meta.get("deletionTimestamp")),
            tuple(meta.get("finalizers") or ()),
        )
        if self._triggers.get(key) == trigger:
            return False
        self._triggers[key] = trigger
        return True

    def keep_study(self, key: Key, body: dict[str, Any]) -> None:
        """Keep `body` unless a newer version of the study is already here."""
        self.studies.keep(key, body)

    def put_child(self, kind: str, event_type: str | None, body: dict[str, Any]) -> list[Key]:
        """Keep or drop a worker Job or dashboard Deployment; the studies to reconcile."""
        meta = body["metadata"]
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "TuningStudy"]
        if not owners:
            return []
        ns = meta["namespace"]
        # A namespace's dashboard is owned by every study it serves: each hears of it.
        keys = [(ns, o["name"]) for o in (owners if _is_shared(meta) else owners[:1])]
        child_key = (kind, ns, meta["name"])
        if event_type == "DELETED":
            self.drop_child(keys[0], kind, meta["name"])
            self._child_seen.pop(child_key, None)
            return keys
        self.keep_child(keys[0], body)
        seen = _child_progress(body)
        if self._child_seen.get(child_key) == seen:
            return []
        self._child_seen[child_key] = seen
        return keys

    def keep_child(self, key: Key, body: dict[str, Any]) -> None:
        """Keep a child of study `key` unless a newer version of it is already here."""
        meta = body["metadata"]
        if body.get("kind") == "Job":
            self.jobs.setdefault(key, _Kept()).keep(meta["name"], body)
        elif body.get("kind") != "Deployment":
            return
        elif _is_shared(meta):
            self.namespace_dashboards.keep(key[0], body)
        else:
            self.dashboards.keep(key, body)

    def drop_child(self, key: Key, kind: str, name: str) -> None:
        """Forget a child of study `key` that was deleted."""
        if kind == "Job":
            jobs = self.jobs.get(key)
            if jobs is not None:
                jobs.pop(name)
        elif kind == "Deployment" and self.namespace_dashboards.name(key[0]) == name:
            self.namespace_dashboards.pop(key[0])
        elif kind == "Deployment" and self.dashboards.name(key) == name:
            self.dashboards.pop(key)

    def children(self, key: Key) -> Children:
        """The children of study `key` as a reconcile reads them."""
        return Children(
            jobs=tuple((self.jobs.get(key) or {}).values()),
            dashboard=self.dashboards.get(key),
            namespace_dashboard=self.namespace_dashboards.get(key[0]),
        )

    def forget(self, key: Key) -> None:
        """Drop a deleted study and its own children."""
        self.studies.pop(key)
        self._triggers.pop(key, None)
        self.jobs.pop(key, None)
        self.dashboards.pop(key)
