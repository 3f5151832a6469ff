"""Guard rails from the Optuna production guide: budgets that cannot work as the user means
them. A model-based sampler spends its first trials at random, so a budget barely larger
than those startup trials is a random search; a study that prunes nearly every trial learns
little from the ones it finishes; a pruner whose trials never report prunes nothing.

One pure function gives the advice the status shows (condition BudgetAdvice); the admission
policy's warning (admission.py) is written from the same startup-trial numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna_operator.api import PrunerType, SamplerSpec, SamplerType, TuningStudySpec

__all__ = [
    "DEFAULT_STARTUP_TRIALS",
    "MIN_FINISHED_FOR_PRUNING_ADVICE",
    "PRUNED_SHARE_LIMIT",
    "STARTUP_SHARE_LIMIT",
    "Advice",
    "budget_advice",
    "startup_trials",
]

# Random trials before each model-based sampler uses its model, when its options are unset
# (Optuna 5's defaults; NSGA's first generation is random).
DEFAULT_STARTUP_TRIALS = {
    SamplerType.TPE: 10,
    SamplerType.GP: 10,
    SamplerType.CMAES: 0,
    SamplerType.NSGAII: 50,
    SamplerType.NSGAIII: 50,
}
# Startup trials at or above this share of budget.trials leave the model too few trials.
STARTUP_SHARE_LIMIT = 0.5
# More than this share of finished trials pruned: the pruner decides the study.
PRUNED_SHARE_LIMIT = 0.8
MIN_FINISHED_FOR_PRUNING_ADVICE = 10


@dataclass(frozen=True)
class Advice:
    """One piece of advice: a CamelCase reason and a sentence."""

    reason: str
    message: str


def startup_trials(sampler: SamplerSpec) -> int | None:
    """How many trials the sampler samples at random before its model starts; None for
    samplers without a model (Random, QMC, Grid, BruteForce)."""
    if sampler.type not in DEFAULT_STARTUP_TRIALS:
        return None
    options = {
        SamplerType.TPE: sampler.tpe,
        SamplerType.GP: sampler.gp,
        SamplerType.CMAES: sampler.cmaes,
    }.get(sampler.type)
    if options is not None:
        return int(options.n_startup_trials)
    if sampler.type in (SamplerType.NSGAII, SamplerType.NSGAIII) and sampler.nsga is not None:
        return sampler.nsga.population_size
    return DEFAULT_STARTUP_TRIALS[sampler.type]


def budget_advice(
    spec: TuningStudySpec, finished: int, pruned: int, reported: bool = True
) -> Advice | None:
    """The first piece of advice that applies to the spec and the trials so far, or None.
    `reported`: whether any finished trial reported an intermediate value."""
    startup, trials = startup_trials(spec.sampler), spec.budget.trials
    if startup is not None and trials is not None and startup >= STARTUP_SHARE_LIMIT * trials:
        return Advice(
            "StartupTrialsDominate",
            f"The {spec.sampler.type} sampler samples its first {startup} trials at random, "
            f"{startup / trials:.0%} of budget.trials ({trials}): raise budget.trials or lower "
            "the sampler's startup trials",
        )
    if (
        spec.pruner.type != PrunerType.NONE
        and not reported
        and finished >= MIN_FINISHED_FOR_PRUNING_ADVICE
    ):
        return Advice(
            "PrunerNeverReports",
            f"spec.pruner is {spec.pruner.type} but none of {finished} finished trials reported "
            "an intermediate value (trial.report, or 'optuna:report <step> <value>' from a "
            "command), so it never prunes: report each step or remove the pruner",
        )
    if finished >= MIN_FINISHED_FOR_PRUNING_ADVICE and pruned > PRUNED_SHARE_LIMIT * finished:
        return Advice(
            "MostTrialsPruned",
            f"{pruned} of {finished} finished trials were pruned: the pruner may stop trials "
            "before they show their worth; loosen it (e.g. more warm-up steps)",
        )
    return None
