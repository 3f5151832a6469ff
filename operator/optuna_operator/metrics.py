"""Prometheus metrics: studies by phase, trials by state, reconcile duration and errors.

Trials come twice: `optuna_operator_study_trials` is a gauge of how many trials are in each
state now (running and waiting go down as well as up), and
`optuna_operator_study_trials_finished_total` a counter of finished trials, the one to use with
rate() and increase(). The counter's value is the study's own count from its database, not a
sum of what this process saw, so an operator restart or a new replica taking over continues
it without a reset.

The per-study series come from one collector that keeps each study's phase and counts in a
tuple (StudySeries): a labelled Gauge keeps an object and a lock per series, 11 per study,
which was ~9 KiB of the operator's memory per study (issue 24: RSS at 1,000 studies).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from optuna_operator import __version__
from optuna_operator.api import TuningStudy, TuningStudyStatus

__all__ = ["forget", "observe_reconcile", "record_study", "serve"]

PHASES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed")
TRIAL_STATES = ("complete", "pruned", "failed", "running", "waiting")
# A trial in one of these states stays in it: their counts only grow.
FINISHED_STATES = ("complete", "pruned", "failed")

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


class StudySeries(Collector):
    """Each study's series, from its last observed phase and trial counts:
    optuna_operator_study_phase (1 for its phase, 0 for the others), optuna_operator_study_trials
    (trials in each state now) and optuna_operator_study_trials_finished_total (finished trials
    by state, exported as the count its database holds: a counter that never resets with the
    process)."""

    FINISHED = "optuna_operator_study_trials_finished"

    def __init__(self) -> None:
        # Handlers of different studies observe at the same time as a scrape reads.
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str | None] = {}
        self._trials: dict[tuple[str, str], tuple[int, ...]] = {}  # in TRIAL_STATES' order

    def record(
        self, namespace: str, name: str, phase: str | None, trials: tuple[int, ...] | None
    ) -> None:
        """Record a study's phase and, when known, its counts (unknown keeps the last)."""
        with self._lock:
            self._phases[(namespace, name)] = phase
            if trials is not None:
                self._trials[(namespace, name)] = trials

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._trials.pop((namespace, name), None)

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        phase, trials, finished = self._families()
        with self._lock:
            phases = sorted(self._phases.items())
            counts = sorted(self._trials.items())
        for (namespace, name), current in phases:
            for candidate in PHASES:
                phase.add_metric([namespace, name, candidate], 1 if current == candidate else 0)
        for (namespace, name), values in counts:
            by_state = dict(zip(TRIAL_STATES, values, strict=True))
            for state in TRIAL_STATES:
                trials.add_metric([namespace, name, state], by_state[state])
            for state in FINISHED_STATES:
                finished.add_metric([namespace, name, state], by_state[state])
        yield phase
        yield trials
        yield finished

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "optuna_operator_study_phase",
                "1 for the phase each TuningStudy is in",
                labels=["namespace", "name", "phase"],
            ),
            GaugeMetricFamily(
                "optuna_operator_study_trials",
                "Trials of each TuningStudy in each state now (a gauge: for rates use "
                "optuna_operator_study_trials_finished_total)",
                labels=["namespace", "name", "state"],
            ),
            CounterMetricFamily(
                self.FINISHED,
                "Finished trials of each TuningStudy by state (complete, pruned, failed)",
                labels=["namespace", "name", "state"],
            ),
        )


STUDY_SERIES = StudySeries()
REGISTRY.register(STUDY_SERIES)


def serve(port: int) -> None:
    """Serve /metrics on `port`."""
    BUILD_INFO.labels(__version__).set(1)
    start_http_server(port)


def record_study(study: TuningStudy, status: TuningStudyStatus) -> None:
    """Record a study's phase and trial counts after a reconcile."""
    trials = status.trials
    STUDY_SERIES.record(
        study.metadata.namespace,
        study.metadata.name,
        status.phase,
        tuple(getattr(trials, state) for state in TRIAL_STATES) if trials is not None else None,
    )


def observe_reconcile(seconds: float, errors: list[str]) -> None:
    """Record one reconcile's duration and its errors."""
    RECONCILE_SECONDS.observe(seconds)
    for kind in errors:
        RECONCILE_ERRORS.labels(kind).inc()


def forget(namespace: str, name: str) -> None:
    """Remove the series of a deleted study, or they would be exported forever."""
    STUDY_SERIES.forget(namespace, name)
