"""Which dashboard serves a study and what it should be (pure; reconcile/dashboard.py sends it).

Dashboards are read-only and reachable only where the chart allows (a NetworkPolicy each):

- default storage: one dashboard per namespace (`optuna-dashboard`), on the namespace's
  read-only role, owned (non-controller owner references) by every study of the namespace
  that wants it, so garbage collection removes it with the last of them;
- a study on its own storage (spec.storage): a dashboard of its own only when
  spec.dashboard.secretRef names a read-only URL; never on the read-write one.
"""

from __future__ import annotations

from typing import Any

from optuna_operator.api import KIND, TuningStudy
from optuna_operator.children import manifests
from optuna_operator.children.applied import with_hash

__all__ = ["desired_dashboard", "namespace_owners"]


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
