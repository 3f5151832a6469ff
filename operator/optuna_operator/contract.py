"""What the operator and the worker must agree on, in one place both import.

The operator builds worker pods and reads what workers write into the study; the worker reads
what the operator put into its environment. Anything both sides name lives here, so neither
imports the other: environment variable names, exit codes, trial attribute keys, the
database pool settings, credential redaction and the mapping of directions onto Optuna's.
"""

from __future__ import annotations

import re
import warnings
from enum import IntEnum
from typing import Any, TypeVar
from urllib.parse import quote

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from optuna_operator.api import Direction

__all__ = [
    "CONFIG_ENV",
    "CONNECT_TIMEOUT_SECONDS",
    "ERROR_ATTR",
    "INDEX_ENV",
    "INTERRUPTED_ATTR",
    "MAX_RETRIES",
    "POD_NAMESPACE_ENV",
    "POD_NAME_ENV",
    "REPLACE_EXIT_CODES",
    "RETRY_OF_ATTR",
    "STDERR_ATTR",
    "STORAGE_ENV",
    "STORAGE_ENV_NAMES",
    "STORAGE_OUTAGE_ENV",
    "STUDY_ATTR_PREFIX",
    "STUDY_START_TIME_ATTR",
    "WARM_START_ATTR",
    "WORKER_ATTR",
    "ExitCode",
    "describe_url",
    "engine_kwargs",
    "from_optuna_direction",
    "heartbeat_storage",
    "redact",
    "to_optuna_direction",
]

# ---------------------------------------------------------------------- environment
CONFIG_ENV = "OPTUNA_OPERATOR_WORKER_CONFIG"
STORAGE_ENV = "OPTUNA_STORAGE_URL"
INDEX_ENV = "OPTUNA_OPERATOR_WORKER_INDEX"
POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
# How long a worker rides out an unreachable database before it exits (seconds); users may
# set it through spec.workers.env.
STORAGE_OUTAGE_ENV = "OPTUNA_OPERATOR_STORAGE_OUTAGE_SECONDS"
# Variables that may carry database credentials; objectives never see them.
STORAGE_ENV_NAMES = frozenset({STORAGE_ENV})


# ---------------------------------------------------------------------- exit codes
class ExitCode(IntEnum):
    """The worker's exit status. The Job's podFailurePolicy keys on it: CONFIG and
    TOO_MANY_FAILURES fail the Job at once (retrying cannot help); the REPLACE codes are
    ignored, so the pod is replaced without counting against backoffLimit."""

    DONE = 0  # budget, deadline or goal reached, or the study was already done
    ERROR = 1  # unexpected, or the database stayed unreachable: the Job may retry the pod
    CONFIG = 3  # permanent configuration error: FailJob
    TOO_MANY_FAILURES = 4  # more than budget.maxFailedTrials trials failed: FailJob
    # Stopped by SIGTERM (pod deleted, preempted, evicted) while the study still has work;
    # its trial was re-enqueued. Exiting 0 here would tell a Job without completions that
    # the work is done, and it would never start a replacement.
    INTERRUPTED = 5
    # A function objective outlived trialTimeoutSeconds: the trial was failed and the
    # process exits, because Python cannot stop a function stuck in native code.
    TRIAL_TIMEOUT = 6


# Exits that say "start another pod": the Job ignores them (podFailurePolicy action Ignore).
REPLACE_EXIT_CODES = (ExitCode.INTERRUPTED, ExitCode.TRIAL_TIMEOUT)


# ---------------------------------------------------------------------- study and trial attributes
STUDY_ATTR_PREFIX = "optuna_operator:"
STUDY_START_TIME_ATTR = f"{STUDY_ATTR_PREFIX}start_time"

# Why the objective failed. Only FAIL trials carrying it count against budget.maxFailedTrials:
# trials failed by a lost heartbeat or a SIGTERM are infrastructure, they are retried, and
# must not fail the study on a cluster with preemptible nodes.
ERROR_ATTR = "error"
# The last lines of a failed command's stderr.
STDERR_ATTR = "stderr_tail"
# Set on a trial stopped by SIGTERM; its parameters were enqueued again.
INTERRUPTED_ATTR = "interrupted"
# On the re-enqueued trial: the number of the interrupted one.
RETRY_OF_ATTR = "retry_of"
# pod/process that ran the trial, to find its logs.
WORKER_ATTR = "worker"
# On a trial copied by spec.warmStart: "<source study>#<trial number>".
WARM_START_ATTR = "warm_start_from"

# A trial whose worker keeps dying (OOM, a crashing CUDA kernel) is retried this often, not
# forever; preemptions rarely hit the same parameters more than twice.
MAX_RETRIES = 3

# ---------------------------------------------------------------------- database pools
POOL_RECYCLE_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 10


def engine_kwargs(
    url: str,
    application_name: str,
    pool_size: int | None = 2,
    statement_timeout_ms: int | None = None,
) -> dict[str, Any]:
    """SQLAlchemy engine settings for one process: a small pool, liveness checks, timeouts.

    Sized so workers x processes x (pool_size + 2) stays far below max_connections. A
    connect timeout and TCP keepalives make a database that stops answering an error within
    seconds instead of a thread blocked for minutes. `pool_size=None` keeps no connection
    open between uses (NullPool): for a process that talks to many credentials rarely.
    """
    kwargs: dict[str, Any]
    if pool_size is None:
        kwargs = {"poolclass": NullPool}
    else:
        kwargs = {
            # Postgres and the proxies in front of it drop idle connections during long trials.
            "pool_pre_ping": True,
            "pool_recycle": POOL_RECYCLE_SECONDS,
            "pool_size": pool_size,
            "max_overflow": 2,
            # Waiting for a free pooled connection is bounded too.
            "pool_timeout": 30,
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
        if statement_timeout_ms is not None:
            kwargs["connect_args"]["options"] = f"-c statement_timeout={statement_timeout_ms}"
    return kwargs


StorageT = TypeVar("StorageT", bound=RDBStorage)


def heartbeat_storage(
    url: str,
    heartbeat_interval: int,
    application_name: str,
    pool_size: int | None = 2,
    storage_class: type[StorageT] = RDBStorage,  # type: ignore[assignment]
) -> StorageT:
    """The RDBStorage workers run trials with, and the operator fails stale trials with:
    heartbeats on, a trial whose heartbeat stopped retried up to MAX_RETRIES times. Workers
    pass their subclass that outlasts a database outage."""
    with warnings.catch_warnings():
        # Heartbeats are the documented way to recover preempted trials; Optuna still labels
        # them experimental, which would only add noise to every log.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return storage_class(
            url,
            engine_kwargs=engine_kwargs(url, application_name, pool_size),
            # The operator created the schema with the study; workers racing to create
            # tables only add lock contention.
            skip_table_creation=True,
            heartbeat_interval=heartbeat_interval,
            # grace_period stays Optuna's default (2 x heartbeat_interval).
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )


# ---------------------------------------------------------------------- credentials
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def redact(message: str, url: str | None = None) -> str:
    """Remove credentials from a message before it reaches a log, event, status or a
    termination message: the URL becomes host/database, its password and any other
    `scheme://user:password@` in the text become ***."""
    if url:
        message = message.replace(url, describe_url(url))
        try:
            password = make_url(url).password
        except ArgumentError:
            password = None
        # The text may hold it as typed in the URL (percent-encoded) or decoded.
        for secret in {password, quote(password, safe="")} if password else ():
            message = message.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1***@", message)


def describe_url(url: str) -> str:
    """backend://host:port/database for logs; the URL itself carries the password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable storage URL>"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()}://{parsed.host or ''}{port}/{parsed.database or ''}"


# ---------------------------------------------------------------------- directions
def to_optuna_direction(direction: Direction) -> StudyDirection:
    """The spec's direction as Optuna's enum."""
    return StudyDirection.MAXIMIZE if direction == Direction.MAXIMIZE else StudyDirection.MINIMIZE


def from_optuna_direction(direction: StudyDirection) -> Direction:
    """Optuna's direction as the spec's enum."""
    return Direction.MAXIMIZE if direction == StudyDirection.MAXIMIZE else Direction.MINIMIZE
