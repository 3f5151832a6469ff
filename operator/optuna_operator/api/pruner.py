"""spec.pruner: the Optuna pruner every worker builds, its type and the options of each
type; the Patient pruner wraps another one (`BasePrunerSpec`).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from optuna_operator.api.cel import cel, only_for, options_only_for, rules
from optuna_operator.api.types import IntOrAuto, Model, defaulted

__all__ = [
    "PRUNER_OPTION_RULES",
    "BasePrunerSpec",
    "HyperbandOptions",
    "MedianOptions",
    "PatientOptions",
    "PercentileOptions",
    "PrunerSpec",
    "PrunerType",
    "SuccessiveHalvingOptions",
    "ThresholdOptions",
    "WilcoxonOptions",
]


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
    *options_only_for("pruner", median="Median", percentile="Percentile"),
    cel(
        "self.type != 'Percentile' || has(self.percentile)",
        "pruner.type Percentile needs pruner.percentile.percentile",
    ),
    *options_only_for("pruner", successiveHalving="SuccessiveHalving", hyperband="Hyperband"),
    *options_only_for("pruner", threshold="Threshold"),
    cel(
        "self.type != 'Threshold' || has(self.threshold)",
        "pruner.type Threshold needs pruner.threshold with lower or upper",
    ),
    only_for("wilcoxon", "Wilcoxon", "pruner"),
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
            only_for("patient", "Patient", "pruner"),
            cel(
                "self.type != 'Patient' || has(self.patient)",
                "pruner.type Patient needs pruner.patient.patience",
            ),
        )
    )
    patient: PatientOptions | None = None
