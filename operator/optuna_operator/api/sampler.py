"""spec.sampler: the Optuna sampler every worker builds, its type and the options of each
type, which are valid only beside their own type (CEL).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from optuna_operator.api.cel import cel, options_only_for, rules
from optuna_operator.api.constants import MAX_LISTED_GRID_VALUES, MAX_PARAMETERS
from optuna_operator.api.types import Model, Scalar

__all__ = [
    "CMAESOptions",
    "GPOptions",
    "GridOptions",
    "NSGAOptions",
    "QMCOptions",
    "SamplerSpec",
    "SamplerType",
    "TPEOptions",
]


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


class SamplerSpec(Model):
    """The sampler every worker builds; options go in the field named after the type."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            *options_only_for("sampler", tpe="TPE", cmaes="CMAES"),
            cel(
                "!has(self.nsga) || self.type == 'NSGAII' || self.type == 'NSGAIII'",
                "sampler.nsga is only valid when sampler.type is NSGAII or NSGAIII",
            ),
            *options_only_for("sampler", gp="GP", qmc="QMC", grid="Grid"),
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
