"""Typed models of the TuningStudy API (v1alpha1): the single source of the CRD schema.

Field descriptions become `kubectl explain` text; `x-kubernetes-validations` (CEL) rules live
next to the fields they check, so `make crds` can generate the whole schema from here.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_serializer,
    model_serializer,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "WORKER_ENV_NAMES",
    "WORKER_MOUNT_PATHS",
    "WORKER_VOLUME_NAMES",
    "BestTrial",
    "Budget",
    "CategoricalRange",
    "Condition",
    "DashboardSpec",
    "DeletionPolicy",
    "Direction",
    "FloatRange",
    "IntRange",
    "Objective",
    "Parameter",
    "ParameterCondition",
    "PrunerSpec",
    "PrunerType",
    "SamplerSpec",
    "SamplerType",
    "StorageSpec",
    "TrialCounts",
    "TuningStudy",
    "TuningStudySpec",
    "TuningStudyStatus",
    "WorkerConfig",
    "WorkersSpec",
    "json_safe",
    "value_text",
]

GROUP = "tuning.optuna-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TuningStudy"
PLURAL = "tuningstudies"

# Lists get bounds so the API server can estimate the cost of CEL rules over them.
MAX_PARAMETERS = 32
MAX_CHOICES = 64
MAX_DIRECTIONS = 8
PARETO_FRONT_LIMIT = 10
# "<name>-workers-<hash8>" must fit the 63-character label value limit.
MAX_NAME_LENGTH = 45
# What the operator gives every worker pod (manifests.py); a study cannot take these names,
# and an env entry of the same name would silently override the operator's.
WORKER_VOLUME_NAMES = ("optuna-tmp", "optuna-shm")
WORKER_MOUNT_PATHS = ("/tmp", "/dev/shm")
WORKER_ENV_NAMES = (
    "OPTUNA_OPERATOR_WORKER_CONFIG",
    "OPTUNA_STORAGE_URL",
    "OPTUNA_OPERATOR_WORKER_INDEX",
    "POD_NAME",
    "POD_NAMESPACE",
)


def cel(rule: str, message: str) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    return {"rule": rule, "message": message}


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(entries)}


# Categorical values: strings or integers, typed so CEL rules can compare them. (Floats and
# booleans reach a command as text anyway; use "0.5" or "true".)
Choice = Annotated[
    int | str, WithJsonSchema({"x-kubernetes-int-or-string": True, "maxLength": 128})
]
# Warm-start parameter values, for function objectives: any scalar.
Scalar = Annotated[
    str | bool | int | float,
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]
FreeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def _open_object(kind: str, **properties: dict[str, Any]) -> Any:
    """A core/v1 object passed through as a dict, with the fields CEL rules read declared
    (a rule cannot name a field of an object that declares none)."""
    return WithJsonSchema(
        {
            "type": "object",
            "description": f"A core/v1 {kind}; every field of it is passed on.",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": properties,
        }
    )


_STRING: dict[str, Any] = {"type": "string", "maxLength": 253}
_NAME: dict[str, Any] = {"type": "string", "maxLength": 63}
_OPEN: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
EnvVarObject = Annotated[
    dict[str, Any],
    _open_object(
        "EnvVar", name=_STRING, value={"type": "string", "maxLength": 32768}, valueFrom=_OPEN
    ),
]
VolumeObject = Annotated[dict[str, Any], _open_object("Volume", name=_NAME)]
VolumeMountObject = Annotated[
    dict[str, Any], _open_object("VolumeMount", name=_NAME, mountPath=_STRING)
]
TolerationObject = Annotated[
    dict[str, Any],
    _open_object(
        "Toleration",
        key=_STRING,
        operator=_STRING,
        value=_STRING,
        effect=_STRING,
        tolerationSeconds={"type": "integer", "format": "int64"},
    ),
]
Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "maxLength": 64,
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",  # noqa: E501
        }
    ),
]
IntOrAuto = Annotated[
    int | Literal["auto"],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                cel(
                    "type(self) == int ? self >= 1 : self == 'auto'",
                    "must be a positive integer or 'auto'",
                )
            ],
        }
    ),
]
# Kubernetes object names (RFC 1123 subdomain), as the API server checks them in pod specs.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of an object in the study's namespace (lowercase RFC 1123 subdomain).",
    ),
]
ImageRef = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")]
LabelValue = Annotated[
    str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
]
# Label and annotation keys: an optional DNS-subdomain prefix and a 63-character name.
QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# Resource names the API server accepts in a container: the standard ones, hugepages-<size>
# and domain-qualified extended resources.
RESOURCE_NAME = (
    r"^(cpu|memory|ephemeral-storage|hugepages-[0-9A-Za-z.]+|"
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$"
)
# The API server keeps Job.activeDeadlineSeconds (timeout + 600) and the operator a deadline
# datetime; ten years bounds both far from overflow.
MAX_TIMEOUT_SECONDS = 10 * 365 * 24 * 3600
# Largest grid per parameter the worker enumerates (worker.factory).
MAX_GRID_VALUES_PER_PARAMETER = 10_000
# Values listed by hand in sampler.grid.searchSpace; bounded for the cost of CEL rules.
MAX_LISTED_GRID_VALUES = 1000

# No control characters (newlines, escapes): the text reaches terminals, `eval` and logs.
PRINTABLE = r"^[^\x00-\x1F\x7F]*$"

MetricName = Annotated[str, Field(min_length=1, max_length=63, pattern=PRINTABLE)]

ParamName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        min_length=1,
        max_length=63,
        description="Parameter name: letters, digits and underscores, not starting with a "
        "digit (it is also used as an environment variable and a placeholder).",
    ),
]


class Model(BaseModel):
    """Base: camelCase on the wire, unknown fields ignored (the API server prunes them)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def defaulted(model: type[Model]) -> dict[str, Any]:
    """Schema default for an object field the user may leave out. The API server checks a
    default against the CEL rules before filling nested defaults, so it must be complete."""
    return {"default": model().to_wire()}


class Direction(StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


# ----------------------------------------------------------------------------- search space


class FloatRange(Model):
    """A float parameter sampled from [low, high]."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("self.low < self.high", "float: low must be less than high"),
            cel("!self.log || self.low > 0.0", "float: log scale needs low > 0"),
            cel(
                "!(self.log && has(self.step))",
                "float: step cannot be combined with log scale",
            ),
            cel(
                "!has(self.step) || self.step <= self.high - self.low",
                "float: step must fit in the range high - low",
            ),
        )
    )
    low: float = Field(description="Lower bound (inclusive).")
    high: float = Field(description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    step: float | None = Field(
        None, gt=0, description="Discretization step; values are low + k*step."
    )


class IntRange(Model):
    """An integer parameter sampled from [low, high]."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("self.low < self.high", "int: low must be less than high"),
            cel("!self.log || self.low > 0", "int: log scale needs low > 0"),
            cel(
                "!self.log || self.step == 1",
                "int: log scale needs step 1",
            ),
            cel(
                "self.step <= self.high - self.low",
                "int: step must fit in the range high - low",
            ),
        )
    )
    low: int = Field(description="Lower bound (inclusive).")
    high: int = Field(description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    step: int = Field(1, ge=1, description="Step between values.")


class CategoricalRange(Model):
    """A parameter chosen from a list of values."""

    choices: list[Choice] = Field(
        min_length=1,
        max_length=MAX_CHOICES,
        description="Values to choose from: strings or integers, each once.",
        # Duplicates are rejected by the API server ("Duplicate value").
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class ParameterCondition(Model):
    """Sample this parameter only when a categorical parameter has one of the values."""

    param: ParamName = Field(
        description="Name of an unconditional categorical parameter of the search space."
    )
    in_: list[Choice] = Field(
        alias="in",
        min_length=1,
        max_length=16,
        description="Values of that parameter for which this parameter is sampled.",
    )


class Parameter(Model):
    """One parameter of a declarative search space; exactly one of float, int, categorical."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "[has(self.float), has(self.int), has(self.categorical)].filter(x, x).size() == 1",
                "set exactly one of float, int or categorical for each parameter",
            ),
            cel(
                "!has(self.when) || self.when.param != self.name",
                "a parameter cannot depend on itself",
            ),
        )
    )
    name: ParamName
    float_: FloatRange | None = Field(None, alias="float", description="A float range.")
    int_: IntRange | None = Field(None, alias="int", description="An integer range.")
    categorical: CategoricalRange | None = Field(None, description="A list of choices.")
    when: ParameterCondition | None = Field(
        None, description="Sample only when another parameter has one of the given values."
    )


SEARCH_SPACE_SCHEMA: dict[str, Any] = {
    # The API server rejects duplicate names itself ("Duplicate value"), at no CEL cost.
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
    "x-kubernetes-validations": [
        # One level of conditions keeps the space acyclic without ordering rules, which the
        # API server's CEL cost budget cannot afford over a list of parameters.
        cel(
            "self.all(p, !has(p.when) || self.exists(q, q.name == p.when.param"
            " && has(q.categorical) && !has(q.when)))",
            "searchSpace: when.param must name a categorical parameter that has no when itself",
        ),
        cel(
            "self.all(p, !has(p.when) || self.exists(q, q.name == p.when.param"
            " && has(q.categorical) && p.when.__in__.all(v, v in q.categorical.choices)))",
            "searchSpace: every value in when.in must be one of the parent parameter's choices",
        ),
    ],
}


class Objective(Model):
    """What each trial runs: a Python function or a command in any language."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.function) != has(self.command)",
                "objective: set exactly one of function or command",
            ),
            cel(
                "!has(self.command) || has(self.searchSpace)",
                "objective.command needs a searchSpace: the command cannot ask for "
                "parameters itself",
            ),
            cel(
                "!has(self.function) || !has(self.searchSpace)",
                "objective.searchSpace is only used with command: a function objective "
                "defines its parameters with trial.suggest_*",
            ),
        )
    )
    function: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$",
        max_length=256,
        description="Python define-by-run objective as module:attribute, called with an "
        "optuna.Trial; returns a float, or a tuple of floats for several directions.",
    )
    command: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Command run once per trial. '{name}' in an argument is replaced by the "
        "parameter's value; parameters also arrive as OPTUNA_PARAM_<NAME> environment "
        "variables and as a JSON file named by OPTUNA_PARAMS_FILE. The command reports "
        "'optuna:report <step> <value>' and 'optuna:result <v1> [<v2> ...]' lines on stdout.",
    )
    search_space: (
        Annotated[list[Parameter], Field(json_schema_extra=SEARCH_SPACE_SCHEMA)] | None
    ) = Field(
        None,
        min_length=1,
        max_length=MAX_PARAMETERS,
        description="Declarative search space for command objectives. A parameter with "
        "`when` is sampled only when its parent has one of the listed values.",
    )
    trial_timeout_seconds: int | None = Field(
        None,
        ge=1,
        description="Fail a trial that runs longer than this. A command is stopped; a "
        "function's worker process is ended and replaced (Python cannot interrupt native code).",
    )


# ----------------------------------------------------------------------------- budget


class Budget(Model):
    """When the study ends: whichever limit is reached first."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.trials) || has(self.timeoutSeconds)",
                "budget: set trials or timeoutSeconds so the study ends",
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
        description="Wall-clock limit from the start of the study (at most ten years).",
    )
    max_failed_trials: int = Field(
        20, ge=0, description="Mark the study Failed when more trials than this have failed."
    )
    goal: float | None = Field(
        None,
        description="Stop when the best value reaches this (single direction only).",
    )


# ----------------------------------------------------------------------------- samplers


class SamplerType(StrEnum):
    TPE = "TPE"
    CMAES = "CMAES"
    NSGAII = "NSGAII"
    NSGAIII = "NSGAIII"
    GP = "GP"
    QMC = "QMC"
    RANDOM = "Random"
    GRID = "Grid"
    BRUTE_FORCE = "BruteForce"


class TPEOptions(Model):
    """Options of optuna.samplers.TPESampler."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!self.group || self.multivariate",
                "sampler.tpe.group needs sampler.tpe.multivariate: true",
            ),
        )
    )

    n_startup_trials: int = Field(10, ge=0, description="Random trials before TPE starts.")
    n_ei_candidates: int = Field(24, ge=1, description="Candidates scored per suggestion.")
    multivariate: bool = Field(True, description="Model parameters jointly.")
    group: bool = Field(False, description="Split conditional spaces into groups.")
    constant_liar: bool = Field(
        True, description="Treat running trials as bad so parallel workers spread out."
    )
    consider_endpoints: bool = Field(
        False, description="Use range endpoints in the Parzen estimator."
    )


class CMAESOptions(Model):
    """Options of optuna.samplers.CmaEsSampler (sigma0 and restart strategies are deprecated
    in Optuna 5 and left out)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!(self.useSeparableCma && self.withMargin)",
                "sampler.cmaes: useSeparableCma and withMargin cannot be combined",
            ),
            cel(
                "!self.lrAdapt || !(self.useSeparableCma || self.withMargin)",
                "sampler.cmaes.lrAdapt cannot be combined with useSeparableCma or withMargin",
            ),
        )
    )

    n_startup_trials: int = Field(0, ge=0, description="Random trials before CMA-ES starts.")
    popsize: int | None = Field(None, ge=2, description="Population size.")
    use_separable_cma: bool = Field(False, description="Use the separable CMA-ES variant.")
    with_margin: bool = Field(False, description="CMA-ES with margin for discrete spaces.")
    lr_adapt: bool = Field(False, description="Learning-rate adaptation for noisy objectives.")


class NSGAOptions(Model):
    """Options of optuna.samplers.NSGAIISampler / NSGAIIISampler."""

    population_size: int = Field(50, ge=2, description="Individuals per generation.")
    mutation_prob: float | None = Field(None, ge=0, le=1, description="Mutation probability.")
    crossover_prob: float = Field(0.9, ge=0, le=1, description="Crossover probability.")
    swapping_prob: float = Field(0.5, ge=0, le=1, description="Uniform crossover swapping.")


class GPOptions(Model):
    """Options of optuna.samplers.GPSampler (needs torch in the worker image)."""

    n_startup_trials: int = Field(10, ge=0, description="Random trials before GP starts.")
    deterministic_objective: bool = Field(False, description="The objective has no noise.")


class QMCOptions(Model):
    """Options of optuna.samplers.QMCSampler."""

    # Optuna's QMCSampler accepts only these two.
    qmc_type: Literal["sobol", "halton"] = Field("sobol", description="Sequence.")
    scramble: bool = Field(True, description="Scramble the sequence.")


class GridOptions(Model):
    """Options of optuna.samplers.GridSampler."""

    search_space: (
        dict[
            str,
            Annotated[list[Scalar], Field(min_length=1, max_length=MAX_LISTED_GRID_VALUES)],
        ]
        | None
    ) = Field(
        None,
        description="Values per parameter. Needed for function objectives; derived from "
        "objective.searchSpace for command objectives (int, categorical and float with step); "
        "set it for a command objective to list exactly its parameters' values.",
        json_schema_extra={"maxProperties": MAX_PARAMETERS},
    )


def _only_for(field: str, type_name: str, section: str) -> dict[str, str]:
    return cel(
        f"!has(self.{field}) || self.type == '{type_name}'",
        f"{section}.{field} is only valid when {section}.type is {type_name}",
    )


class SamplerSpec(Model):
    """The sampler every worker builds; options go in the field named after the type."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            _only_for("tpe", "TPE", "sampler"),
            _only_for("cmaes", "CMAES", "sampler"),
            cel(
                "!has(self.nsga) || self.type == 'NSGAII' || self.type == 'NSGAIII'",
                "sampler.nsga is only valid when sampler.type is NSGAII or NSGAIII",
            ),
            _only_for("gp", "GP", "sampler"),
            _only_for("qmc", "QMC", "sampler"),
            _only_for("grid", "Grid", "sampler"),
        )
    )
    type: SamplerType = Field(SamplerType.TPE, description="Sampling algorithm.")
    seed: int | None = Field(
        None,
        ge=0,
        # numpy's RandomState, which the samplers use, takes seeds below 2**32.
        le=2**32 - 1,
        description="Base seed of the samplers. Each trial process derives its own from it "
        "(the base plus a hash of its pod name and process number), so workers do not repeat "
        "each other's suggestions and one pod's process keeps its seed across restarts of "
        "that process.",
    )
    tpe: TPEOptions | None = None
    cmaes: CMAESOptions | None = None
    nsga: NSGAOptions | None = None
    gp: GPOptions | None = None
    qmc: QMCOptions | None = None
    grid: GridOptions | None = None


# ----------------------------------------------------------------------------- pruners


class PrunerType(StrEnum):
    NONE = "None"
    MEDIAN = "Median"
    PERCENTILE = "Percentile"
    SUCCESSIVE_HALVING = "SuccessiveHalving"
    HYPERBAND = "Hyperband"
    PATIENT = "Patient"
    THRESHOLD = "Threshold"
    WILCOXON = "Wilcoxon"


class MedianOptions(Model):
    """Options of optuna.pruners.MedianPruner."""

    n_startup_trials: int = Field(5, ge=0, description="Trials before pruning starts.")
    n_warmup_steps: int = Field(0, ge=0, description="Steps of a trial before it can be pruned.")
    interval_steps: int = Field(1, ge=1, description="Check every this many steps.")
    n_min_trials: int = Field(1, ge=1, description="Trials reporting a step before comparing.")


class PercentileOptions(MedianOptions):
    """Options of optuna.pruners.PercentilePruner."""

    percentile: float = Field(ge=0, le=100, description="Prune below this percentile.")


class SuccessiveHalvingOptions(Model):
    """Options of optuna.pruners.SuccessiveHalvingPruner."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.bootstrapCount == 0 || self.minResource != 'auto'",
                "pruner.successiveHalving.bootstrapCount > 0 needs an integer minResource",
            ),
        )
    )

    min_resource: IntOrAuto = Field("auto", description="Steps in the first rung.")
    reduction_factor: int = Field(4, ge=2, description="Keep 1/reductionFactor per rung.")
    min_early_stopping_rate: int = Field(0, ge=0, description="Rung offset.")
    bootstrap_count: int = Field(0, ge=0, description="Trials needed before promoting.")


class HyperbandOptions(Model):
    """Options of optuna.pruners.HyperbandPruner."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.bootstrapCount == 0 || self.maxResource != 'auto'",
                "pruner.hyperband.bootstrapCount > 0 needs an integer maxResource",
            ),
            cel(
                "self.maxResource == 'auto' || int(self.maxResource) >= self.minResource",
                "pruner.hyperband.maxResource must be at least minResource",
            ),
        )
    )

    min_resource: int = Field(1, ge=1, description="Smallest number of steps.")
    max_resource: IntOrAuto = Field("auto", description="Largest number of steps.")
    reduction_factor: int = Field(3, ge=2, description="Keep 1/reductionFactor per rung.")
    bootstrap_count: int = Field(0, ge=0, description="Trials needed before promoting.")


class ThresholdOptions(Model):
    """Options of optuna.pruners.ThresholdPruner."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.lower) || has(self.upper)",
                "pruner.threshold needs lower or upper",
            ),
            cel(
                "!(has(self.lower) && has(self.upper)) || self.lower < self.upper",
                "pruner.threshold: lower must be less than upper",
            ),
        )
    )
    lower: float | None = Field(None, description="Prune when the value falls below.")
    upper: float | None = Field(None, description="Prune when the value rises above.")
    n_warmup_steps: int = Field(0, ge=0, description="Steps before pruning starts.")
    interval_steps: int = Field(1, ge=1, description="Check every this many steps.")


class WilcoxonOptions(Model):
    """Options of optuna.pruners.WilcoxonPruner (steps are instances, e.g. CV folds)."""

    p_threshold: float = Field(0.1, gt=0, le=1, description="Significance level.")
    n_startup_steps: int = Field(2, ge=0, description="Steps before pruning starts.")


PRUNER_OPTION_RULES = (
    _only_for("median", "Median", "pruner"),
    _only_for("percentile", "Percentile", "pruner"),
    cel(
        "self.type != 'Percentile' || has(self.percentile)",
        "pruner.type Percentile needs pruner.percentile.percentile",
    ),
    _only_for("successiveHalving", "SuccessiveHalving", "pruner"),
    _only_for("hyperband", "Hyperband", "pruner"),
    _only_for("threshold", "Threshold", "pruner"),
    cel(
        "self.type != 'Threshold' || has(self.threshold)",
        "pruner.type Threshold needs pruner.threshold with lower or upper",
    ),
    _only_for("wilcoxon", "Wilcoxon", "pruner"),
)


class BasePrunerSpec(Model):
    """A pruner that can be wrapped by the Patient pruner."""

    model_config = ConfigDict(json_schema_extra=rules(*PRUNER_OPTION_RULES))
    type: PrunerType = Field(PrunerType.NONE, description="Pruning algorithm.")
    median: MedianOptions | None = None
    percentile: PercentileOptions | None = None
    successive_halving: SuccessiveHalvingOptions | None = None
    hyperband: HyperbandOptions | None = None
    threshold: ThresholdOptions | None = None
    wilcoxon: WilcoxonOptions | None = None


class PatientOptions(Model):
    """Options of optuna.pruners.PatientPruner."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("self.wrapped.type != 'Patient'", "pruner.patient.wrapped cannot be Patient"),
        )
    )
    patience: int = Field(ge=0, description="Steps without improvement before pruning.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change counted as improvement.")
    wrapped: BasePrunerSpec = Field(
        default_factory=BasePrunerSpec,
        json_schema_extra=defaulted(BasePrunerSpec),
        description="Pruner consulted once patience runs out (type None: prune then).",
    )


class PrunerSpec(BasePrunerSpec):
    """The pruner every worker builds; options go in the field named after the type."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            *PRUNER_OPTION_RULES,
            _only_for("patient", "Patient", "pruner"),
            cel(
                "self.type != 'Patient' || has(self.patient)",
                "pruner.type Patient needs pruner.patient.patience",
            ),
        )
    )
    patient: PatientOptions | None = None


# ----------------------------------------------------------------------------- workers

# Quantity kinds the API server only takes in some forms (extended resources as integers).
_EXTENDED = "k.contains('/') && !k.startsWith('kubernetes.io/')"
# Labels the operator sets on worker pods; the same key in podLabels would be dropped.
OPERATOR_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _quantities(field: str) -> list[dict[str, str]]:
    """What the API server checks of one resource map in a pod."""
    return [
        cel(
            f"!has(self.{field}) || self.{field}.all(k, k.matches('{RESOURCE_NAME}'))",
            f"resources.{field}: names are cpu, memory, ephemeral-storage, hugepages-<size> or "
            "a domain-qualified extended resource such as nvidia.com/gpu",
        ),
        cel(
            f"!has(self.{field}) || self.{field}.all(k, "
            f"!quantity(string(self.{field}[k])).isLessThan(quantity('0')))",
            f"resources.{field}: quantities cannot be negative",
        ),
        cel(
            f"!has(self.{field}) || self.{field}.all(k, !({_EXTENDED}) "
            f"|| quantity(string(self.{field}[k])).isInteger())",
            f"resources.{field}: extended resources such as nvidia.com/gpu take whole numbers",
        ),
    ]


class Resources(Model):
    """Container resources (core/v1 ResourceRequirements without claims)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            *_quantities("limits"),
            *_quantities("requests"),
            cel(
                "!has(self.requests) || !has(self.limits) || self.requests.all(k, "
                "!(k in self.limits) || quantity(string(self.requests[k]))"
                ".compareTo(quantity(string(self.limits[k]))) <= 0)",
                "resources: a request cannot exceed the limit of the same resource",
            ),
            cel(
                f"!has(self.requests) || self.requests.all(k, !({_EXTENDED}) "
                "|| has(self.limits) && k in self.limits && quantity(string(self.requests[k]))"
                ".compareTo(quantity(string(self.limits[k]))) == 0)",
                "resources: extended resources such as nvidia.com/gpu cannot be overcommitted; "
                "set the limit, equal to the request (or only the limit)",
            ),
        )
    )
    limits: dict[str, Quantity] | None = Field(
        None,
        description="Upper bounds, e.g. {cpu: 2, memory: 4Gi, nvidia.com/gpu: 1}.",
        json_schema_extra={"maxProperties": 32},
    )
    requests: dict[str, Quantity] | None = Field(
        None, description="Scheduling requests.", json_schema_extra={"maxProperties": 32}
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


class WorkersSpec(Model):
    """The worker Job: pods that pull trials from the shared study until the budget is met."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.minParallelism) || self.minParallelism < self.parallelism",
                "workers.minParallelism must be less than workers.parallelism",
            ),
            cel(
                "!has(self.env) || self.env.all(e, has(e.name) && e.name.matches('^[ -<>-~]+$'))",
                "workers.env: every entry needs a name of printable characters without '='",
            ),
            cel(
                f"!has(self.env) || self.env.all(e, !has(e.name) || !(e.name in "
                f"{_cel_list(WORKER_ENV_NAMES)}))",
                "workers.env: "
                + ", ".join(WORKER_ENV_NAMES)
                + " are set by the operator and cannot be overridden",
            ),
            cel(
                "!has(self.env) || self.env.all(e, !has(e.valueFrom) "
                "|| !has(e.value) || size(e.value) == 0)",
                "workers.env: an entry takes value or valueFrom, not both",
            ),
            cel(
                "!has(self.volumes) || self.volumes.all(v, has(v.name) "
                "&& v.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(v.name) <= 63)",
                "workers.volumes: every volume needs a name that is a DNS label "
                "(lowercase letters, digits and '-', at most 63 characters)",
            ),
            cel(
                f"!has(self.volumes) || self.volumes.all(v, !has(v.name) || !(v.name in "
                f"{_cel_list(WORKER_VOLUME_NAMES)}))",
                "workers.volumes: "
                + " and ".join(WORKER_VOLUME_NAMES)
                + " are the operator's own volumes; pick another name",
            ),
            cel(
                "!has(self.volumeMounts) || self.volumeMounts.all(m, has(m.name) "
                "&& has(self.volumes) && self.volumes.exists(v, has(v.name) && v.name == m.name))",
                "workers.volumeMounts: every mount must name a volume of workers.volumes",
            ),
            cel(
                "!has(self.volumeMounts) || self.volumeMounts.all(m, has(m.mountPath) "
                f"&& !(m.mountPath in {_cel_list(WORKER_MOUNT_PATHS)}))",
                "workers.volumeMounts: every mount needs a mountPath, and "
                + " and ".join(WORKER_MOUNT_PATHS)
                + " are the operator's writable emptyDirs (size /dev/shm with workers.shmSize)",
            ),
            cel(
                "!has(self.tolerations) || self.tolerations.all(t, "
                "(!has(t.operator) || t.operator in ['Exists', 'Equal']) "
                "&& (!has(t.effect) || t.effect in ['NoSchedule', 'PreferNoSchedule', "
                "'NoExecute']) && (!has(t.tolerationSeconds) || has(t.effect) "
                "&& t.effect == 'NoExecute'))",
                "workers.tolerations: operator is Exists or Equal, effect NoSchedule, "
                "PreferNoSchedule or NoExecute, and tolerationSeconds needs effect NoExecute",
            ),
            cel(
                "!has(self.tolerations) || self.tolerations.all(t, !has(t.operator) "
                "|| t.operator != 'Exists' || !has(t.value) || size(t.value) == 0)",
                "workers.tolerations: a toleration with operator Exists takes no value",
            ),
            cel(
                f"!has(self.podLabels) || self.podLabels.all(k, k.matches('{QUALIFIED_KEY}') "
                f"&& !(k in {_cel_list(OPERATOR_LABELS)}) "
                "&& !k.startsWith('optuna-operator.io/'))",
                "workers.podLabels: keys must be valid label keys, and the operator's own "
                "labels (app.kubernetes.io/name, instance, component, part-of, managed-by, "
                "optuna-operator.io/*) cannot be set",
            ),
            cel(
                f"!has(self.nodeSelector) || self.nodeSelector.all(k, "
                f"k.matches('{QUALIFIED_KEY}'))",
                "workers.nodeSelector: keys must be valid label keys ([prefix/]name)",
            ),
            cel(
                f"!has(self.podAnnotations) || self.podAnnotations.all(k, "
                f"k.matches('{QUALIFIED_KEY}'))",
                "workers.podAnnotations: keys must be valid annotation keys ([prefix/]name)",
            ),
            cel(
                "quantity(string(self.shmSize)).isGreaterThan(quantity('0'))",
                "workers.shmSize must be a positive quantity, e.g. 1Gi",
            ),
            cel(
                "self.parallelism >= 1",
                "workers.parallelism must be at least 1 (a Job of 0 workers would leave the "
                "study Pending); set spec.suspend: true to stop the workers",
            ),
        )
    )

    parallelism: int = Field(1, ge=0, le=1000, description="Worker pods running at once.")
    processes_per_pod: int = Field(
        1,
        ge=1,
        le=16,
        description="Trial processes per pod; with N GPUs per pod set N to run one trial "
        "per GPU (each process sees one GPU through CUDA_VISIBLE_DEVICES).",
    )
    image: ImageRef | None = Field(
        None, description="Image with the objective's code and the worker."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    resources: Resources | None = Field(
        None, description="Worker container resources, e.g. limits: {nvidia.com/gpu: 1}."
    )
    # Bounded so the API server can afford the CEL rules over them.
    env: list[EnvVarObject] | None = Field(
        None,
        max_length=256,
        description="Extra environment (core/v1 EnvVar). HOME (default /tmp/home) may be "
        "overridden; the operator's own variables may not.",
    )
    env_from: list[FreeObject] | None = Field(
        None, max_length=64, description="core/v1 EnvFromSource list."
    )
    volumes: list[VolumeObject] | None = Field(
        None, max_length=64, description="core/v1 Volume list."
    )
    volume_mounts: list[VolumeMountObject] | None = Field(
        None, max_length=64, description="core/v1 VolumeMount list."
    )
    node_selector: dict[str, LabelValue] | None = Field(
        None, json_schema_extra={"maxProperties": 64}
    )
    tolerations: list[TolerationObject] | None = Field(
        None, max_length=64, description="core/v1 Toleration list."
    )
    affinity: FreeObject | None = Field(None, description="core/v1 Affinity.")
    service_account_name: ObjectName | None = None
    image_pull_secrets: list[ObjectName] | None = Field(
        None, max_length=16, description="Names of pull Secrets."
    )
    priority_class_name: ObjectName | None = None
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Kueue LocalQueue (in the study's namespace) the worker Job waits in: the "
        "Job gets the kueue.x-k8s.io/queue-name label and is created suspended; Kueue starts "
        "it when its ClusterQueue has quota and may suspend it again to preempt it. Defaults "
        "to the operator's --default-queue-name.",
    )
    min_parallelism: int | None = Field(
        None,
        ge=1,
        le=999,
        description="With a Kueue queue: let Kueue admit the worker Job with as few as this "
        "many workers when the quota does not fit parallelism (partial admission, the "
        "kueue.x-k8s.io/job-min-parallelism annotation). Ignored without a queue.",
    )
    pod_labels: dict[str, LabelValue] | None = Field(None, json_schema_extra={"maxProperties": 64})
    pod_annotations: dict[str, str] | None = Field(None, json_schema_extra={"maxProperties": 64})
    shm_size: Quantity = Field(
        "64Mi",
        description="Size of the memory-backed /dev/shm (counts against the pod's memory); "
        "raise it for PyTorch DataLoader workers, e.g. 2Gi.",
    )
    run_as_user: int | None = Field(
        None,
        ge=1,
        le=2147483647,
        description="User id of the worker container (default 65532, the worker image's "
        "user); for images built around another non-root user.",
    )
    run_as_group: int | None = Field(
        None,
        ge=0,
        le=2147483647,
        description="Group id of the worker container and of its volumes (default 65532).",
    )
    heartbeat_interval_seconds: int = Field(
        30,
        ge=5,
        le=3600,
        description="Running trials send a heartbeat this often; a trial silent for 2x this "
        "is failed and retried (preempted or killed worker).",
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
        "parameter distributions must be compatible with this study's search space, and they "
        "count towards budget.trials.",
    )


# ----------------------------------------------------------------------------- spec


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
                "!has(self.dashboard) || !has(self.dashboard.secretRef) || has(self.storage)",
                "dashboard.secretRef is for a study on its own storage (spec.storage); with "
                "the default storage the namespace's dashboard uses its read-only role",
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


# ----------------------------------------------------------------------------- status


class Condition(Model):
    """One aspect of the study's state, shaped like metav1.Condition."""

    type: str = Field(
        description="StorageReady, WorkersReady, DashboardAvailable, Suspended, Succeeded "
        "or Failed."
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
    phase: Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"] | None = (
        Field(
            None,
            description="Summary: Pending (no workers yet), Queued (the worker Job waits for "
            "admission by Kueue), Running, Suspended (spec.suspend), "
            "Succeeded (a budget or the goal was reached) or Failed (see the Failed condition).",
        )
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
        "once the study finished.",
    )
    workers: WorkerCounts | None = Field(None, description="Pods of the current worker Job.")
    dashboard: DashboardStatus | None = Field(None, description="Where the dashboard is served.")
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


# ----------------------------------------------------------------------------- worker


class WorkerConfig(Model):
    """The one document the operator hands each worker pod (env OPTUNA_OPERATOR_WORKER_CONFIG).

    The storage URL is not in it: it reaches the pod only through a secretKeyRef.
    """

    study_name: str
    directions: list[Direction]
    objective: Objective
    budget: Budget
    sampler: SamplerSpec
    pruner: PrunerSpec
    processes_per_pod: int = 1
    heartbeat_interval_seconds: int = 30
    deadline: datetime | None = Field(
        None, description="Absolute end of the time budget (start of study + timeout)."
    )
