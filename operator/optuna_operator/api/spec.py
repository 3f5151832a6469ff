"""TuningStudySpec, its smaller sections (budget, storage, dashboard, export, warm start) and
the rules across sections; and TuningStudy, the whole object as the API server returns it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import ConfigDict, Field

from optuna_operator.api.cel import cel, rules
from optuna_operator.api.constants import (
    API_VERSION,
    KIND,
    MAX_DIRECTIONS,
    MAX_GRID_VALUES_PER_PARAMETER,
    MAX_TIMEOUT_SECONDS,
)
from optuna_operator.api.objective import Objective
from optuna_operator.api.pruner import PrunerSpec
from optuna_operator.api.sampler import SamplerSpec
from optuna_operator.api.status import TuningStudyStatus
from optuna_operator.api.types import (
    Direction,
    ImageRef,
    MetricName,
    Model,
    ObjectName,
    Resources,
    Scalar,
    defaulted,
)
from optuna_operator.api.workers import DashboardPodTemplate, WorkersSpec

__all__ = [
    "COMMAND_SPACE_RULES",
    "Budget",
    "DashboardSpec",
    "DeletionPolicy",
    "ExportSpec",
    "Metadata",
    "SecretKeyRef",
    "StorageSpec",
    "TuningStudy",
    "TuningStudySpec",
    "WarmStartSpec",
]


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class Budget(Model):
    """When the study ends: whichever limit is reached first."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.trials) || has(self.timeoutSeconds) || has(self.deadline)",
                "budget: set trials, timeoutSeconds or deadline so the study ends",
            ),
        )
    )
    trials: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Finished (complete or pruned) trials across all workers.",
    )
    timeout_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Active time: seconds worker pods may run in all (at most ten years). "
        "The clock stops while the study is Suspended, Queued in Kueue or waiting for quota; "
        "status.activeSeconds shows it. Trials running when it ends finish.",
    )
    deadline: datetime | None = Field(
        None,
        description="Wall-clock end (RFC 3339, e.g. 2027-01-31T18:00:00Z): no trial starts "
        "after it, whatever the study's state.",
    )
    max_failed_trials: int = Field(
        20, ge=0, description="Mark the study Failed when more trials than this have failed."
    )
    goal: float | None = Field(
        None,
        description="Stop when the best value reaches this (single direction only).",
    )


class SecretKeyRef(Model):
    name: ObjectName = Field(description="Secret name.")
    key: str = Field(
        "url",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the Secret (letters, digits, '-', '_' and '.').",
    )


class StorageSpec(Model):
    """Where the Optuna study lives: a Secret holding a SQLAlchemy PostgreSQL URL."""

    secret_ref: SecretKeyRef = Field(
        description="Secret (in the study's namespace) whose key holds "
        "postgresql+psycopg2://user:password@host:5432/db."
    )


class DashboardSpec(Model):
    """optuna-dashboard, read-only. With the default storage, one dashboard per namespace
    (Deployment, Service and NetworkPolicy `optuna-dashboard`) lists that namespace's
    studies through its read-only role. A study on its own storage gets a dashboard of its
    own only with `secretRef`, a read-only credential: never with the read-write URL."""

    enabled: bool = Field(
        True,
        description="Serve this study in a dashboard: the namespace's (default storage) or, "
        "with spec.storage, a dashboard of its own when secretRef names a read-only URL.",
    )
    image: ImageRef | None = Field(
        None, description="optuna-dashboard image of a study's own dashboard (spec.storage)."
    )
    resources: Resources | None = Field(
        None, description="Container resources of a study's own dashboard (spec.storage)."
    )
    secret_ref: SecretKeyRef | None = Field(
        None,
        description="With spec.storage only: a Secret (in the study's namespace) whose key "
        "holds a URL of a read-only role of that database, for the study's own dashboard. "
        "Without it such a study gets no dashboard.",
    )
    pod_template: DashboardPodTemplate | None = Field(
        None,
        description="With spec.storage only: a strategic-merge overlay on the study's own "
        "dashboard pod, as workers.podTemplate is on the worker pod (sidecars, volumes, "
        "topology spread, DNS, labels, resources). The operator's own fields win; host "
        "namespaces, hostPath and privileged containers are refused. A namespace's shared "
        "dashboard takes the chart's dashboard.podTemplate instead.",
    )


class ExportSpec(Model):
    """Where the best trial is written for GitOps tools and training Jobs."""

    config_map_name: str = Field(
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="ConfigMap (in the study's namespace, created and owned by the operator) "
        "that receives the best trial's parameters, one key each, plus optuna_best_value, "
        "optuna_best_trial and optuna_study; updated whenever the best trial changes. Use it "
        "with envFrom, or let Argo CD/Flux read it.",
    )


class WarmStartSpec(Model):
    """Finished trials of another study, copied into this one before its workers start."""

    study_name: str = Field(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$",
        max_length=128,
        description="Optuna study name (status.studyName of another TuningStudy) in the same "
        "storage. Its COMPLETE trials are copied once, when this study is created; their "
        "parameter distributions must be compatible with this study's search space.",
    )
    max_trials: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Copy at most this many COMPLETE trials, the most recent ones.",
    )
    count_towards_budget: bool = Field(
        False,
        description="Whether copied trials count towards budget.trials. Default false: the "
        "budget is this study's own trials; status.trials.copied shows the copies.",
    )


_SPACE = "self.objective.searchSpace"
# grid.searchSpace itself cannot be named in CEL (its values mix types); grid holds nothing else.
_HAS_GRID = "has(self.sampler.grid)"

# What the worker would refuse at run time about a command objective's sampler, checked
# against the declared search space. (Rules over enqueueTrials and grid values live in the
# admission policy, admission.py: their values mix numbers, strings and booleans, a type the
# CRD's CEL cannot declare.)
COMMAND_SPACE_RULES = (
    cel(
        f"!(self.sampler.type in ['Grid', 'BruteForce']) || {_HAS_GRID} || !has({_SPACE}) "
        f"|| {_SPACE}.all(p, !has(p.float) || has(p.float.step))",
        "sampler.type Grid and BruteForce enumerate every value: give each float parameter "
        "a step (or list grid values in sampler.grid.searchSpace)",
    ),
    cel(
        f"!(self.sampler.type in ['Grid', 'BruteForce']) || {_HAS_GRID} || !has({_SPACE}) "
        f"|| {_SPACE}.all(p, (!has(p.int) || (p.int.high - p.int.low) / p.int.step "
        f"< {MAX_GRID_VALUES_PER_PARAMETER}) && (!has(p.float) || !has(p.float.step) "
        f"|| (p.float.high - p.float.low) / p.float.step < {MAX_GRID_VALUES_PER_PARAMETER}.0))",
        f"sampler.type Grid and BruteForce: a parameter has more than "
        f"{MAX_GRID_VALUES_PER_PARAMETER} values; raise its step",
    ),
    cel(
        f"self.sampler.type != 'CMAES' || !has({_SPACE}) "
        f"|| {_SPACE}.exists(p, has(p.float) || has(p.int))",
        "the CMAES sampler needs a float or int parameter: it samples categorical ones at "
        "random; use TPE",
    ),
)


class TuningStudySpec(Model):
    """Desired state of a hyperparameter study."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.metricNames) || size(self.metricNames) == size(self.directions)",
                "metricNames must have one name per direction",
            ),
            cel(
                "!has(self.metricNames) || "
                "self.metricNames.all(n, self.metricNames.exists_one(m, m == n))",
                "metricNames must be distinct: each names one objective value",
            ),
            cel(
                "!has(self.dashboard) || !has(self.dashboard.secretRef) || has(self.storage)",
                "dashboard.secretRef is for a study on its own storage (spec.storage); with "
                "the default storage the namespace's dashboard uses its read-only role",
            ),
            cel(
                "!has(self.dashboard) || !has(self.dashboard.podTemplate) || has(self.storage)",
                "dashboard.podTemplate is for a study's own dashboard (spec.storage); the "
                "namespace's dashboard serves all of its studies and takes the chart's "
                "dashboard.podTemplate",
            ),
            cel(
                "!has(self.budget.goal) || size(self.directions) == 1",
                "budget.goal works only with a single direction",
            ),
            cel(
                "!(self.sampler.type in ['NSGAII', 'NSGAIII']) || size(self.directions) >= 2",
                "NSGAII and NSGAIII samplers need two or more directions; use TPE for one",
            ),
            cel(
                "self.sampler.type != 'CMAES' || size(self.directions) == 1",
                "the CMAES sampler supports a single direction only",
            ),
            cel(
                "self.pruner.type == 'None' || size(self.directions) == 1",
                "pruning works only with a single direction; set pruner.type None",
            ),
            cel(
                "self.sampler.type != 'Grid' || has(self.sampler.grid) "
                "|| has(self.objective.command)",
                "sampler.type Grid with a function objective needs sampler.grid.searchSpace",
            ),
            cel(
                "has(self.studyName) == has(oldSelf.studyName)"
                " && (!has(self.studyName) || self.studyName == oldSelf.studyName)",
                "studyName cannot change: create a new TuningStudy for a new study",
            ),
            cel(
                "oldSelf.directions == self.directions",
                "directions cannot change: the Optuna study was created with them",
            ),
            cel(
                "!has(self.warmStart) || !has(self.studyName) "
                "|| self.warmStart.studyName != self.studyName",
                "warmStart.studyName must name another study, not this one",
            ),
            *COMMAND_SPACE_RULES,
        )
    )
    study_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$",
        max_length=128,
        description="Optuna study name; defaults to <namespace>.<name>. Reusing an existing "
        "name resumes that study.",
    )
    directions: list[Direction] = Field(
        min_length=1,
        max_length=MAX_DIRECTIONS,
        description="One direction per objective value: minimize or maximize.",
    )
    metric_names: list[MetricName] | None = Field(
        None,
        max_length=MAX_DIRECTIONS,
        description="Names of the objective values, one per direction (no control "
        "characters: names reach terminals, shells and dashboards).",
    )
    objective: Objective
    budget: Budget
    sampler: SamplerSpec = Field(
        default_factory=SamplerSpec, json_schema_extra=defaulted(SamplerSpec)
    )
    pruner: PrunerSpec = Field(default_factory=PrunerSpec, json_schema_extra=defaulted(PrunerSpec))
    enqueue_trials: list[dict[str, Scalar]] | None = Field(
        None,
        max_length=1000,
        description="Known good parameter sets, run first (warm start). Enqueued once, when "
        "the study is created.",
    )
    storage: StorageSpec | None = Field(
        None, description="Storage Secret; the operator's default storage when unset."
    )
    workers: WorkersSpec = Field(
        default_factory=WorkersSpec, json_schema_extra=defaulted(WorkersSpec)
    )
    dashboard: DashboardSpec = Field(
        default_factory=DashboardSpec, json_schema_extra=defaulted(DashboardSpec)
    )
    suspend: bool = Field(
        False, description="Stop the workers; set back to false to continue the study."
    )
    adopt_existing_study: bool = Field(
        False,
        description="Resume an Optuna study named studyName that exists but was not created "
        "by a TuningStudy (e.g. made with Optuna directly). A study of another TuningStudy "
        "is never taken over.",
    )
    deletion_policy: DeletionPolicy = Field(
        DeletionPolicy.RETAIN,
        description="Retain keeps the Optuna study when the TuningStudy is deleted; Delete "
        "removes it from the database.",
    )
    export: ExportSpec | None = Field(
        None, description="Write the best trial to a ConfigMap (opt-in)."
    )
    warm_start: WarmStartSpec | None = Field(
        None, description="Start from the finished trials of another study."
    )

    def effective_study_name(self, namespace: str, name: str) -> str:
        return self.study_name or f"{namespace}.{name}"


class Metadata(Model):
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None


class TuningStudy(Model):
    """A TuningStudy object as the API server returns it."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: Metadata
    spec: TuningStudySpec
    status: TuningStudyStatus = Field(default_factory=TuningStudyStatus)

    @property
    def study_name(self) -> str:
        return self.spec.effective_study_name(self.metadata.namespace, self.metadata.name)
