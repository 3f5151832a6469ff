"""Prometheus metrics: studies by phase, trials by state, reconcile duration and errors."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from optuna_operator import __version__
from optuna_operator.api import TuningStudy, TuningStudyStatus

__all__ = ["forget", "observe", "observe_reconcile", "serve"]

PHASES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed")
TRIAL_STATES = ("complete", "pruned", "failed", "running", "waiting")

STUDY_PHASE = Gauge(
    "optuna_operator_study_phase",
    "1 for the phase each TuningStudy is in",
    ["namespace", "name", "phase"],
)
STUDY_TRIALS = Gauge(
    "optuna_operator_study_trials",
    "Trials of each TuningStudy by state",
    ["namespace", "name", "state"],
)
RECONCILE_SECONDS = Histogram(
    "optuna_operator_reconcile_duration_seconds",
    "Time one reconcile of a TuningStudy took",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "optuna_operator_reconcile_errors_total",
    "Reconciles that ended in an error, by kind (api, storage)",
    ["kind"],
)
BUILD_INFO = Gauge(
    "optuna_operator_build_info",
    "Always 1; labels name the running operator version",
    ["version"],
)


def serve(port: int) -> None:
    """Serve /metrics on `port`."""
    BUILD_INFO.labels(__version__).set(1)
    start_http_server(port)


def observe(study: TuningStudy, status: TuningStudyStatus) -> None:
    """Record a study's phase and trial counts after a reconcile."""
    ns, name = study.metadata.namespace, study.metadata.name
    for phase in PHASES:
        STUDY_PHASE.labels(ns, name, phase).set(1 if status.phase == phase else 0)
    if status.trials is not None:
        for state in TRIAL_STATES:
            STUDY_TRIALS.labels(ns, name, state).set(getattr(status.trials, state))


def observe_reconcile(seconds: float, errors: list[str]) -> None:
    """Record one reconcile's duration and its errors."""
    RECONCILE_SECONDS.observe(seconds)
    for kind in errors:
        RECONCILE_ERRORS.labels(kind).inc()


def forget(namespace: str, name: str) -> None:
    """Remove the series of a deleted study, or they would be exported forever."""
    for phase in PHASES:
        _remove(STUDY_PHASE, namespace, name, phase)
    for state in TRIAL_STATES:
        _remove(STUDY_TRIALS, namespace, name, state)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
