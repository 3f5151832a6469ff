"""Operator settings: flags with environment-variable fallbacks (OPTUNA_OPERATOR_*)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

__all__ = [
    "DEFAULT_DASHBOARD_IMAGE",
    "DEFAULT_WORKER_IMAGE",
    "OperatorSettings",
    "SecretKey",
    "add_run_arguments",
    "settings_from_args",
]

OPERATOR_VERSION = "0.1.0"
DEFAULT_WORKER_IMAGE = f"ghcr.io/optuna-operator/worker:{OPERATOR_VERSION}"
DEFAULT_DASHBOARD_IMAGE = "ghcr.io/optuna/optuna-dashboard:v0.21.0"


@dataclass(frozen=True)
class SecretKey:
    namespace: str
    name: str
    key: str

    @classmethod
    def parse(cls, text: str, default_namespace: str) -> SecretKey:
        """`[namespace/]name[:key]`, key defaulting to `url`."""
        ref, _, key = text.partition(":")
        namespace, _, name = ref.rpartition("/")
        return cls(namespace or default_namespace, name, key or "url")


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs, from flags and OPTUNA_OPERATOR_* variables."""

    namespaces: tuple[str, ...] = ()
    operator_namespace: str = "default"
    default_storage: SecretKey | None = None
    worker_image: str = DEFAULT_WORKER_IMAGE
    dashboard_image: str = DEFAULT_DASHBOARD_IMAGE
    status_interval: float = 10.0
    log_format: str = "text"
    peering: str | None = "optuna-operator"
    # This replica's kopf peering priority; the highest live one acts.
    peering_priority: int = 0
    liveness_endpoint: str | None = None
    metrics_port: int | None = None
    # Kueue LocalQueue for studies that set no spec.workers.queueName; None: no queue.
    default_queue_name: str | None = None
    # `host:port` of a connection pooler (PgBouncer) the worker pods of default-storage
    # studies connect through; the operator and dashboards connect directly. None: direct.
    worker_pooler: str | None = None


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"OPTUNA_OPERATOR_{name}", default)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="Namespace to watch (repeatable; env OPTUNA_OPERATOR_NAMESPACES, comma-"
        "separated). All namespaces when unset.",
    )
    parser.add_argument(
        "--default-storage-secret",
        default=_env("DEFAULT_STORAGE_SECRET"),
        help="[namespace/]name[:key] of the Secret with the default storage URL, used by "
        "studies without spec.storage; copied into the study's namespace for its pods.",
    )
    parser.add_argument("--worker-image", default=_env("WORKER_IMAGE", DEFAULT_WORKER_IMAGE))
    parser.add_argument(
        "--dashboard-image", default=_env("DASHBOARD_IMAGE", DEFAULT_DASHBOARD_IMAGE)
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=float(_env("STATUS_INTERVAL", "10") or 10),
        help="Seconds between status refreshes of each study.",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], default=_env("LOG_FORMAT", "text")
    )
    parser.add_argument(
        "--peering",
        default=_env("PEERING", "optuna-operator"),
        help="kopf peering name so only one replica acts; 'none' runs standalone.",
    )
    parser.add_argument(
        "--liveness",
        default=_env("LIVENESS"),
        help="Health endpoint, e.g. http://0.0.0.0:8080/healthz.",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "0") or 0) or None,
        help="Serve Prometheus metrics on this port.",
    )
    parser.add_argument(
        "--default-queue-name",
        default=_env("DEFAULT_QUEUE_NAME"),
        help="Kueue LocalQueue name for worker Jobs of studies without "
        "spec.workers.queueName (the LocalQueue must exist in each study's namespace).",
    )
    parser.add_argument(
        "--worker-pooler",
        default=_env("WORKER_POOLER"),
        help="host:port of a connection pooler (PgBouncer, transaction mode) that worker pods "
        "of studies without spec.storage connect through, with their namespace's role "
        "(key pooled-url of the optuna-storage Secret). The operator connects directly.",
    )


def _pooler(value: str | None) -> str | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"--worker-pooler must be host:port, not {value!r}")
    return value


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    operator_namespace = os.environ.get("POD_NAMESPACE") or _env("NAMESPACE") or "default"
    namespaces = tuple(args.namespace or [n for n in (_env("NAMESPACES") or "").split(",") if n])
    storage = (
        SecretKey.parse(args.default_storage_secret, operator_namespace)
        if args.default_storage_secret
        else None
    )
    return OperatorSettings(
        namespaces=namespaces,
        operator_namespace=operator_namespace,
        default_storage=storage,
        worker_image=args.worker_image,
        dashboard_image=args.dashboard_image,
        status_interval=args.status_interval,
        log_format=args.log_format,
        peering=None if args.peering in (None, "", "none") else args.peering,
        liveness_endpoint=args.liveness,
        metrics_port=args.metrics_port,
        default_queue_name=args.default_queue_name or None,
        worker_pooler=_pooler(args.worker_pooler),
    )
