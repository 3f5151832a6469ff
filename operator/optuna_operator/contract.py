"""What the operator and the worker must agree on, in one place both import.

The operator builds worker pods and reads what workers write into the study; the worker reads
what the operator put into its environment. Anything both sides name lives here, so neither
imports the other: environment variable names, exit codes, trial attribute keys, the retry
limit, credential redaction and the mapping of directions onto Optuna's. Code that opens
storages lives in storage/.
"""

from __future__ import annotations

import logging
import re
from enum import IntEnum
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from optuna_operator.api import Direction

if TYPE_CHECKING:
    from optuna.study import StudyDirection

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_ENV",
    "ERROR_ATTR",
    "INDEX_ENV",
    "INTERRUPTED_ATTR",
    "MAX_RETRIES",
    "OBJECTIVE_SOURCE_ENV",
    "POD_NAMESPACE_ENV",
    "POD_NAME_ENV",
    "REPLACE_EXIT_CODES",
    "RETRY_OF_ATTR",
    "STDERR_ATTR",
    "STOP_REQUEST_ATTR",
    "STORAGE_ENV",
    "STORAGE_ENV_NAMES",
    "STORAGE_OUTAGE_ENV",
    "STUDY_ATTR_PREFIX",
    "STUDY_START_TIME_ATTR",
    "WARM_START_ATTR",
    "WARM_START_COUNT_ATTR",
    "WORKER_ATTR",
    "ConfigError",
    "ExitCode",
    "TooManyFailures",
    "describe_url",
    "from_optuna_direction",
    "redact",
    "to_optuna_direction",
]

# ---------------------------------------------------------------------- environment
CONFIG_ENV = "OPTUNA_OPERATOR_WORKER_CONFIG"
STORAGE_ENV = "OPTUNA_STORAGE_URL"
INDEX_ENV = "OPTUNA_OPERATOR_WORKER_INDEX"
POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
# The source of objective.function's module, from objective.source's ConfigMap key.
OBJECTIVE_SOURCE_ENV = "OPTUNA_OPERATOR_OBJECTIVE_SOURCE"
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


class ConfigError(Exception):
    """The configuration cannot work, so retrying the pod would only fail again (exit code
    CONFIG)."""


class TooManyFailures(Exception):
    """More trials failed than budget.maxFailedTrials allows (exit code TOO_MANY_FAILURES)."""


# ---------------------------------------------------------------------- study and trial attributes
STUDY_ATTR_PREFIX = "optuna_operator:"
STUDY_START_TIME_ATTR = f"{STUDY_ATTR_PREFIX}start_time"
# The operator's request that workers start no more trials: {"reason": "TimeBudget",
# "timeoutSeconds": N}. Active time is seen by the operator only; the budget it was written
# for is part of it, so a raised budget.timeoutSeconds is not stopped by an old request.
STOP_REQUEST_ATTR = f"{STUDY_ATTR_PREFIX}stop"

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
# On the study: how many trials spec.warmStart copied into it (set once, at creation).
WARM_START_COUNT_ATTR = f"{STUDY_ATTR_PREFIX}warm_start_trials"

# A trial whose worker keeps dying (OOM, a crashing CUDA kernel) is retried this often, not
# forever; preemptions rarely hit the same parameters more than twice.
MAX_RETRIES = 3

# ---------------------------------------------------------------------- credentials
# `scheme://user:password@` anywhere in a text (the user may be empty: redis://:pw@host).
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
# A password a driver, a DSN or a document spells out: password=..., passwd: '...',
# "password": "..." (the value quoted, or up to a space, quote, `,;)&}` or the end); not
# MySQL's "(using password: YES)", which says only whether one was sent.
_KEYWORD_PASSWORD = re.compile(
    r"""(?i)(\b(?:password|passwd)["']?\s*[=:]\s*)(?!(?:YES|NO)\))"""
    r"""('[^']*'|"[^"]*"|[^\s'",;)&}]+)"""
)


def _standalone(secret: str) -> re.Pattern[str]:
    """The secret where it stands as a token of its own: an edge that is a letter, a digit or
    `_` must not touch another one (the password `p` is no part of `psycopg2`)."""
    before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return re.compile(before + re.escape(secret) + after)


def _hide_keyword_value(match: re.Match[str]) -> str:
    value = match.group(2)
    quote_char = value[0] if value[0] in "'\"" else ""
    return f"{match.group(1)}{quote_char}***{quote_char}"


def redact(message: str, url: str | None = None) -> str:
    """Remove credentials from a message before it reaches a log, event, status, trial
    attribute or termination message.

    With `url`, the URL (as given or as SQLAlchemy renders it) becomes backend://host:port/db,
    and its password, decoded or percent-encoded, becomes *** where it stands as a token of
    its own (in a URL, after `password=`, in quotes, between spaces), never inside another
    word. Without it too, every `scheme://user:password@` and `password=...` loses its secret.
    """
    if url:
        try:
            parsed = make_url(url)
        except ArgumentError:
            parsed = None
        forms = {url} | ({parsed.render_as_string(hide_password=False)} if parsed else set())
        for form in sorted(forms, key=len, reverse=True):
            message = message.replace(form, describe_url(url))
        password = parsed.password if parsed else None
        if password:
            # The text may hold it as typed in the URL (percent-encoded) or decoded.
            secrets = {password, quote(password, safe=""), quote(password), quote_plus(password)}
            for secret in sorted(secrets, key=len, reverse=True):
                message = _standalone(secret).sub("***", message)
    message = _KEYWORD_PASSWORD.sub(_hide_keyword_value, message)
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
# Optuna is imported only where a direction becomes Optuna's enum: the operator process reads
# directions as the names stored in the database and never imports Optuna (numpy with it).
def to_optuna_direction(direction: Direction) -> StudyDirection:
    """The spec's direction as Optuna's enum."""
    from optuna.study import StudyDirection

    return StudyDirection.MAXIMIZE if direction == Direction.MAXIMIZE else StudyDirection.MINIMIZE


def from_optuna_direction(direction: StudyDirection | str) -> Direction:
    """Optuna's direction, or its member's name as the database stores it ('MAXIMIZE'), as
    the spec's enum."""
    name = direction if isinstance(direction, str) else direction.name
    return Direction.MAXIMIZE if name == "MAXIMIZE" else Direction.MINIMIZE
