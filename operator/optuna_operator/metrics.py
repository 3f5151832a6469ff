"""Prometheus metrics: studies by phase and trials by state, from each study's status."""

from __future__ import annotations

from prometheus_client import Gauge, start_http_server

from optuna_operator.api import TuningStudy, TuningStudyStatus

__all__ = ["observe", "serve"]

PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
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


def serve(port: int) -> None:
    start_http_server(port)


def observe(study: TuningStudy, status: TuningStudyStatus) -> None:
    ns, name = study.metadata.namespace, study.metadata.name
    for phase in PHASES:
        STUDY_PHASE.labels(ns, name, phase).set(1 if status.phase == phase else 0)
    if status.trials is not None:
        for state in TRIAL_STATES:
            STUDY_TRIALS.labels(ns, name, state).set(getattr(status.trials, state))
