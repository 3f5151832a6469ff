"""The worker's connection to the study: a small, self-healing RDBStorage."""

from __future__ import annotations

import logging
import time

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from optuna_operator.contract import STORAGE_ENV, describe_url, heartbeat_storage
from optuna_operator.worker.errors import ConfigError
from optuna_operator.worker.outage import OutageTolerantStorage

__all__ = ["load_study", "make_storage"]

log = logging.getLogger(__name__)


def make_storage(url: str, heartbeat_interval: int, application_name: str) -> OutageTolerantStorage:
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(f"{STORAGE_ENV} is not a valid SQLAlchemy URL") from None
    return heartbeat_storage(
        url, heartbeat_interval, application_name, storage_class=OutageTolerantStorage
    )


def load_study(
    name: str,
    url: str,
    heartbeat_interval: int,
    application_name: str,
    *,
    wait_seconds: float = 60.0,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, OutageTolerantStorage]:
    """Load (never create) the study; wait a while for a database that is still starting.

    A study that is missing once the database answers is a configuration error: the operator
    creates it before any worker starts.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 1.0
    while True:
        try:
            storage = make_storage(url, heartbeat_interval, application_name)
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
            return study, storage
        except KeyError:
            raise ConfigError(
                f"study {name!r} does not exist in {describe_url(url)}; the operator creates it "
                "before starting workers"
            ) from None
        except ConfigError:
            raise
        except Exception as err:
            if time.monotonic() >= deadline:
                raise
            log.warning(
                "Storage %s not reachable yet (%s); retrying in %.0f s",
                describe_url(url),
                type(err).__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
