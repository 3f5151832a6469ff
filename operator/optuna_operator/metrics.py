"""Prometheus metrics: studies by phase, trials by state, reconcile duration and errors.

Trials come twice: `optuna_operator_study_trials` is a gauge of how many trials are in each
state now (running and waiting go down as well as up), and
`optuna_operator_study_trials_finished_total` a counter of finished trials, the one to use with
rate() and increase(). The counter's value is the study's own count from its database, not a
sum of what this process saw, so an operator restart or a new replica taking over continues
it without a reset.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from optuna_operator import __version__
from optuna_operator.api import TuningStudy, TuningStudyStatus

__all__ = ["forget", "observe", "observe_reconcile", "serve"]

PHASES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed")
TRIAL_STATES = ("complete", "pruned", "failed", "running", "waiting")
# A trial in one of these states stays in it: their counts only grow.
FINISHED_STATES = ("complete", "pruned", "failed")

STUDY_PHASE = Gauge(
    "optuna_operator_study_phase",
    "1 for the phase each TuningStudy is in",
    ["namespace", "name", "phase"],
)
STUDY_TRIALS = Gauge(
    "optuna_operator_study_trials",
    "Trials of each TuningStudy in each state now (a gauge: for rates use "
    "optuna_operator_study_trials_finished_total)",
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


class FinishedTrials(Collector):
    """optuna_operator_study_trials_finished_total: each study's finished trials by state,
    exported as the count its database holds (a counter that never resets with the process)."""

    NAME = "optuna_operator_study_trials_finished"

    def __init__(self) -> None:
        # Handlers of different studies observe at the same time as a scrape reads.
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}

    def set(self, namespace: str, name: str, state: str, count: int) -> None:
        with self._lock:
            self._counts[(namespace, name, state)] = count

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            for key in [k for k in self._counts if k[:2] == (namespace, name)]:
                del self._counts[key]

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        with self._lock:
            counts = sorted(self._counts.items())
        for labels, count in counts:
            family.add_metric(list(labels), count)
        yield family

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            self.NAME,
            "Finished trials of each TuningStudy by state (complete, pruned, failed)",
            labels=["namespace", "name", "state"],
        )


FINISHED_TRIALS = FinishedTrials()
REGISTRY.register(FINISHED_TRIALS)


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
        for state in FINISHED_STATES:
            FINISHED_TRIALS.set(ns, name, state, getattr(status.trials, state))


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
    FINISHED_TRIALS.forget(namespace, name)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
