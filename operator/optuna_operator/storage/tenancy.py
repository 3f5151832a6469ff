"""One PostgreSQL role and schema per namespace, so no tenant can read another's studies.

With the operator's admin credential (its default storage Secret, which never leaves the
operator's namespace) it creates, idempotently, for each namespace with TuningStudies:

- a LOGIN role (NOSUPERUSER NOCREATEDB NOCREATEROLE) owning a schema of the same name, with
  its `search_path` set to that schema, so Optuna's tables (and `alembic_version`) for the
  namespace live there: the operator and the workers connect as this role;
- a read-only role for dashboards: USAGE on the schema, SELECT on its tables, present and
  future (default privileges).

Every admin connection resolves unqualified names in `pg_catalog` only and names every
other object with its schema: a tenant who could create objects in `public` (PostgreSQL 14
and older grant that to everyone) cannot plant a view or function the admin would run. On
the first connection the operator also revokes that grant and says so in its log. Tenant
roles carry a connection limit and statement and idle-transaction timeouts
(`TenantLimits`), so one namespace cannot take the server's connections or hold locks.

The namespace receives one Secret, `optuna-storage`, holding only its own role's URL (`url`)
and the read-only role's password (`readonly-password`); with a connection pooler for workers
(`--worker-pooler host:port`, the chart's PgBouncer) also the same role's URL through the
pooler (`pooled-url`), which the worker pods then read. Passwords are generated once and
read back from that Secret, so a restarted operator needs no state; deleting the Secret
rotates both passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from optuna_operator.children.manifests import MANAGED_BY
from optuna_operator.contract import redact
from optuna_operator.kube import Cluster
from optuna_operator.lifecycle.conditions import ReasonedError
from optuna_operator.storage.admin import AdminEngines

__all__ = [
    "POOLED_URL_KEY",
    "READONLY_PASSWORD_KEY",
    "SCHEMA_COMMENT",
    "TENANT_LABEL",
    "TENANT_SECRET",
    "URL_KEY",
    "Tenancy",
    "TenancyError",
    "TenantCredentials",
    "TenantLimits",
    "TenantNames",
    "archive_name",
    "pooled_url",
    "retire_schema_of_deleted_namespace",
    "scram_verifier",
    "tenant_names",
    "tenant_secret",
    "with_user",
]

log = logging.getLogger(__name__)

TENANT_SECRET = "optuna-storage"
URL_KEY = "url"
READONLY_PASSWORD_KEY = "readonly-password"
# The namespace role's URL through the workers' pooler (PgBouncer), when there is one.
POOLED_URL_KEY = "pooled-url"
# Marks the Secret as the operator's: one without it is a user's and is never overwritten.
TENANT_LABEL = "optuna-operator.io/tenant-credentials"
# The Secret is read again at most this often: a deleted Secret (a rotation) or a changed
# admin URL is noticed within a minute, and a refresh does not GET it every time.
CHECK_TTL_SECONDS = 60.0
# PostgreSQL truncates identifiers to 63 bytes; longer names would silently collide.
MAX_IDENTIFIER = 63
# Generated passwords are URL-safe base64. Passwords read back from the Secret (which the
# namespace's users may edit) must match this before they reach SQL.
_PASSWORD = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


@dataclass(frozen=True)
class TenantLimits:
    """What one namespace's roles may hold of the server (chart values `tenantLimits`)."""

    # Concurrent connections per role: workers x processes x (pool + overflow) must fit.
    connection_limit: int = 200
    statement_timeout_ms: int = 60_000
    idle_in_transaction_timeout_ms: int = 60_000


class TenancyError(ReasonedError):
    """The namespace's credentials cannot be set up for a reason a user can act on."""


@dataclass(frozen=True)
class TenantNames:
    """PostgreSQL names of one namespace: its role (owning the schema of the same name)
    and its read-only role."""

    role: str
    readonly_role: str

    @property
    def schema(self) -> str:
        return self.role


def tenant_names(namespace: str) -> TenantNames:
    """Role and schema names derived injectively from a namespace name.

    Namespace names are DNS labels (`[a-z0-9-]`, at most 63 characters), so `-` -> `_`
    is one-to-one. Names that would pass 63 characters keep a readable prefix plus a hash
    of the whole name, under another marker (`h_` instead of `t_`), so a hashed name never
    equals a plain one. The role prefixes `rw_`/`ro_` keep the two roles of a namespace
    apart from each other and from every other namespace's.
    """
    base = namespace.replace("-", "_")
    key = f"t_{base}"
    if len("optuna_rw_") + len(key) > MAX_IDENTIFIER:
        digest = hashlib.sha256(namespace.encode()).hexdigest()[:16]
        key = f"h_{base[: MAX_IDENTIFIER - len('optuna_rw_') - 2 - 17]}_{digest}"
    return TenantNames(role=f"optuna_rw_{key}", readonly_role=f"optuna_ro_{key}")


@dataclass(frozen=True)
class TenantCredentials:
    """What a namespace's studies and dashboards connect with."""

    namespace: str
    url: str  # the namespace role's URL, password included: never logged
    readonly_url: str  # the read-only role's URL without a password (libpq reads PGPASSWORD)
    secret: str = TENANT_SECRET
    # The key worker pods read: the pooled URL when workers go through a pooler.
    url_key: str = URL_KEY
    readonly_password_key: str = READONLY_PASSWORD_KEY


def with_user(admin_url: str, user: str, password: str | None) -> str:
    """The admin URL with another user; no password at all when `password` is None
    (URL.set would keep the admin's)."""
    admin = make_url(admin_url)
    url = URL.create(
        admin.drivername,
        username=user,
        password=password,
        host=admin.host,
        port=admin.port,
        database=admin.database,
        query=admin.query,
    )
    return url.render_as_string(hide_password=False)


def pooled_url(url: str, pooler: str) -> str:
    """The same URL (role, password, database, options) with the pooler's `host:port`."""
    host, _, port = pooler.rpartition(":")
    return make_url(url).set(host=host, port=int(port)).render_as_string(hide_password=False)


def tenant_secret(
    namespace: str,
    names: TenantNames,
    url: str,
    readonly_password: str,
    pooled: str | None = None,
) -> dict[str, Any]:
    """The namespace's Secret: its own role's URL (direct and, with a pooler, pooled) and
    the read-only role's password only."""
    data = {
        URL_KEY: base64.b64encode(url.encode()).decode(),
        READONLY_PASSWORD_KEY: base64.b64encode(readonly_password.encode()).decode(),
    }
    if pooled is not None:
        data[POOLED_URL_KEY] = base64.b64encode(pooled.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": TENANT_SECRET,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "optuna-storage",
                "app.kubernetes.io/component": "storage",
                "app.kubernetes.io/part-of": "optuna-operator",
                "app.kubernetes.io/managed-by": MANAGED_BY,
                TENANT_LABEL: "true",
            },
            "annotations": {
                # For people, not for the operator: which roles these credentials are.
                "optuna-operator.io/role": names.role,
                "optuna-operator.io/readonly-role": names.readonly_role,
                "optuna-operator.io/rotate": "delete this Secret to rotate both passwords",
            },
        },
        "type": "Opaque",
        "data": data,
    }


def _decode(secret: dict[str, Any], key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw is not None else None


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of a password, computed here so the plaintext is
    never part of a statement the server might log (log_statement, errors)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _new_password() -> str:
    return secrets.token_urlsafe(24)


SCHEMA_COMMENT = "optuna-operator namespace uid="


def archive_name(names: TenantNames, namespace_uid: str) -> str:
    """Where the schema of a deleted namespace goes when it still holds studies."""
    return f"{names.schema[: MAX_IDENTIFIER - 13]}_was_{namespace_uid.replace('-', '')[:8]}"


def retire_schema_of_deleted_namespace(
    conn: Connection, names: TenantNames, namespace_uid: str | None
) -> str | None:
    """A namespace re-created under the same name must not inherit the old one's studies.
    The schema records the uid of the namespace it was made for; when that differs, the old
    schema is dropped if it holds no study, else it is renamed (`<schema>_was_<old uid>`)
    and handed to the admin, out of the role's reach. Returns what was done, for the log."""
    if namespace_uid is None:
        return None  # the uid could not be read: nothing to compare
    quote = conn.dialect.identifier_preparer.quote_identifier
    recorded = conn.execute(
        text(
            "SELECT pg_catalog.obj_description(n.oid, 'pg_namespace') "
            "FROM pg_catalog.pg_namespace n WHERE n.nspname = :schema"
        ),
        {"schema": names.schema},
    ).first()
    if recorded is None:
        return None  # no schema yet
    comment = recorded[0] or ""
    if not comment.startswith(SCHEMA_COMMENT):
        return None  # made before schemas recorded their namespace: adopted as it is
    old_uid = comment.removeprefix(SCHEMA_COMMENT)
    if old_uid == namespace_uid:
        return None
    schema, role = quote(names.schema), quote(names.role)
    studies = conn.execute(
        text(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = 'studies'"
        ),
        {"schema": names.schema},
    ).first()
    held = studies is not None and bool(
        conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {schema}.studies)")).scalar()
    )
    if not held:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        return f"dropped schema {names.schema} of a deleted namespace (uid {old_uid})"
    archived = archive_name(names, old_uid)
    # The role keeps its name (the new namespace gets it), so everything it owned in this
    # database (the schema and its tables) goes to the admin first.
    conn.execute(text(f"REASSIGN OWNED BY {role} TO CURRENT_USER"))
    conn.execute(text(f"REVOKE ALL ON SCHEMA {schema} FROM {quote(names.readonly_role)}"))
    conn.execute(text(f"ALTER SCHEMA {schema} RENAME TO {quote(archived)}"))
    return (
        f"renamed schema {names.schema} of a deleted namespace (uid {old_uid}) to {archived}: "
        "it holds studies; a database administrator may keep or drop it"
    )


def provision(
    conn: Connection,
    names: TenantNames,
    password: str,
    readonly_password: str,
    limits: TenantLimits = TenantLimits(),
    namespace_uid: str | None = None,
) -> None:
    """Create or update the namespace's roles, schema and grants on an admin connection;
    idempotent. The admin needs CREATEROLE (or superuser) and CREATE on the database."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    role, reader, schema = (quote(n) for n in (names.role, names.readonly_role, names.schema))
    _ensure_role(conn, names.role, password, schema, limits)
    _ensure_role(conn, names.readonly_role, readonly_password, schema, limits)
    # A CREATEROLE admin (not a superuser) must be a member of the role to create a schema
    # it owns and to set default privileges for it (PostgreSQL 15).
    conn.execute(text(f"GRANT {role} TO CURRENT_USER"))
    retired = retire_schema_of_deleted_namespace(conn, names, namespace_uid)
    if retired is not None:
        log.warning("Namespace of role %s was re-created: %s", names.role, retired)
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}"))
    if namespace_uid is not None:
        # Literal, not a bind parameter (COMMENT takes none); a uid is [0-9a-f-] only.
        uid = re.sub(r"[^0-9a-f-]", "", namespace_uid)
        conn.execute(text(f"COMMENT ON SCHEMA {schema} IS '{SCHEMA_COMMENT}{uid}'"))
    conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {reader}"))
    conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {reader}"))
    conn.execute(
        text(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {role} IN SCHEMA {schema} "
            f"GRANT SELECT ON TABLES TO {reader}"
        )
    )


def _ensure_role(
    conn: Connection, name: str, password: str, schema: str, limits: TenantLimits
) -> None:
    """Create or update one LOGIN role of a namespace: its password, search_path (the
    quoted `schema`) and limits. A role of that name with privileges the operator never
    grants is refused: its password must never reach a namespace."""
    quoted = conn.dialect.identifier_preparer.quote_identifier(name)
    existing = conn.execute(
        text(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_catalog.pg_roles "
            "WHERE rolname = :n"
        ),
        {"n": name},
    ).scalar()
    if existing:
        raise TenancyError(
            "TenantRoleConflict",
            f"PostgreSQL role {name} exists with privileges the operator never grants; "
            "a database administrator must rename or drop it",
        )
    # Only the SCRAM verifier reaches the server, never the password: statements may be
    # logged (log_statement, errors). It is a bind parameter (psycopg2 quotes it).
    create = f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :pw"
    alter = f"ALTER ROLE {quoted} LOGIN PASSWORD :pw"
    conn.execute(text(create if existing is None else alter), {"pw": scram_verifier(password)})
    conn.execute(text(f"ALTER ROLE {quoted} SET search_path = {schema}"))
    # Integers formatted by Python (DDL takes no bind parameters): nothing to inject.
    conn.execute(text(f"ALTER ROLE {quoted} CONNECTION LIMIT {int(limits.connection_limit)}"))
    conn.execute(
        text(f"ALTER ROLE {quoted} SET statement_timeout = {int(limits.statement_timeout_ms)}")
    )
    conn.execute(
        text(
            f"ALTER ROLE {quoted} SET idle_in_transaction_session_timeout = "
            f"{int(limits.idle_in_transaction_timeout_ms)}"
        )
    )


def _provisioned_digest(
    admin_url: str,
    names: TenantNames,
    password: str,
    readonly_password: str,
    limits: TenantLimits,
    namespace_uid: str | None,
) -> str:
    parts = (admin_url, names.role, password, readonly_password, repr(limits), str(namespace_uid))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class Tenancy:
    """Ensures each namespace's roles, schema and Secret; safe under concurrent reconciles
    (one namespace is set up by one thread at a time)."""

    def __init__(
        self,
        cluster: Cluster,
        on_rotate: Callable[[str], None] | None = None,
        pooler: str | None = None,
        limits: TenantLimits = TenantLimits(),
    ) -> None:
        self.cluster = cluster
        self.on_rotate = on_rotate
        self.limits = limits
        # `host:port` of the workers' connection pooler; None: workers connect directly.
        self.pooler = pooler
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        # namespace -> (credentials, digest of what was provisioned, checked at)
        self._cache: dict[str, tuple[TenantCredentials, str, float]] = {}
        self.admin = AdminEngines()

    def ensure(self, namespace: str, admin_url: str) -> TenantCredentials:
        """The namespace's credentials, creating or repairing roles, schema and Secret."""
        with self._lock:
            lock = self._locks.setdefault(namespace, threading.Lock())
        with lock:
            cached = self._cache.get(namespace)
            if cached is not None and time.monotonic() - cached[2] < CHECK_TTL_SECONDS:
                return cached[0]
            creds, digest = self._ensure(namespace, admin_url, cached[1] if cached else None)
            if cached is not None and cached[0].url != creds.url and self.on_rotate is not None:
                self.on_rotate(cached[0].url)
            self._cache[namespace] = (creds, digest, time.monotonic())
            return creds

    def legacy_study_exists(self, admin_url: str, study_name: str) -> bool:
        """Whether operator 0.1.0 left a study of that name under the admin role (see
        `AdminEngines.legacy_study_exists`); raises TenancyError when it cannot tell."""
        try:
            return self.admin.legacy_study_exists(admin_url, study_name)
        except SQLAlchemyError as exc:
            raise TenancyError(
                "StorageUnreachable",
                f"Cannot use the storage: {redact(str(exc).splitlines()[0], admin_url)}",
            ) from None

    def close(self) -> None:
        """Dispose of the admin engines."""
        self.admin.close()

    def forget(self, namespace: str) -> None:
        """Check the namespace again on its next use: its Secret, its uid and its roles
        (a changed URL then drops the old one's storage through `on_rotate`)."""
        with self._lock:
            cached = self._cache.get(namespace)
            if cached is not None:
                self._cache[namespace] = (cached[0], cached[1], float("-inf"))

    def _ensure(
        self, namespace: str, admin_url: str, provisioned: str | None
    ) -> tuple[TenantCredentials, str]:
        """Read the namespace's uid and Secret, provision the roles when what they were
        given differs, then write the Secret: the roles get a password before the Secret
        shows it, so whoever reads the Secret (a worker, the CLI, a notebook) can log in."""
        names = tenant_names(namespace)
        try:
            make_url(admin_url)
        except ArgumentError:
            raise TenancyError(
                "StorageUnreachable", "The operator's default storage URL cannot be parsed"
            ) from None
        # A namespace re-created under the same name has another uid: its schema is retired.
        uid = self.cluster.namespace_uid(namespace)
        secret = self.cluster.get("Secret", namespace, TENANT_SECRET)
        while True:  # twice at most: a Secret another replica created first is used
            if secret is None:
                password, readonly_password = _new_password(), _new_password()
            else:
                password, readonly_password = self._read_back(namespace, secret)
            url = with_user(admin_url, names.role, password)
            pooled = self._pooled(url)
            digest = _provisioned_digest(
                admin_url, names, password, readonly_password, self.limits, uid
            )
            if digest != provisioned:
                self._provision(namespace, admin_url, names, password, readonly_password, uid)
                provisioned = digest
            body = tenant_secret(namespace, names, url, readonly_password, pooled)
            creds = TenantCredentials(
                namespace=namespace,
                url=url,
                readonly_url=with_user(admin_url, names.readonly_role, None),
                url_key=URL_KEY if self.pooler is None else POOLED_URL_KEY,
            )
            if secret is None:
                # Create only: another replica or reconcile that made it first wins.
                secret, created = self.cluster.create(body)
                if not created:
                    continue
                log.info("Created Secret %s/%s", namespace, TENANT_SECRET)
            elif _decode(secret, URL_KEY) != url or (
                pooled is not None and _decode(secret, POOLED_URL_KEY) != pooled
            ):
                # The admin URL or the pooler moved (host, port, database) or a URL was edited.
                self.cluster.apply(body)
            return creds, digest

    def _provision(
        self,
        namespace: str,
        admin_url: str,
        names: TenantNames,
        password: str,
        readonly_password: str,
        namespace_uid: str | None,
    ) -> None:
        """Create or repair the namespace's roles and schema."""
        try:
            with self.admin.engine(admin_url).begin() as conn:
                provision(conn, names, password, readonly_password, self.limits, namespace_uid)
        except SQLAlchemyError as exc:
            message = redact(str(exc).splitlines()[0], admin_url)
            for secret_value in (password, readonly_password):
                message = message.replace(secret_value, "***")
            raise TenancyError(
                "TenantProvisioningFailed",
                f"Could not set up PostgreSQL role {names.role} for namespace "
                f"{namespace} (the operator's storage role needs CREATEROLE): {message}",
            ) from None
        log.info("Ensured PostgreSQL role and schema %s for namespace %s", names.role, namespace)

    def _pooled(self, url: str) -> str | None:
        return None if self.pooler is None else pooled_url(url, self.pooler)

    @staticmethod
    def _read_back(namespace: str, secret: dict[str, Any]) -> tuple[str, str]:
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(TENANT_LABEL) != "true":
            raise TenancyError(
                "SecretConflict",
                f"Secret {TENANT_SECRET} in namespace {namespace} was not created by the "
                f"operator (no label {TENANT_LABEL}); rename or delete it so the operator can "
                "create the namespace's storage credentials",
            )
        raw_url = _decode(secret, URL_KEY) or ""
        readonly_password = _decode(secret, READONLY_PASSWORD_KEY) or ""
        try:
            password = make_url(raw_url).password or ""
        except ArgumentError:
            password = ""
        if not (_PASSWORD.match(str(password)) and _PASSWORD.match(readonly_password)):
            raise TenancyError(
                "SecretConflict",
                f"Secret {TENANT_SECRET} in namespace {namespace} holds credentials the "
                "operator did not generate; delete it to generate new ones",
            )
        return str(password), readonly_password
