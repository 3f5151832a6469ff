"""The kopf layer: watch events in, nothing else. kopf watches TuningStudies, worker Jobs and
dashboard Deployments and hands every event to the Controller, which decides what to
reconcile and when (controller.py). Only `on.event` handlers are used: they need no
finalizer and write no bookkeeping annotations."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from optuna_operator import metrics
from optuna_operator.api import GROUP, PLURAL, VERSION
from optuna_operator.config import OperatorSettings
from optuna_operator.controller import Controller
from optuna_operator.kube import Cluster
from optuna_operator.manifests import MANAGED_BY
from optuna_operator.peering import PeeringGate
from optuna_operator.reconcile import Reconciler
from optuna_operator.storage.study_store import StoreRegistry

__all__ = ["api_client", "build_registry"]

log = logging.getLogger(__name__)

RECONCILE_WORKERS = 8


def api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


def _event_type(event: kopf.RawEvent) -> str | None:
    kind = event.get("type") if isinstance(event, dict) else None
    return str(kind) if kind else None


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Handlers bound to one Controller, created at start-up and closed at clean-up."""
    registry = kopf.OperatorRegistry()
    operator_settings = settings  # the startup handler's own `settings` is kopf's
    state: dict[str, Any] = {}
    managed = {"app.kubernetes.io/managed-by": MANAGED_BY}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A private registry does not get kopf's default login handlers.
        info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
        return info

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO
        stores = StoreRegistry()
        cluster = Cluster(api_client())
        reconciler = Reconciler(cluster, stores, operator_settings)
        peering = (
            PeeringGate(
                cluster,
                operator_settings.peering,
                operator_settings.peering_priority,
                clusterwide=not operator_settings.namespaces,
            )
            if operator_settings.peering
            else None
        )
        controller = Controller(
            reconciler, operator_settings.status_interval, RECONCILE_WORKERS, peering
        )
        state.update(stores=stores, cluster=cluster, controller=controller, reconciler=reconciler)
        state["loop"] = asyncio.create_task(controller.run(), name="reconcile loop")
        if operator_settings.metrics_port:
            metrics.serve(operator_settings.metrics_port)

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        loop: asyncio.Task[None] | None = state.get("loop")
        if loop is not None:
            loop.cancel()
        reconciler: Reconciler | None = state.get("reconciler")
        if reconciler is not None:
            reconciler.close()
        stores: StoreRegistry | None = state.get("stores")
        if stores is not None:
            stores.close()
        cluster: Cluster | None = state.get("cluster")
        if cluster is not None:
            cluster.close()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="study")
    async def study_event(event: kopf.RawEvent, **_: Any) -> None:
        controller: Controller = state["controller"]
        controller.on_study(_event_type(event), dict(event["object"]))

    @kopf.on.event("batch", "v1", "jobs", registry=registry, id="worker-job", labels=managed)
    async def job_event(event: kopf.RawEvent, **_: Any) -> None:
        controller: Controller = state["controller"]
        controller.on_child("Job", _event_type(event), dict(event["object"]))

    @kopf.on.event("apps", "v1", "deployments", registry=registry, id="dashboard", labels=managed)
    async def dashboard_event(event: kopf.RawEvent, **_: Any) -> None:
        controller: Controller = state["controller"]
        controller.on_child("Deployment", _event_type(event), dict(event["object"]))

    return registry
