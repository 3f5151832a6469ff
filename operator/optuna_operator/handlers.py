"""The kopf layer: watch events in, nothing else. kopf watches TuningStudies, worker Jobs and
dashboard Deployments and hands every event to the Controller, which decides what to
reconcile and when (controller.py). Only `on.event` handlers are used: they need no
finalizer and write no bookkeeping annotations.

The Job and Deployment watches carry a label selector, so the API server sends only the
operator's children: kopf's `labels=` filter on a handler alone is applied on the client,
after every Job and Deployment of the cluster has been sent and decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from optuna_operator import metrics
from optuna_operator.api import GROUP, PLURAL, VERSION
from optuna_operator.apiserver import (
    ConfigError,
    ConnectionSettings,
    connect,
    load_settings,
    read_token,
)
from optuna_operator.children.manifests import MANAGED_BY
from optuna_operator.config import OperatorSettings
from optuna_operator.controller import Controller
from optuna_operator.kube import Cluster
from optuna_operator.reconcile import Reconciler
from optuna_operator.storage.notify import TrialListener
from optuna_operator.storage.study_store import StoreRegistry

__all__ = ["CHILD_SELECTOR", "build_registry", "connection_info"]

log = logging.getLogger(__name__)

RECONCILE_WORKERS = 8
# How long a clean stop waits for reconciles in flight (within the pod's 30 s grace period).
DRAIN_SECONDS = 15.0
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
# The children's watches, filtered by the API server (labelSelector on list and watch).
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
CHILD_RESOURCES = (("batch", "jobs"), ("apps", "deployments"))


def connection_info(settings: ConnectionSettings, trust_env: bool) -> kopf.ConnectionInfo:
    """kopf's credentials from the settings the operator's own calls use (apiserver.py),
    with the token as of now: kopf logs in again with this on a 401."""
    return kopf.ConnectionInfo(
        server=settings.server,
        ca_path=settings.ca_file,
        ca_data=settings.ca_data,
        insecure=settings.insecure or None,
        token=read_token(settings),
        certificate_path=settings.cert_file,
        certificate_data=settings.cert_data,
        private_key_path=settings.key_file,
        private_key_data=settings.key_data,
        default_namespace=settings.namespace,
        trust_env=trust_env,
    )


def _event_type(event: kopf.RawEvent) -> str | None:
    kind = event.get("type") if isinstance(event, dict) else None
    return str(kind) if kind else None


class Runtime:
    """What the operator opens at start-up and closes at clean-up."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.listener: TrialListener | None = None
        self.stores: StoreRegistry | None = None
        self.cluster: Cluster | None = None
        self.reconciler: Reconciler | None = None
        self.controller: Controller | None = None
        self.loop: asyncio.Task[None] | None = None

    def start(self) -> Controller:
        """Open the clients, start the reconcile loop and the metrics endpoint."""
        settings = self.settings
        self.listener = TrialListener(asyncio.get_running_loop(), self._trials_changed)
        self.stores = StoreRegistry(self.listener)
        self.cluster = Cluster(connect())
        self.reconciler = Reconciler(self.cluster, self.stores, settings)
        self.controller = Controller(self.reconciler, RECONCILE_WORKERS)
        self.loop = asyncio.create_task(self.controller.run(), name="reconcile loop")
        if settings.metrics_port:
            metrics.serve(settings.metrics_port)
        return self.controller

    async def close(self) -> None:
        """Stop the loop, let the reconciles in flight finish (a replica that then releases
        its Lease must not write after the next leader starts) and close what start opened."""
        if self.loop is not None:
            self.loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop
        if self.controller is not None:
            await self.controller.drain(DRAIN_SECONDS)
        if self.reconciler is not None:
            self.reconciler.close()
        if self.listener is not None:
            self.listener.close()
        if self.stores is not None:
            self.stores.close()
        if self.cluster is not None:
            self.cluster.close()

    def _trials_changed(self, study_name: str) -> None:
        if self.controller is not None:
            self.controller.wake(study_name)

    def on_event(self, kind: str, event: kopf.RawEvent) -> None:
        """Hand a watch event to the controller."""
        assert self.controller is not None, "events arrive only after start-up"
        body, event_type = dict(event["object"]), _event_type(event)
        if kind == "TuningStudy":
            self.controller.on_study(event_type, body)
        else:
            self.controller.on_child(kind, event_type, body)


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Handlers bound to one Controller, created at start-up and closed at clean-up."""
    registry = kopf.OperatorRegistry()
    runtime = Runtime(settings)

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        # A private registry does not get kopf's default login handlers; theirs would load
        # the official client, which the `run` process does not import (cli.py).
        try:
            return connection_info(load_settings(), settings.networking.trust_env)
        except ConfigError as exc:  # no retry mends a missing or unusable configuration
            raise kopf.PermanentError(str(exc)) from None

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Startup handlers run before any watch starts: the selectors apply from the first.
        settings.posting.level = logging.INFO
        for group, plural in CHILD_RESOURCES:
            settings.watching.label_selectors[group, plural] = CHILD_SELECTOR
        runtime.start()

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await runtime.close()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="study")
    async def study_event(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_event("TuningStudy", event)

    @kopf.on.event("batch", "v1", "jobs", registry=registry, id="worker-job", labels=MANAGED)
    async def job_event(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_event("Job", event)

    @kopf.on.event("apps", "v1", "deployments", registry=registry, id="dashboard", labels=MANAGED)
    async def dashboard_event(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_event("Deployment", event)

    return registry
