"""Trial changes pushed by PostgreSQL, so a study's status follows its trials within a
second instead of within a refresh interval.

A trigger on each schema's `trials` table (installed by the operator, as the role that owns
the table, when it first opens a storage) sends NOTIFY on CHANNEL with the study's name
when a trial is added or changes state; NOTIFY is delivered at commit, so the status never
runs ahead of the database, and it passes through PgBouncer in transaction mode. One LISTEN
connection per database (not per study or schema) is watched from the event loop and hands
each name to a callback. A listener that breaks is dropped and opened again by the next
refresh; the periodic refresh stays the safety net for anything missed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg2
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from optuna_operator.contract import redact
from optuna_operator.storage.pools import engine_kwargs

__all__ = ["CHANNEL", "TrialListener", "database_of", "install_trigger"]

log = logging.getLogger(__name__)

CHANNEL = "optuna_operator_trials"

# Unqualified names resolve in the trigger's own schema only (TG_TABLE_SCHEMA), whatever
# the session's search_path: the function is the table owner's and runs as the invoker.
_FUNCTION = f"""
CREATE OR REPLACE FUNCTION optuna_operator_notify_trial() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE study text;
BEGIN
    EXECUTE format('SELECT study_name FROM %I.studies WHERE study_id = $1', TG_TABLE_SCHEMA)
        INTO study USING NEW.study_id;
    -- Never NULL: this runs inside the workers' writes, which an error would fail.
    PERFORM pg_notify('{CHANNEL}', coalesce(study, ''));
    RETURN NULL;
END $$
"""
_TRIGGER = """
DO $$ BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = 'optuna_operator_notify_trial'
        AND tgrelid = to_regclass('trials')
    ) THEN
        CREATE TRIGGER optuna_operator_notify_trial
        AFTER INSERT OR UPDATE OF state ON trials
        FOR EACH ROW EXECUTE FUNCTION optuna_operator_notify_trial();
    END IF;
END $$
"""


def install_trigger(engine: Engine, url: str) -> bool:
    """Create the trigger on the `trials` table the search_path resolves to; idempotent.
    Needs the table's owner (the namespace's role, which created it); False without."""
    try:
        with engine.begin() as conn:
            conn.execute(text(_FUNCTION))
            conn.execute(text(_TRIGGER))
    except SQLAlchemyError as exc:
        # A storage made by hand, not the tables' owner: the refresh interval it is.
        reason = redact(str(exc).splitlines()[0], url)
        log.warning("No trial trigger: status follows trials at the refresh only: %s", reason)
        return False
    return True


def database_of(url: str) -> str:
    """What identifies a database across credentials: NOTIFY reaches every session on it."""
    parsed = make_url(url)
    return f"{parsed.host}:{parsed.port}/{parsed.database}"


class TrialListener:
    """One LISTEN connection per database; `on_change(study_name)` runs in the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[str], None]) -> None:
        self.loop = loop
        self.on_change = on_change
        self._connections: dict[str, Any] = {}  # database -> psycopg2 connection
        self._lock = threading.Lock()

    def listening(self, url: str) -> bool:
        """Whether trial changes on `url`'s database reach this listener."""
        with self._lock:
            return database_of(url) in self._connections

    def watch(self, url: str) -> None:
        """Listen on `url`'s database unless already listening; called from a reconcile
        thread (connecting blocks). A database that refuses is left to the refresh."""
        database = database_of(url)
        with self._lock:
            if database in self._connections:
                return
            self._connections[database] = None  # claimed: one connect per database at a time
        try:
            conn = self._connect(url)
        except (psycopg2.Error, OSError) as exc:
            with self._lock:
                del self._connections[database]
            reason = redact(str(exc).splitlines()[0], url)
            log.warning("Not listening for trial changes on %s: %s", database, reason)
            return
        with self._lock:
            self._connections[database] = conn
        self.loop.call_soon_threadsafe(self._register, database, conn)

    @staticmethod
    def _connect(url: str) -> Any:
        # psycopg2 itself: a connection of an engine's pool would be closed with its pool.
        parsed = make_url(url)
        params = parsed.translate_connect_args(username="user", database="dbname")
        settings = engine_kwargs(url, "optuna-operator-listen", pool_size=None)
        conn = psycopg2.connect(**params, **settings.get("connect_args", {}))
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        return conn

    def _register(self, database: str, conn: Any) -> None:
        self.loop.add_reader(conn.fileno(), self._read, database, conn)
        log.info("Listening for trial changes on %s", database)

    def _read(self, database: str, conn: Any) -> None:
        try:
            conn.poll()
        except Exception as exc:  # a broken connection: the next refresh opens another
            log.warning("Stopped listening for trial changes on %s: %s", database, exc)
            self._drop(database, conn)
            return
        names = {n.payload for n in conn.notifies}
        conn.notifies.clear()
        for name in names:
            self.on_change(name)

    def _drop(self, database: str, conn: Any) -> None:
        self.loop.remove_reader(conn.fileno())
        with self._lock:
            if self._connections.get(database) is conn:
                del self._connections[database]
        conn.close()

    def close(self) -> None:
        """Close every LISTEN connection (from the event loop)."""
        with self._lock:
            connections = [c for c in self._connections.values() if c is not None]
            self._connections.clear()
        for conn in connections:
            if not conn.closed:
                self.loop.remove_reader(conn.fileno())
                conn.close()
