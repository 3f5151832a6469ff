"""Engine settings on PostgreSQL that every process shares: pool sizes, timeouts, liveness
checks. No Optuna here: the operator process opens its engines with these and never imports
Optuna (engines.py adds Optuna's storages for the workers and the operator's child process)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "IDLE_PING_SECONDS",
    "POOL_RECYCLE_SECONDS",
    "engine_kwargs",
    "ping_after_idle",
]

POOL_RECYCLE_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 10
# A pooled connection unused for longer than this is pinged before it is handed out; one used
# more recently is not: a worker checks out ~15 connections per trial, and a ping on each was
# 15% of its time per trial on a trivial objective (issue 14's profile).
IDLE_PING_SECONDS = 10.0


def engine_kwargs(
    url: str,
    application_name: str,
    pool_size: int | None = 2,
    statement_timeout_ms: int | None = None,
    ping_every_checkout: bool = True,
    search_path: str | None = None,
) -> dict[str, Any]:
    """SQLAlchemy engine settings for one process: a small pool, liveness checks, timeouts.

    Sized so workers x processes x (pool_size + 2) stays far below max_connections. A
    connect timeout and TCP keepalives make a database that stops answering an error within
    seconds instead of a thread blocked for minutes. `pool_size=None` keeps no connection
    open between uses (NullPool): for a process that talks to many credentials rarely.
    `ping_every_checkout=False` is for engines given `ping_after_idle` instead.
    `search_path` pins where unqualified names resolve (the admin's connections: a name a
    tenant could plant in `public` must never resolve to the tenant's object).
    """
    kwargs: dict[str, Any]
    if pool_size is None:
        kwargs = {"poolclass": NullPool}
    else:
        kwargs = {
            # Postgres and the proxies in front of it drop idle connections during long trials.
            "pool_pre_ping": ping_every_checkout,
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
        options = []
        if statement_timeout_ms is not None:
            options.append(f"-c statement_timeout={statement_timeout_ms}")
        if search_path is not None:
            # libpq's options: a space separates settings, so the list has none.
            options.append(f"-c search_path={search_path.replace(' ', '')}")
        if options:
            kwargs["connect_args"]["options"] = " ".join(options)
    return kwargs


def ping_after_idle(engine: Engine, idle_seconds: float = IDLE_PING_SECONDS) -> None:
    """Check a pooled connection before use only when it sat idle for `idle_seconds`.

    What `pool_pre_ping` protects against (a server or proxy that dropped an idle connection
    during a long trial) happens to idle connections; a failed ping makes the pool open a new
    one (SQLAlchemy's documented custom pessimistic disconnect handling).
    """

    def connected(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_USED] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is not None and time.monotonic() - last_used < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as err:
            raise DisconnectionError(f"an idle pooled connection is gone: {err}") from err

    event.listen(engine, "connect", connected)
    event.listen(engine, "checkin", connected)
    event.listen(engine, "checkout", checked_out)


_LAST_USED = "optuna_operator_last_used"
