"""WorkerConfig: the document the operator hands each worker pod, made of the spec's own
sections, so the worker reads the same models the API server validated.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from optuna_operator.api.objective import Objective
from optuna_operator.api.pruner import PrunerSpec
from optuna_operator.api.sampler import SamplerSpec
from optuna_operator.api.spec import Budget
from optuna_operator.api.types import Direction, Model

__all__ = ["WorkerConfig"]


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
