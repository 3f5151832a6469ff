"""TuningStudyStatus: what the operator observes and writes back (conditions, trial counts,
the best trial and Pareto front), and how non-finite objective values travel as JSON.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_serializer,
    model_serializer,
)

from optuna_operator.api.constants import PARETO_FRONT_LIMIT
from optuna_operator.api.types import FreeObject, Model

__all__ = [
    "CONDITIONS_LIST",
    "BestTrial",
    "Condition",
    "DashboardStatus",
    "NonFinite",
    "ObjectiveValue",
    "PhaseName",
    "StopReason",
    "TrialCounts",
    "TuningStudyStatus",
    "WorkerCounts",
    "json_safe",
    "value_text",
]


class PhaseName(StrEnum):
    """The study's phases, spelled once; `reconcile/decide.py` picks one (`_phase`, then
    `settled_phase` after act), and lifecycle/stopping.py says which are final."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class StopReason(StrEnum):
    """Which budget ended the study (status.reason), and why a worker needs no more
    trials: the same words on both sides."""

    BUDGET = "TrialBudget"  # budget.trials finished
    TIME = "TimeBudget"  # budget.timeoutSeconds of active time used
    DEADLINE = "Deadline"  # budget.deadline passed
    GOAL = "Goal"  # budget.goal reached
    FAILURES = "FailureBudget"  # more than budget.maxFailedTrials failed


class Condition(Model):
    """One aspect of the study's state, shaped like metav1.Condition."""

    type: str = Field(
        description="StorageReady, WorkersReady, WorkersAdmitted (Kueue), DashboardAvailable, "
        "Suspended, Succeeded, Failed or BudgetAdvice (True: the budget cannot work as meant)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Why, as a CamelCase word (e.g. TrialBudgetReached).")
    message: str = Field("", description="Why, as a sentence a user can act on.")
    observed_generation: int | None = Field(
        None, description="metadata.generation of the spec this condition was derived from."
    )
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339); not touched when only the reason "
        "or message changes."
    )


class TrialCounts(Model):
    """Trials in the Optuna study by state, counted over the study's whole history."""

    complete: int = Field(0, description="Trials that finished with a value.")
    pruned: int = Field(
        0, description="Trials stopped early by the pruner; they count toward the trial budget."
    )
    failed: int = Field(0, description="Trials that raised or whose worker died.")
    running: int = Field(0, description="Trials running now.")
    waiting: int = Field(0, description="Enqueued trials no worker has taken yet.")
    budget: int | None = Field(None, description="spec.budget.trials, when set.")
    copied: int | None = Field(
        None,
        description="Complete trials spec.warmStart copied in (counted in complete); they "
        "count towards the budget only with warmStart.countTowardsBudget.",
    )


# JSON has no Infinity or NaN: a status patch holding one is not JSON, the API server refuses
# it, and every later status write with it. An objective may well return inf (Optuna keeps it
# as COMPLETE), so such values travel as these strings, which float() and JavaScript's
# Number() read back.
NonFinite = Literal["Infinity", "-Infinity", "NaN"]


def _non_finite_name(value: float) -> NonFinite:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def json_safe(node: Any) -> Any:
    """The same data with every non-finite float replaced by its NonFinite name."""
    if isinstance(node, float) and not math.isfinite(node):
        return _non_finite_name(node)
    if isinstance(node, dict):
        return {key: json_safe(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [json_safe(value) for value in node]
    return node


def value_text(value: float) -> str:
    """An objective value as kubectl shows it: repr of the float, or Infinity/-Infinity/NaN."""
    return repr(value) if math.isfinite(value) else _non_finite_name(value)


# A float in Python (the strings parse back to one); a JSON-safe value on the wire.
ObjectiveValue = Annotated[
    float,
    PlainSerializer(json_safe, return_type=float | str),
    # Structural schemas have no number-or-string type; like Scalar, the item is left open.
    WithJsonSchema(
        {
            "x-kubernetes-preserve-unknown-fields": True,
            "description": "A number, or the string Infinity, -Infinity or NaN.",
        }
    ),
]


class BestTrial(Model):
    """One finished trial: its number, objective values and parameters."""

    number: int = Field(description="Optuna trial number, unique within the study.")
    values: list[ObjectiveValue] = Field(
        description="Objective values, one per spec.directions entry; a non-finite value as "
        "the string Infinity, -Infinity or NaN."
    )
    params: FreeObject = Field(
        default_factory=dict, description="Parameter values the trial used, by name."
    )


class WorkerCounts(Model):
    """Pods of the current worker Job."""

    active: int = Field(0, description="Worker pods running now.")
    succeeded: int = Field(0, description="Worker pods that finished.")
    failed: int = Field(0, description="Worker pods that failed (each retried by the Job).")


class DashboardStatus(Model):
    """Where optuna-dashboard serves this study (spec.dashboard.enabled)."""

    service: str | None = Field(None, description="Name of the dashboard's Service.")
    url: str | None = Field(
        None,
        description="In-cluster URL of the dashboard; from outside, `kubectl port-forward "
        "svc/<service> 8080`.",
    )


# Conditions are keyed by type: server-side apply and strategic merges then treat each type as
# one entry instead of replacing the whole list (metav1.Condition's listType=map).
CONDITIONS_LIST: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class TuningStudyStatus(Model):
    """Observed state, written only by the operator; small and rebuilt from the database."""

    observed_generation: int | None = Field(
        None, description="metadata.generation of the spec this status describes."
    )
    phase: PhaseName | None = Field(
        None,
        description="Summary: Pending (no workers yet), Queued (the worker Job waits for "
        "admission by Kueue), Running, Suspended (spec.suspend), "
        "Succeeded (a budget or the goal was reached) or Failed (see the Failed condition).",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations, one per type; each has a reason and a message.",
        json_schema_extra=CONDITIONS_LIST,
    )
    study_name: str | None = Field(None, description="The Optuna study's name in the storage.")
    optuna_version: str | None = Field(None, description="Optuna version of the operator.")
    operator_version: str | None = Field(None, description="Version of the operator.")
    progress: str | None = Field(None, description="Finished trials / budget, for kubectl get.")
    trials: TrialCounts | None = Field(None, description="Trials by state.")
    best_trial: BestTrial | None = Field(
        None,
        description="Best trial so far; with several directions, one trial of paretoFront.",
    )
    best_value: str | None = Field(
        None,
        description="The best trial's first value as text, for kubectl get (Infinity when "
        "infinite); written with bestTrial.",
    )
    pareto_front: list[BestTrial] | None = Field(
        None,
        max_length=PARETO_FRONT_LIMIT,
        description=f"Multi-objective studies: trials on the Pareto front, at most "
        f"{PARETO_FRONT_LIMIT}; the dashboard shows all of them.",
    )
    param_importances: dict[str, float] | None = Field(
        None,
        description="Parameter importances (Optuna's default evaluator, fANOVA), computed "
        "when the study finished (single-objective studies).",
    )
    param_importances_trials: int | None = Field(
        None,
        ge=0,
        description="Finished trials paramImportances were computed over: a study that "
        "continues with a larger budget gets them again when it finishes.",
    )
    workers: WorkerCounts | None = Field(None, description="Pods of the current worker Job.")
    dashboard: DashboardStatus | None = Field(None, description="Where the dashboard is served.")
    reason: StopReason | None = Field(
        None,
        description="Which budget ended the study: TrialBudget, TimeBudget (active time), "
        "Deadline (wall clock), Goal or FailureBudget.",
    )
    active_seconds: int | None = Field(
        None,
        ge=0,
        description="Seconds worker pods have run (not counting Suspended, Queued or waiting "
        "for quota), up to activeSince: what budget.timeoutSeconds is counted against.",
    )
    active_since: datetime | None = Field(
        None, description="When the running workers started; absent while none run."
    )
    start_time: datetime | None = Field(None, description="When the study started.")
    completion_time: datetime | None = Field(
        None, description="When the study reached Succeeded or Failed."
    )

    @field_serializer("param_importances")
    def _finite_importances(self, value: dict[str, float] | None) -> dict[str, float] | None:
        # An importance that is not a number (a constant objective) says nothing; it is left
        # out rather than written as a string the schema's number type would refuse.
        if value is None:
            return None
        return {name: v for name, v in value.items() if math.isfinite(v)}

    @model_serializer(mode="wrap")
    def _json_safe(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.best_trial is not None and self.best_trial.values:
            data["bestValue" if info.by_alias else "best_value"] = value_text(
                self.best_trial.values[0]
            )
        # Whatever else holds a float (free-form params) must not break the patch either.
        return json_safe(data)  # type: ignore[no-any-return]
