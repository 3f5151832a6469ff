"""A real PgBouncer (Debian's package) in front of one of the bed's PostgreSQL clusters.

Configured as the chart's PgBouncer is: transaction pooling, SCRAM, and `auth_user` +
`auth_query` through the chart's `files/pgbouncer-auth.sql`, so the roles the operator creates
per namespace at run time log in through it with their own passwords. PgBouncer refuses to run
as root, so as root it runs as `postgres`, with its files in the cluster's private directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from testbed.errors import BedError
from testbed.paths import HACK_DIR, REPO_ROOT
from testbed.ports import free_port
from testbed.postgres import Postgres, run_sql
from testbed.supervisor import Supervisor

__all__ = [
    "AUTH_ROLE",
    "AUTH_SQL",
    "Console",
    "PgBouncer",
    "ensure_pgbouncer_installed",
    "install_auth_lookup",
    "pgbouncer_show",
    "pgbouncer_version",
    "start_pgbouncer",
]

PGBOUNCER = Path("/usr/sbin/pgbouncer")
AUTH_SQL = REPO_ROOT / "charts" / "optuna-operator" / "files" / "pgbouncer-auth.sql"
AUTH_ROLE = "optuna_pgbouncer"
ADMIN_USER = "pgbouncer_admin"


@dataclass(frozen=True)
class PgBouncer:
    port: int
    admin_password: str  # of ADMIN_USER on the `pgbouncer` admin console

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def ensure_pgbouncer_installed() -> Path:
    """The pgbouncer binary, installing Debian's package first when it is missing."""
    if not PGBOUNCER.exists():
        result = subprocess.run(
            [str(HACK_DIR / "install-pgbouncer.sh")], capture_output=True, text=True
        )
        if result.returncode != 0 or not PGBOUNCER.exists():
            raise BedError(
                f"PgBouncer is missing ({PGBOUNCER}) and hack/install-pgbouncer.sh could not "
                f"install it:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
    return PGBOUNCER


def pgbouncer_version() -> str:
    out = subprocess.run(
        [str(ensure_pgbouncer_installed()), "--version"], capture_output=True, text=True
    )
    return out.stdout.split("\n", 1)[0].removeprefix("PgBouncer ").strip()


def install_auth_lookup(pg: Postgres, database: str, auth_password: str) -> None:
    """What the chart README has a superuser run once: the lookup function
    (files/pgbouncer-auth.sql) and the password of its role, AUTH_ROLE."""
    run_sql(pg.root, pg.port, AUTH_SQL.read_text(), database)
    run_sql(pg.root, pg.port, f"ALTER ROLE {AUTH_ROLE} PASSWORD '{auth_password}'", database)


def start_pgbouncer(
    sup: Supervisor,
    logs: Path,
    pg: Postgres,
    database: str,
    *,
    pool_size: int = 20,
    max_db_connections: int = 0,
    reserve_pool_size: int = 5,
    reserve_pool_timeout: float = 2.0,
    idle_transaction_timeout: float = 0.0,
    max_client_conn: int = 1000,
    name: str = "pgbouncer",
    timeout_s: float = 30.0,
) -> PgBouncer:
    """Install the auth function in `database` of `pg` and start a pgbouncer on a free port.

    `pool_size` caps the server connections of each pool (one per database and role: a
    namespace); `max_db_connections` (0: no cap) those of one database over all its pools,
    the auth_query's own pool included: at that cap a login waits until some pool has an idle
    connection to give up, so a cap at the pool size starves logins under full load.
    `reserve_pool_size` more connections open for a pool whose clients waited
    `reserve_pool_timeout` seconds. `idle_transaction_timeout` (0: off) closes a client idle
    in a transaction that long. (Workers never hold a transaction open while they wait for a
    second connection: `contract.heartbeat_storage` skips Optuna's schema check, which did,
    and makes the same check one connection at a time.)"""
    binary = ensure_pgbouncer_installed()
    auth_password = secrets.token_hex(16)
    admin_password = secrets.token_hex(16)
    install_auth_lookup(pg, database, auth_password)
    user = "postgres" if os.geteuid() == 0 else None
    home = pg.root / name
    home.mkdir(exist_ok=True)
    port = free_port()
    # The auth user's password in plain text: PgBouncer logs in to PostgreSQL with it.
    userlist = home / "userlist.txt"
    userlist.write_text(f'"{AUTH_ROLE}" "{auth_password}"\n"{ADMIN_USER}" "{admin_password}"\n')
    ini = home / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
* = host=127.0.0.1 port={pg.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
auth_user = {AUTH_ROLE}
auth_query = SELECT uname, phash FROM optuna_pgbouncer.user_lookup($1)
admin_users = {ADMIN_USER}
pool_mode = transaction
default_pool_size = {pool_size}
reserve_pool_size = {reserve_pool_size}
reserve_pool_timeout = {reserve_pool_timeout}
idle_transaction_timeout = {idle_transaction_timeout}
max_db_connections = {max_db_connections}
max_client_conn = {max_client_conn}
ignore_startup_parameters = extra_float_digits
"""
    )
    for path in (home, userlist, ini):
        path.chmod(0o700 if path.is_dir() else 0o600)
        if user is not None:
            shutil.chown(path, user, user)
    record = sup.spawn(
        name,
        [str(binary), str(ini)],
        logs / f"{name}.log",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd=home,
        user=user,
    )
    bouncer = PgBouncer(port, admin_password)

    def ready() -> bool:
        try:
            pgbouncer_show(bouncer, "VERSION")
        except psycopg2.Error:
            return False
        return True

    sup.wait_until(ready, f"{name} to accept connections", timeout_s, [record])
    return bouncer


class Console:
    """A connection to PgBouncer's admin console, for `SHOW POOLS`, `SHOW STATS`, ..."""

    def __init__(self, bouncer: PgBouncer) -> None:
        self._conn = psycopg2.connect(
            host="127.0.0.1",
            port=bouncer.port,
            dbname="pgbouncer",
            user=ADMIN_USER,
            password=bouncer.admin_password,
            connect_timeout=5,
        )
        # The admin console knows no transactions.
        self._conn.autocommit = True

    def show(self, what: str) -> list[dict[str, object]]:
        with self._conn.cursor() as cur:
            cur.execute(f"SHOW {what}")
            columns = [c.name for c in cur.description or ()]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self._conn.close()


def pgbouncer_show(bouncer: PgBouncer, what: str) -> list[dict[str, object]]:
    """`SHOW <what>` on PgBouncer's admin console over a connection of its own."""
    console = Console(bouncer)
    try:
        return console.show(what)
    finally:
        console.close()
