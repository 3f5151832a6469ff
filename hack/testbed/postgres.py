"""A throwaway PostgreSQL cluster: temp directory, free port, a role and database `optuna`.

The server refuses to run as root, so when the bed runs as root it runs PostgreSQL as the
unprivileged `postgres` user that Debian's package creates. Its data lives in its own temp
directory because the bed's directory (e.g. pytest's tmp_path) is not readable by that user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import BedError
from testbed.paths import HACK_DIR, versions
from testbed.ports import free_port
from testbed.supervisor import Supervisor

__all__ = [
    "Postgres",
    "ensure_postgres_installed",
    "postgres_ready",
    "remove_postgres_data",
    "run_sql",
    "start_postgres",
]

DATABASE = "optuna"
ROLE = "optuna"


@dataclass(frozen=True)
class Postgres:
    port: int
    url: str
    root: Path  # temp directory holding data and socket; removed when the bed stops


def _pg_bin() -> Path:
    return Path(f"/usr/lib/postgresql/{versions()['POSTGRES_MAJOR']}/bin")


def ensure_postgres_installed() -> Path:
    """The server's bin directory, installing Debian's package first when it is missing."""
    pg_bin = _pg_bin()
    if not (pg_bin / "postgres").exists():
        result = subprocess.run(
            [str(HACK_DIR / "install-postgres.sh")], capture_output=True, text=True
        )
        if result.returncode != 0 or not (pg_bin / "postgres").exists():
            raise BedError(
                f"PostgreSQL is missing ({pg_bin}/postgres) and hack/install-postgres.sh "
                f"could not install it:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
    return pg_bin


def _run_as(user: str | None, argv: list[str], what: str) -> None:
    result = subprocess.run(
        argv,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        capture_output=True,
        text=True,
        cwd="/",
    )
    if result.returncode != 0:
        raise BedError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


def start_postgres(
    sup: Supervisor,
    logs: Path,
    timeout_s: float = 60.0,
    *,
    max_connections: int = 200,
    name: str = "postgres",
    extra_settings: Mapping[str, str] | None = None,
) -> Postgres:
    """A new cluster; `name` names its process and log (a second cluster beside the bed's);
    `extra_settings` adds server settings (a profile loads pg_stat_statements)."""
    pg_bin = ensure_postgres_installed()
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="testbed-pg-"))
    if user is not None:
        shutil.chown(root, user, user)
    data = root / "data"
    # The superuser only logs in over the private socket; everyone else needs a password.
    local_auth = "--auth-local=peer" if user else "--auth-local=trust"
    initdb = [str(pg_bin / "initdb"), f"--pgdata={data}", "--username=postgres"]
    initdb += ["--encoding=UTF8", "--locale=C", local_auth, "--auth-host=scram-sha-256"]
    _run_as(user, [*initdb, "--no-sync"], "initdb")
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(root),
        # Dozens of worker pods, each with a connection pool, share one server.
        "max_connections": str(max_connections),
        # Throwaway data: durability only costs time.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        **(extra_settings or {}),
    }
    server = sup.spawn(
        name,
        [
            str(pg_bin / "postgres"),
            f"-D{data}",
            f"-p{port}",
            *(f"--{key}={value}" for key, value in settings.items()),
        ],
        logs / f"{name}.log",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd=root,
        user=user,
        # SIGTERM is "smart" shutdown, which waits for every client to disconnect.
        stop_signal=signal.SIGINT,
    )
    sup.wait_until(
        lambda: postgres_ready(root, port),
        "PostgreSQL to accept connections",
        timeout_s,
        [server],
    )
    password = secrets.token_hex(16)
    psql = [str(pg_bin / "psql"), "--set=ON_ERROR_STOP=1", "--quiet"]
    psql += [f"--host={root}", f"--port={port}", "--username=postgres", "--dbname=postgres"]
    # CREATEROLE: the operator makes a role and schema per namespace with this one.
    role = f"CREATE ROLE {ROLE} LOGIN CREATEROLE PASSWORD '{password}'"
    _run_as(user, [*psql, "-c", role], "CREATE ROLE")
    _run_as(user, [*psql, "-c", f"CREATE DATABASE {DATABASE} OWNER {ROLE}"], "CREATE DATABASE")
    url = f"postgresql+psycopg2://{ROLE}:{password}@127.0.0.1:{port}/{DATABASE}"
    return Postgres(port, url, root)


def run_sql(root: Path, port: int, sql: str, database: str = "postgres") -> None:
    """Statements as the cluster's superuser, over its private socket."""
    pg_bin = ensure_postgres_installed()
    user = "postgres" if os.geteuid() == 0 else None
    psql = [str(pg_bin / "psql"), "--set=ON_ERROR_STOP=1", "--quiet"]
    psql += [f"--host={root}", f"--port={port}", "--username=postgres", f"--dbname={database}"]
    _run_as(user, [*psql, "-c", sql], "psql")


def create_database(root: Path, port: int, name: str) -> str:
    """A second database owned by the same role; returns its URL (same password)."""
    pg_bin = ensure_postgres_installed()
    user = "postgres" if os.geteuid() == 0 else None
    psql = [str(pg_bin / "psql"), "--set=ON_ERROR_STOP=1", "--quiet"]
    psql += [f"--host={root}", f"--port={port}", "--username=postgres", "--dbname=postgres"]
    _run_as(user, [*psql, "-c", f"CREATE DATABASE {name} OWNER {ROLE}"], "CREATE DATABASE")
    return name


def postgres_ready(root: Path, port: int) -> bool:
    """Whether the server in root accepts connections (after a start or a restart)."""
    isready = [str(_pg_bin() / "pg_isready"), "-q", f"--host={root}", f"--port={port}"]
    return subprocess.run(isready, check=False).returncode == 0


def remove_postgres_data(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
