"""What the operator hands a worker pod: the environment, parsed once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from optuna_operator.api import WorkerConfig
from optuna_operator.contract import (
    CONFIG_ENV,
    INDEX_ENV,
    POD_NAME_ENV,
    POD_NAMESPACE_ENV,
    STORAGE_ENV,
    ConfigError,
)

__all__ = ["WAIT_FOR_SLOTS_ENV", "WorkerSettings", "read_settings"]

# "1": a worker that finds every trial slot held by live trials waits for one to free up
# instead of leaving (the behaviour before issue 21; hack/bench_idle.py measures both).
WAIT_FOR_SLOTS_ENV = "OPTUNA_OPERATOR_WAIT_FOR_SLOTS"


@dataclass(frozen=True)
class WorkerSettings:
    config: WorkerConfig
    storage_url: str
    pod_name: str
    namespace: str
    worker_index: int | None  # the Job completion index, when the operator sets one
    wait_for_slots: bool = False


def read_settings(env: Mapping[str, str] = os.environ) -> WorkerSettings:
    raw = env.get(CONFIG_ENV)
    if not raw:
        raise ConfigError(f"{CONFIG_ENV} is not set: the worker has no study configuration")
    try:
        config = WorkerConfig.model_validate_json(raw)
    except ValidationError as err:
        # Pydantic's text repeats the input; the first lines name the bad fields.
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5]
        )
        raise ConfigError(f"invalid {CONFIG_ENV}: {detail}") from None
    url = env.get(STORAGE_ENV)
    if not url:
        raise ConfigError(f"{STORAGE_ENV} is not set: the worker cannot reach the study")
    index_text = env.get(INDEX_ENV)
    index: int | None = None
    if index_text:
        try:
            index = int(index_text)
        except ValueError:
            raise ConfigError(f"{INDEX_ENV} must be an integer, got {index_text!r}") from None
    return WorkerSettings(
        config=config,
        storage_url=url,
        pod_name=env.get(POD_NAME_ENV, "") or os.uname().nodename,
        namespace=env.get(POD_NAMESPACE_ENV, ""),
        worker_index=index,
        wait_for_slots=env.get(WAIT_FOR_SLOTS_ENV, "") == "1",
    )
