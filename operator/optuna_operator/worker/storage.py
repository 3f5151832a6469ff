"""The worker's connection to the study: a small, self-healing RDBStorage."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from optuna_operator.worker.errors import ConfigError

__all__ = [
    "MAX_RETRIES",
    "STORAGE_ENV_NAMES",
    "describe_url",
    "engine_kwargs",
    "load_study",
    "make_storage",
]

log = logging.getLogger(__name__)

# A trial whose worker keeps dying (OOM, a crashing CUDA kernel) is retried this often, not
# forever; preemptions rarely hit the same parameters more than twice.
MAX_RETRIES = 3
POOL_RECYCLE_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 10
# Variables that may carry database credentials; objectives never see them.
STORAGE_ENV_NAMES = frozenset({"OPTUNA_STORAGE_URL"})


def describe_url(url: str) -> str:
    """host:port/database for logs; the URL itself carries the password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable storage URL>"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()}://{parsed.host or ''}{port}/{parsed.database or ''}"


def engine_kwargs(url: str, application_name: str) -> dict[str, Any]:
    """Pool settings sized so workers x processes x 4 stays far below max_connections."""
    kwargs: dict[str, Any] = {
        # Postgres and the proxies in front of it drop idle connections during long trials.
        "pool_pre_ping": True,
        "pool_recycle": POOL_RECYCLE_SECONDS,
        # One connection for the trial loop, one for the heartbeat thread, a little slack.
        "pool_size": 2,
        "max_overflow": 2,
    }
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        kwargs["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "application_name": application_name[:63],
            # Keepalives notice a vanished server (or NAT entry) during an hour-long trial.
            "keepalives": 1,
            "keepalives_idle": 60,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    return kwargs


def make_storage(url: str, heartbeat_interval: int, application_name: str) -> RDBStorage:
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError("OPTUNA_STORAGE_URL is not a valid SQLAlchemy URL") from None
    with warnings.catch_warnings():
        # Heartbeats are the documented way to recover preempted trials; Optuna still labels
        # them experimental, which would only add noise to every worker's log.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url, application_name),
            # The operator created the schema with the study; workers racing to create
            # tables only add lock contention.
            skip_table_creation=True,
            heartbeat_interval=heartbeat_interval,
            # grace_period stays Optuna's default (2 x heartbeat_interval).
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
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
) -> tuple[optuna.Study, RDBStorage]:
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
