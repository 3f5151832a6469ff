"""Operator settings: flags with environment-variable fallbacks (OPTUNA_OPERATOR_*)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from optuna_operator import __version__
from optuna_operator.api.workers import DASHBOARD_OVERLAY, DashboardPodTemplate
from optuna_operator.children.overlay import refusals

__all__ = [
    "DEFAULT_DASHBOARD_IMAGE",
    "DEFAULT_WORKER_IMAGE",
    "NETWORK_POLICY_PEER_KEYS",
    "OPERATOR_VERSION",
    "LeaderElection",
    "OperatorSettings",
    "SecretKey",
    "add_run_arguments",
    "settings_from_args",
]

# One version source: the package (pyproject.toml), as the chart and the images.
OPERATOR_VERSION = __version__
DEFAULT_WORKER_IMAGE = f"ghcr.io/optuna-operator/worker:{OPERATOR_VERSION}"
DEFAULT_DASHBOARD_IMAGE = f"ghcr.io/optuna-operator/dashboard:{OPERATOR_VERSION}"
# The keys of a NetworkPolicyPeer (networking.k8s.io/v1).
NETWORK_POLICY_PEER_KEYS = frozenset({"namespaceSelector", "podSelector", "ipBlock"})


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
class LeaderElection:
    """The coordination.k8s.io Lease whose holder is the one replica that acts (leader.py),
    with client-go's timings: the holder renews every `retry_period` and exits when it could
    not renew for `renew_deadline`; a standby takes over once the Lease has not changed for
    `lease_duration` (seconds, by its own clock)."""

    name: str = "optuna-operator"
    namespace: str = "default"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @property
    def lease_seconds(self) -> int:
        """leaseDurationSeconds, a whole number of seconds in the Lease."""
        return max(1, math.ceil(self.lease_duration))


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs, from flags and OPTUNA_OPERATOR_* variables."""

    namespaces: tuple[str, ...] = ()
    operator_namespace: str = "default"
    default_storage: SecretKey | None = None
    worker_image: str = DEFAULT_WORKER_IMAGE
    dashboard_image: str = DEFAULT_DASHBOARD_IMAGE
    # NetworkPolicy `from` peers admitted to each dashboard's port; empty: nobody (the way in
    # is kubectl port-forward, which goes through the kubelet, not the pod network).
    dashboard_allowed_from: list[dict[str, Any]] = field(default_factory=list)
    # The chart's dashboard.podTemplate (on the wire), overlaid on every namespace's shared
    # dashboard; checked at start like a study's own dashboard.podTemplate at apply.
    dashboard_pod_template: dict[str, Any] | None = None
    status_interval: float = 10.0
    log_format: str = "text"
    # None: no election, this process acts at once (one replica, tests, development).
    leader_election: LeaderElection | None = LeaderElection()
    liveness_endpoint: str | None = None
    metrics_port: int | None = None
    # Kueue LocalQueue for studies that set no spec.workers.queueName; None: no queue.
    default_queue_name: str | None = None
    # `host:port` of a connection pooler (PgBouncer) the worker pods of default-storage
    # studies connect through; the operator and dashboards connect directly. None: direct.
    worker_pooler: str | None = None
    # Limits on each namespace's PostgreSQL roles (default storage).
    tenant_connection_limit: int = 200
    tenant_statement_timeout_ms: int = 60_000
    tenant_idle_in_transaction_timeout_ms: int = 60_000


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"OPTUNA_OPERATOR_{name}", default)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` command's flags; each defaults to its OPTUNA_OPERATOR_* variable (the chart
    sets those)."""
    _add_storage_arguments(parser)
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="Namespace to watch (repeatable; env OPTUNA_OPERATOR_NAMESPACES, comma-"
        "separated). All namespaces when unset.",
    )
    parser.add_argument("--worker-image", default=_env("WORKER_IMAGE", DEFAULT_WORKER_IMAGE))
    parser.add_argument(
        "--dashboard-image", default=_env("DASHBOARD_IMAGE", DEFAULT_DASHBOARD_IMAGE)
    )
    parser.add_argument(
        "--dashboard-allowed-from",
        default=_env("DASHBOARD_ALLOWED_FROM"),
        help="JSON list of NetworkPolicy peers (namespaceSelector, podSelector, ipBlock) "
        "allowed to reach each study's dashboard, e.g. "
        '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"ingress"}}}]. '
        "Empty or [] (default): nobody; use kubectl port-forward.",
    )
    parser.add_argument(
        "--dashboard-pod-template",
        default=_env("DASHBOARD_POD_TEMPLATE"),
        help="JSON podTemplate overlay (metadata, spec) on every namespace's shared dashboard "
        "pod, checked like a study's spec.dashboard.podTemplate: sidecars, volumes of the "
        "restricted kinds, topology spread, DNS, labels, the dashboard container's resources, "
        'e.g. {"spec":{"containers":[{"name":"dashboard","resources":{"limits":'
        '{"memory":"512Mi"}}}]}}. An overlay that would be refused stops the operator.',
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
    _add_leader_election_arguments(parser)
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


def _add_leader_election_arguments(parser: argparse.ArgumentParser) -> None:
    """kube-scheduler's flag names; durations as Go writes them (15s, 1500ms, 1m)."""
    parser.add_argument(
        "--leader-elect",
        type=_boolean,
        nargs="?",
        const=True,
        default=_env("LEADER_ELECT", "true"),
        help="Hold a coordination.k8s.io Lease in the operator's namespace (POD_NAMESPACE) "
        "before acting, so that of several replicas one acts (env OPTUNA_OPERATOR_LEADER_ELECT; "
        "default true). false: act at once.",
    )
    parser.add_argument(
        "--leader-elect-resource-name",
        default=_env("LEADER_ELECT_RESOURCE_NAME", "optuna-operator"),
        help="Name of the Lease.",
    )
    for flag, default, what in (
        (
            "lease-duration",
            "15s",
            "How long a standby waits after the Lease last changed before taking it over",
        ),
        (
            "renew-deadline",
            "10s",
            "How long the holder retries a failed renewal before it "
            "exits (non-zero) rather than risk a second leader",
        ),
        ("retry-period", "2s", "How often the holder renews and a standby looks"),
    ):
        variable = f"LEADER_ELECT_{flag.upper().replace('-', '_')}"
        parser.add_argument(
            f"--leader-elect-{flag}",
            default=_env(variable, default),
            help=f"{what} (env OPTUNA_OPERATOR_{variable}; default {default}).",
        )


def _boolean(value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _duration(flag: str, text: str) -> float:
    """Seconds from a Go-style duration (`15s`, `1500ms`, `1m`) or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", str(text))
    if match is None:
        raise SystemExit(f"{flag} must be a duration such as 15s, 1500ms or 1m, not {text!r}")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2) or "s"]
    return float(match.group(1)) * unit


def _leader_election(args: argparse.Namespace, namespace: str) -> LeaderElection | None:
    """client-go's rules: lease duration > renew deadline > 1.2 x retry period > 0."""
    if not args.leader_elect:
        return None
    election = LeaderElection(
        name=args.leader_elect_resource_name,
        namespace=namespace,
        lease_duration=_duration("--leader-elect-lease-duration", args.leader_elect_lease_duration),
        renew_deadline=_duration("--leader-elect-renew-deadline", args.leader_elect_renew_deadline),
        retry_period=_duration("--leader-elect-retry-period", args.leader_elect_retry_period),
    )
    if not election.name:
        raise SystemExit("--leader-elect-resource-name must not be empty")
    if election.retry_period <= 0:
        raise SystemExit("--leader-elect-retry-period must be positive")
    if election.renew_deadline <= 1.2 * election.retry_period:
        raise SystemExit(
            "--leader-elect-renew-deadline must be longer than 1.2 x --leader-elect-retry-period"
        )
    if election.lease_duration <= election.renew_deadline:
        raise SystemExit(
            "--leader-elect-lease-duration must be longer than --leader-elect-renew-deadline: "
            "the holder must give up before a standby may take over"
        )
    return election


def _add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """Where studies without spec.storage live, how their workers connect, and the limits
    of each namespace's PostgreSQL roles."""
    parser.add_argument(
        "--default-storage-secret",
        default=_env("DEFAULT_STORAGE_SECRET"),
        help="[namespace/]name[:key] of the Secret with the admin storage URL for studies "
        "without spec.storage: with it the operator sets up one PostgreSQL role and schema "
        "per namespace; the URL itself never leaves this Secret.",
    )
    parser.add_argument(
        "--worker-pooler",
        default=_env("WORKER_POOLER"),
        help="host:port of a connection pooler (PgBouncer, transaction mode) that worker pods "
        "of studies without spec.storage connect through, with their namespace's role "
        "(key pooled-url of the optuna-storage Secret). The operator connects directly.",
    )
    # Limits on each namespace's PostgreSQL roles (default storage): flag, variable, help.
    for flag, default, what in (
        ("connection-limit", 200, "CONNECTION LIMIT"),
        ("statement-timeout-ms", 60_000, "statement_timeout, in milliseconds,"),
        (
            "idle-in-transaction-timeout-ms",
            60_000,
            "idle_in_transaction_session_timeout, in milliseconds,",
        ),
    ):
        variable = f"TENANT_{flag.upper().replace('-', '_')}"
        parser.add_argument(
            f"--tenant-{flag}",
            type=int,
            default=int(_env(variable) or default),
            help=f"{what} of each namespace's PostgreSQL roles (env OPTUNA_OPERATOR_{variable}).",
        )


def _allowed_from(value: str | None) -> list[dict[str, Any]]:
    """NetworkPolicy peers from JSON: a list of objects, each with at least one of
    namespaceSelector, podSelector (objects) or ipBlock (an object with a cidr)."""
    if value is None or not value.strip():
        return []
    flag = "--dashboard-allowed-from"
    try:
        peers = json.loads(value)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{flag} must be a JSON list of NetworkPolicy peers: {exc}") from None
    if peers is None:
        return []
    if not isinstance(peers, list):
        raise SystemExit(f"{flag} must be a JSON list of NetworkPolicy peers, not {value!r}")
    for peer in peers:
        if not isinstance(peer, dict) or not peer or not set(peer) <= NETWORK_POLICY_PEER_KEYS:
            raise SystemExit(
                f"{flag}: each peer is an object with namespaceSelector, podSelector or "
                f"ipBlock, not {json.dumps(peer)}"
            )
        if not all(isinstance(v, dict) for v in peer.values()):
            raise SystemExit(f"{flag}: selectors and ipBlock are objects: {json.dumps(peer)}")
        if "ipBlock" in peer and not isinstance(peer["ipBlock"].get("cidr"), str):
            raise SystemExit(f"{flag}: ipBlock needs a cidr: {json.dumps(peer)}")
    return peers


def _dashboard_pod_template(value: str | None) -> dict[str, Any] | None:
    """The chart's dashboard.podTemplate from JSON, checked by the model a study's own
    dashboard.podTemplate has and by the rules the API server and the admission policy
    would apply to it; None when empty."""
    flag = "--dashboard-pod-template (the chart's dashboard.podTemplate)"
    if value is None or not value.strip():
        return None
    try:
        raw = json.loads(value)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{flag} must be a JSON object: {exc}") from None
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        raise SystemExit(f"{flag} must be a JSON object (metadata, spec), not {value!r}")
    try:
        overlay = DashboardPodTemplate.model_validate(raw).to_wire()
    except ValidationError as exc:
        problems = "; ".join(
            f"dashboard.podTemplate.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise SystemExit(f"{flag} is invalid: {problems}") from None
    refused = refusals(overlay, DASHBOARD_OVERLAY)
    if refused:
        raise SystemExit(f"{flag} is refused: " + "; ".join(refused))
    return overlay or None


def _pooler(value: str | None) -> str | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"--worker-pooler must be host:port, not {value!r}")
    return value


def _positive(flag: str, value: int) -> int:
    if value <= 0:
        raise SystemExit(f"{flag} must be a positive number, not {value}")
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
        dashboard_allowed_from=_allowed_from(args.dashboard_allowed_from),
        dashboard_pod_template=_dashboard_pod_template(args.dashboard_pod_template),
        status_interval=args.status_interval,
        log_format=args.log_format,
        leader_election=_leader_election(args, operator_namespace),
        liveness_endpoint=args.liveness,
        metrics_port=args.metrics_port,
        default_queue_name=args.default_queue_name or None,
        worker_pooler=_pooler(args.worker_pooler),
        tenant_connection_limit=_positive(
            "--tenant-connection-limit", args.tenant_connection_limit
        ),
        tenant_statement_timeout_ms=_positive(
            "--tenant-statement-timeout-ms", args.tenant_statement_timeout_ms
        ),
        tenant_idle_in_transaction_timeout_ms=_positive(
            "--tenant-idle-in-transaction-timeout-ms", args.tenant_idle_in_transaction_timeout_ms
        ),
    )
