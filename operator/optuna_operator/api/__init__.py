"""Typed models of the TuningStudy API (v1alpha1): the single source of the CRD schema.

Field descriptions become `kubectl explain` text; `x-kubernetes-validations` (CEL) rules live
next to the fields they check, so `make crds` can generate the whole schema from here.

One file per concern; a file imports only the files above it in this list:

- `constants`: group, version, kind, plural; bounds; the names every worker pod gets.
- `cel`: the `cel()`/`rules()` helpers and the patterns both fields and rules match.
- `types`: the `Model` base, shared field types, `Direction`, container `Resources`.
- `objective`: `Objective` and the declarative search space (`Parameter`...).
- `sampler`, `pruner`: `spec.sampler` and `spec.pruner`, their types and options.
- `workers`: `spec.workers`, the worker pod's fields and the core/v1 objects passed through.
- `status`: `TuningStudyStatus`, `BestTrial`, conditions; non-finite values as JSON.
- `spec`: `TuningStudySpec`, its smaller sections, and `TuningStudy` itself.
- `worker_config`: `WorkerConfig`, what the operator hands each worker pod.

This module re-exports the models, enums and constants, so importers read them from
`optuna_operator.api`; schema helpers (CEL fragments, annotated field types) stay in their
files.
"""

from __future__ import annotations

# Every constant is part of the face; constants.py lists them once.
from optuna_operator.api import constants
from optuna_operator.api.constants import *  # noqa: F403
from optuna_operator.api.objective import (
    CategoricalRange,
    FloatRange,
    IntRange,
    Objective,
    Parameter,
    ParameterCondition,
)
from optuna_operator.api.pruner import (
    BasePrunerSpec,
    HyperbandOptions,
    MedianOptions,
    PatientOptions,
    PercentileOptions,
    PrunerSpec,
    PrunerType,
    SuccessiveHalvingOptions,
    ThresholdOptions,
    WilcoxonOptions,
)
from optuna_operator.api.sampler import (
    CMAESOptions,
    GPOptions,
    GridOptions,
    NSGAOptions,
    QMCOptions,
    SamplerSpec,
    SamplerType,
    TPEOptions,
)
from optuna_operator.api.spec import (
    Budget,
    DashboardSpec,
    DeletionPolicy,
    ExportSpec,
    Metadata,
    SecretKeyRef,
    StorageSpec,
    TuningStudy,
    TuningStudySpec,
    WarmStartSpec,
)
from optuna_operator.api.status import (
    BestTrial,
    Condition,
    DashboardStatus,
    PhaseName,
    StopReason,
    TrialCounts,
    TuningStudyStatus,
    WorkerCounts,
    json_safe,
    value_text,
)
from optuna_operator.api.types import Direction, Model, Resources
from optuna_operator.api.worker_config import WorkerConfig
from optuna_operator.api.workers import WorkersSpec

__all__ = [
    "BasePrunerSpec",
    "BestTrial",
    "Budget",
    "CMAESOptions",
    "CategoricalRange",
    "Condition",
    "DashboardSpec",
    "DashboardStatus",
    "DeletionPolicy",
    "Direction",
    "ExportSpec",
    "FloatRange",
    "GPOptions",
    "GridOptions",
    "HyperbandOptions",
    "IntRange",
    "MedianOptions",
    "Metadata",
    "Model",
    "NSGAOptions",
    "Objective",
    "Parameter",
    "ParameterCondition",
    "PatientOptions",
    "PercentileOptions",
    "PhaseName",
    "PrunerSpec",
    "PrunerType",
    "QMCOptions",
    "Resources",
    "SamplerSpec",
    "SamplerType",
    "SecretKeyRef",
    "StopReason",
    "StorageSpec",
    "SuccessiveHalvingOptions",
    "TPEOptions",
    "ThresholdOptions",
    "TrialCounts",
    "TuningStudy",
    "TuningStudySpec",
    "TuningStudyStatus",
    "WarmStartSpec",
    "WilcoxonOptions",
    "WorkerConfig",
    "WorkerCounts",
    "WorkersSpec",
    "json_safe",
    "value_text",
]
__all__ += constants.__all__
