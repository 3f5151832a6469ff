"""The operator's admin connections to PostgreSQL (its default storage role): one unpooled
engine per admin URL, each resolving unqualified names in `pg_catalog` only, and the checks
that keep a tenant from planting objects the admin would run (CREATE on `public` revoked,
Optuna's tables of operator 0.1.0 read only when they are the admin's own).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from optuna_operator.contract import redact
from optuna_operator.storage.pools import engine_kwargs

__all__ = [
    "ADMIN_SEARCH_PATH",
    "LEGACY_SCHEMA",
    "OPTUNA_TABLES",
    "STATEMENT_TIMEOUT_MS",
    "AdminEngines",
    "revoke_public_create",
    "untrusted_tables",
]

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 30_000
# Unqualified names on admin connections resolve only in the system catalog.
ADMIN_SEARCH_PATH = "pg_catalog"
# Where operator 0.1.0 kept every study: the admin's default search_path.
LEGACY_SCHEMA = "public"
# Optuna's tables (RDBStorage models, Alembic's version table): what a 0.1.0 study is
# read from, so each must be the admin's own table before the admin reads any of them.
OPTUNA_TABLES = (
    "studies",
    "study_directions",
    "study_user_attributes",
    "study_system_attributes",
    "trials",
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_heartbeats",
    "version_info",
    "alembic_version",
)


def revoke_public_create(conn: Connection) -> bool:
    """Take CREATE on schema `public` from PUBLIC where the server still grants it
    (PostgreSQL 14 and older, or a database upgraded from one); whether it was revoked."""
    granted = conn.execute(
        text(
            "SELECT pg_catalog.has_schema_privilege('public', n.oid, 'CREATE') "
            "FROM pg_catalog.pg_namespace n WHERE n.nspname = 'public'"
        )
    ).scalar()
    if not granted:
        return False
    conn.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    return True


def untrusted_tables(conn: Connection, schema: str) -> list[str]:
    """Optuna's tables in `schema` that are not plain tables of the connected role (a view
    or a table some other role made): the admin must not read them, as a view or a trigger
    there would run with the admin's rights."""
    rows = conn.execute(
        text(
            "SELECT c.relname, c.relkind, pg_catalog.pg_get_userbyid(c.relowner) "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = ANY(:tables)"
        ),
        {"schema": schema, "tables": list(OPTUNA_TABLES)},
    ).all()
    user = conn.execute(text("SELECT current_user")).scalar()
    return sorted(
        f"{schema}.{name} ({'table' if kind == 'r' else 'not a table'} owned by {owner})"
        for name, kind, owner in rows
        if kind != "r" or owner != user
    )


class AdminEngines:
    """Admin engines by URL, made once each and safe under concurrent reconciles."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}

    def close(self) -> None:
        """Dispose of the admin engines."""
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.dispose()

    def engine(self, admin_url: str) -> Engine:
        """The unpooled engine of an admin URL, hardened on first use."""
        created = False
        with self._lock:
            engine = self._engines.get(admin_url)
            if engine is None:
                created = True
                # Unpooled: namespaces are set up rarely; no admin connection idles.
                engine = create_engine(
                    admin_url,
                    **engine_kwargs(
                        admin_url,
                        "optuna-operator-admin",
                        None,
                        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
                        search_path=ADMIN_SEARCH_PATH,
                    ),
                )
                self._engines[admin_url] = engine
        if created:
            # Outside the lock every namespace shares: a slow server stalls this thread only.
            self._harden(engine)
        return engine

    @staticmethod
    def _harden(engine: Engine) -> None:
        """Once per admin URL: no one but the schema's owner creates objects in `public`."""
        try:
            with engine.begin() as conn:
                if revoke_public_create(conn):
                    log.warning(
                        "Revoked CREATE on schema public from PUBLIC: this PostgreSQL let every "
                        "role create objects there, where a tenant could plant one for the "
                        "operator's storage role to run"
                    )
        except SQLAlchemyError as exc:
            # Not fatal: admin connections never resolve names in `public` anyway.
            log.error(
                "Could not revoke CREATE on schema public from PUBLIC (%s); a database "
                "administrator should run: REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                redact(str(exc).splitlines()[0], engine.url.render_as_string(False)),
            )

    def legacy_study_exists(self, admin_url: str, study_name: str) -> bool:
        """Whether operator 0.1.0 left a study of that name under the admin role (in
        `public`): such a study must be moved with `optuna-operator migrate`, not shadowed by
        a new empty one in the namespace's schema. Optuna's tables there are read only when
        they are the admin's own tables, never a view or table another role planted. Raises
        SQLAlchemyError when the server cannot be used."""
        with self.engine(admin_url).connect() as conn:
            untrusted = untrusted_tables(conn, LEGACY_SCHEMA)
            if untrusted:
                log.warning(
                    "Not reading %s: it is not the operator's own storage role's table; "
                    "a database administrator should inspect and drop it",
                    ", ".join(untrusted),
                )
                return False
            if (
                conn.execute(text(f"SELECT to_regclass('{LEGACY_SCHEMA}.studies')")).scalar()
                is None
            ):
                return False
            found = conn.execute(
                text(f"SELECT 1 FROM {LEGACY_SCHEMA}.studies WHERE study_name = :n"),
                {"n": study_name},
            ).first()
        return found is not None
