"""Every child of a study as it should be, built in one pure call: observe hands the result
on, decide compares it with what exists, act sends it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna_operator.api import BestTrial, TuningStudy
from optuna_operator.children import manifests
from optuna_operator.children.applied import with_hash
from optuna_operator.children.dashboards import desired_dashboard

__all__ = ["Desired", "desired_children"]


@dataclass(frozen=True)
class Desired:
    """A study's children as they should be, each carrying its digest."""

    job: dict[str, Any] = field(default_factory=dict)  # the worker Job
    # Deployment, Service and NetworkPolicy of the dashboard that serves the study (the
    # namespace's without owners: reconcile/decide.py adds them); empty when it can have none.
    dashboard: list[dict[str, Any]] = field(default_factory=list)
    dashboard_name: str = ""  # of the dashboard that serves the study
    # The spec.export ConfigMap with the best trial; None without spec.export or a best trial.
    export: dict[str, Any] | None = None


def desired_children(
    study: TuningStudy, ctx: manifests.ChildContext, best: BestTrial | None
) -> Desired:
    """The worker Job, the dashboard that serves the study, and the export ConfigMap."""
    export = (
        manifests.export_config_map(study, best)
        if study.spec.export is not None and best is not None
        else None
    )
    return Desired(
        job=with_hash(manifests.worker_job(study, ctx)),
        dashboard=desired_dashboard(study, ctx),
        dashboard_name=manifests.dashboard_name(study),
        export=export,
    )
