"""Which dashboard serves a study and what it is made of (pure; reconcile/dashboard.py sends it).

Dashboards are read-only and reachable only where the chart allows (a NetworkPolicy each):

- default storage: one dashboard per namespace (`optuna-dashboard`), on the namespace's
  read-only role, owned (non-controller owner references) by every study of the namespace
  that wants it, so garbage collection removes it with the last of them (the owners are
  reconcile/decide.py's to set);
- a study on its own storage (spec.storage): a dashboard of its own only when
  spec.dashboard.secretRef names a read-only URL; never on the read-write one.
"""

from __future__ import annotations

from typing import Any

from optuna_operator.api import TuningStudy
from optuna_operator.children import manifests
from optuna_operator.children.applied import with_hash

__all__ = ["desired_dashboard"]


def desired_dashboard(study: TuningStudy, ctx: manifests.ChildContext) -> list[dict[str, Any]]:
    """The objects of the dashboard that serves the study, each with its digest; empty when
    the study can have none. The namespace's dashboard (default storage) comes without
    owners, and so does its digest: the reconcile adds the studies that want it
    (reconcile/decide.py's `owned_dashboard`), and decides again, under the namespace's
    lock, from the dashboard as it is."""
    if study.spec.storage is None:
        objects = manifests.namespace_dashboard(study.metadata.namespace, ctx)
    elif study.spec.dashboard.enabled and study.spec.dashboard.secret_ref is not None:
        objects = manifests.study_dashboard(study, ctx)
    else:
        return []
    return [with_hash(obj) for obj in objects]
