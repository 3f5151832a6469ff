"""One object that starts the whole bed and stops every process it started.

Used by the pytest fixtures (one bed per session) and by `python -m testbed up/down`
(`make dev-cluster`), so both exercise the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from testbed import procs
from testbed.audit import AUDIT_LOG
from testbed.binaries import ensure_binaries
from testbed.controlplane import start_control_plane
from testbed.errors import BedError
from testbed.executorconfig import DEFAULT_CAPACITY, ExecutorConfig
from testbed.kubeapi import KubeApi
from testbed.kubeconfig import read_kubeconfig
from testbed.paths import HACK_DIR, REPO_ROOT, versions
from testbed.pgbouncer import PgBouncer, install_auth_lookup, start_pgbouncer
from testbed.postgres import (
    Postgres,
    create_database,
    ensure_postgres_installed,
    postgres_ready,
    remove_postgres_data,
    start_postgres,
)
from testbed.supervisor import Supervisor

__all__ = ["Bed", "BedOptions"]


@dataclass
class BedOptions:
    node_name: str = "testbed-node"
    # Node capacity; "nvidia.com/gpu" makes GPU requests schedulable.
    capacity: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    # cwd for containers whose workingDir does not exist on this machine.
    workdir: Path = REPO_ROOT
    # Stand-ins for image entrypoints, for containers that set no command.
    image_commands: dict[str, list[str]] = field(default_factory=dict)
    # Added to every container's environment (the pod's own env wins).
    extra_env: dict[str, str] = field(default_factory=dict)
    # Searched before the project's Python and the pinned tools: stand-ins for commands.
    path_prefix: list[str] = field(default_factory=list)
    start_timeout_s: float = 180.0
    # Appended to kube-apiserver's flags (the node bed adds its egress and kubelet client).
    apiserver_args: list[str] = field(default_factory=list)


class Bed:
    """A control plane, a PostgreSQL and a pod executor, living under one directory."""

    def __init__(
        self, directory: Path, options: BedOptions | None = None, detached: bool = False
    ) -> None:
        """detached=True: the bed outlives this process (`python -m testbed up`); otherwise
        the kernel stops its processes if this process dies without calling stop()."""
        self.directory = directory.resolve()
        self.options = options or BedOptions()
        self._sup = Supervisor(self.directory / "processes.json", die_with_parent=not detached)
        self._state_file = self.directory / "state.json"
        self.kubeconfig = self.directory / "controlplane" / "admin.kubeconfig"
        self.storage_url = ""
        self.server = ""
        self.bin_dir = Path()
        self.startup_s = 0.0
        self._pg_root: Path | None = None

    # --- paths ------------------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        """Component logs: etcd.log, kube-apiserver.log, executor.log, postgres.log, ..."""
        return self.directory / "logs"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log of every list and watch (testbed.audit reads it)."""
        return self.logs_dir / AUDIT_LOG

    @property
    def pod_logs_dir(self) -> Path:
        return self.directory / "executor" / "pods"

    @property
    def _pid_dir(self) -> Path:
        return self.directory / "executor" / "pids"

    # --- life cycle -------------------------------------------------------------------
    def start(self) -> Bed:
        t0 = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        # A bed is always fresh: old etcd data or certificates would contradict the new ones.
        for stale in ("controlplane", "executor", "logs"):
            shutil.rmtree(self.directory / stale, ignore_errors=True)
        timeout = self.options.start_timeout_s
        try:
            # Both can be slow or fail for reasons outside the bed; check before starting anything.
            self.bin_dir = ensure_binaries()
            ensure_postgres_installed()
            pg = start_postgres(self._sup, self.logs_dir)
            self._pg_root = pg.root
            self.storage_url = pg.url
            self._save_state()
            cp = start_control_plane(
                self._sup,
                self.directory / "controlplane",
                self.logs_dir,
                self.bin_dir,
                timeout,
                self.options.apiserver_args,
            )
            self.server = cp.server
            self._save_state()
            self._start_executor()
            self._wait_node_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        self._save_state()
        return self

    def _start_executor(self) -> None:
        exec_dir = self.directory / "executor"
        self.pod_logs_dir.mkdir(parents=True, exist_ok=True)
        self._pid_dir.mkdir(parents=True, exist_ok=True)
        python_bin = Path(sys.executable).parent
        config = ExecutorConfig(
            kubeconfig=str(self.kubeconfig),
            log_dir=str(self.pod_logs_dir),
            pid_dir=str(self._pid_dir),
            workdir=str(self.options.workdir),
            # The project's Python first, then the pinned kubectl and helm.
            path_prefix=[*self.options.path_prefix, str(python_bin), str(self.bin_dir)],
            pythonpath=[str(REPO_ROOT)],
            kube_version=versions()["K8S_VERSION"],
            node_name=self.options.node_name,
            capacity=dict(self.options.capacity),
            image_commands=dict(self.options.image_commands),
            extra_env=dict(self.options.extra_env),
        )
        config_path = exec_dir / "executor.json"
        config.save(config_path)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONPATH": str(HACK_DIR),
            "PYTHONUNBUFFERED": "1",
        }
        self._sup.spawn(
            "executor",
            [sys.executable, "-m", "testbed", "executor", "--config", str(config_path)],
            self.logs_dir / "executor.log",
            env=env,
            cwd=REPO_ROOT,
        )

    def _wait_node_ready(self, timeout_s: float) -> None:
        api = KubeApi(read_kubeconfig(self.kubeconfig), timeout_s=10)
        name = self.options.node_name

        def schedulable() -> bool:
            node = api.get_or_none(f"/api/v1/nodes/{name}")
            if node is None:
                return False
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            # TaintNodesByCondition adds not-ready at registration; the node lifecycle
            # controller lifts it once it sees Ready. Until then nothing schedules.
            return ready and not node.get("spec", {}).get("taints")

        try:
            self._sup.wait_until(
                schedulable, f"node {name} to be Ready and untainted", timeout_s, self._sup.records
            )
        finally:
            api.close()

    def _postgres(self) -> tuple[Postgres, str]:
        """The bed's PostgreSQL and the name of its database."""
        if self._pg_root is None:
            raise BedError("the bed's PostgreSQL is not running")
        base, _, database = self.storage_url.rpartition("/")
        return Postgres(int(base.rsplit(":", 1)[1]), self.storage_url, self._pg_root), database

    def create_database(self, name: str) -> str:
        """Another database on the bed's PostgreSQL, owned by the same role; its URL."""
        pg, _ = self._postgres()
        create_database(pg.root, pg.port, name)
        return f"{self.storage_url.rpartition('/')[0]}/{name}"

    def install_pgbouncer_auth(self, auth_password: str) -> None:
        """The chart's PgBouncer auth lookup in the bed's database, as a platform team sets it
        up once (testbed.pgbouncer.install_auth_lookup)."""
        pg, database = self._postgres()
        install_auth_lookup(pg, database, auth_password)

    def start_pgbouncer(self, **options: Any) -> PgBouncer:
        """A PgBouncer (testbed.pgbouncer.start_pgbouncer's options) in front of the bed's
        PostgreSQL and its database; stopped with the bed or by stop_component(name)."""
        pg, database = self._postgres()
        return start_pgbouncer(self._sup, self.logs_dir, pg, database, **options)

    def stop(self) -> None:
        """Stop every process this bed started, by pid; safe to call twice."""
        self._sup.stop_all()
        self._sweep_pod_processes()
        if self._pg_root is not None:
            remove_postgres_data(self._pg_root)
            self._pg_root = None
        self._state_file.unlink(missing_ok=True)

    def _sweep_pod_processes(self) -> None:
        """Kill container processes an executor left behind (it was SIGKILLed, say)."""
        if not self._pid_dir.is_dir():
            return
        for pid_file in self._pid_dir.iterdir():
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.name)
                ticks = int(pid_file.read_text().strip() or -1)
                if ticks >= 0 and procs.start_ticks(pid) == ticks:
                    procs.stop_group(pid, signal.SIGKILL, 0, None)
                elif ticks >= 0 and procs.group_members(pid) and procs.start_ticks(pid) is None:
                    # Leader gone, children remain in its group: the pgid is still ours.
                    procs.stop_group(pid, signal.SIGKILL, 0, None)
            pid_file.unlink(missing_ok=True)

    def spawn(
        self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> int:
        """Start one more process as part of the bed (the demo's operator), so that it lives
        and dies with the bed: tied to this process unless detached, and stopped by stop()
        or `python -m testbed down`. Returns its pid."""
        record = self._sup.spawn(name, argv, log_path, env=env, cwd=REPO_ROOT)
        return record.pid

    def alive(self, pid: int) -> bool:
        """Whether the process this bed started with that pid still runs."""
        return any(r.pid == pid and procs.is_running(r) for r in self._sup.records)

    def write_env(self, path: Path, written_by: str) -> None:
        """A shell file that points kubectl and helm at this bed: `. path`."""
        env = self.env()
        lines = [
            f"# Written by {written_by}; load with: . {path}",
            f"export KUBECONFIG={shlex.quote(env['KUBECONFIG'])}",
            f"export STORAGE_URL={shlex.quote(env['STORAGE_URL'])}",
            # The pinned kubectl and helm must win over any other on PATH.
            f'export PATH={shlex.quote(str(self.bin_dir))}:"$PATH"',
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        # It holds the database password.
        path.chmod(0o600)

    def __enter__(self) -> Bed:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- state shared with `python -m testbed down` -------------------------------------
    def _save_state(self) -> None:
        state = {
            "kubeconfig": str(self.kubeconfig),
            "storage_url": self.storage_url,
            "server": self.server,
            "bin_dir": str(self.bin_dir),
            "pg_root": str(self._pg_root) if self._pg_root else None,
            "startup_s": self.startup_s,
        }
        self._state_file.write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Bed:
        """The bed a previous `up` left in directory, for `down` and `status`."""
        bed = cls(directory)
        bed._sup = Supervisor.load(bed.directory / "processes.json")
        if bed._state_file.exists():
            state = json.loads(bed._state_file.read_text())
            bed.storage_url = state["storage_url"]
            bed.server = state["server"]
            bed.bin_dir = Path(state["bin_dir"])
            bed._pg_root = Path(state["pg_root"]) if state["pg_root"] else None
            bed.startup_s = float(state["startup_s"])
        return bed

    def running(self) -> bool:
        return bool(self._sup.records) and all(procs.is_running(r) for r in self._sup.records)

    def describe_processes(self) -> list[str]:
        lines = []
        for r in self._sup.records:
            state = "running" if procs.is_running(r) else "gone"
            lines.append(f"{r.name:<24} pid {r.pid:<8} {state:<8} log {r.log}")
        return lines

    # --- fault injection ----------------------------------------------------------------
    def stop_component(self, name: str) -> None:
        """Stop one process of the bed (kube-apiserver, postgres, executor, ...), as an outage."""
        self._sup.stop_one(name)

    def start_component(self, name: str, timeout_s: float = 120.0) -> None:
        """Start a stopped component again on its old ports and data; return once it serves."""
        record = self._sup.start_again(name)
        ready: dict[str, Callable[[], bool]] = {
            "kube-apiserver": self._apiserver_ready,
            "postgres": self._postgres_ready,
        }
        check = ready.get(name)
        if check is not None:
            self._sup.wait_until(check, f"{name} to serve again", timeout_s, [record])

    def _apiserver_ready(self) -> bool:
        api = KubeApi(read_kubeconfig(self.kubeconfig), timeout_s=5)
        try:
            return api.get_text("/readyz")[0] == 200
        finally:
            api.close()

    def _postgres_ready(self) -> bool:
        assert self._pg_root is not None
        port = urlsplit(self.storage_url.replace("+psycopg2", "")).port
        return port is not None and postgres_ready(self._pg_root, port)

    # --- what tests and developers use --------------------------------------------------
    def env(self) -> dict[str, str]:
        """KUBECONFIG, STORAGE_URL and a PATH with the pinned kubectl and helm first."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "STORAGE_URL": self.storage_url,
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    def pod_log(
        self, namespace: str, pod: str, container: str | None = None, previous: bool = False
    ) -> str:
        """A container's log as the executor captured it (stdout and stderr interleaved).

        container defaults to the first one in the spec, like kubectl; previous=True gives
        the attempt before the latest restart. The newest pod of that name wins.
        """
        metas = []
        for path in self.pod_logs_dir.glob(f"{namespace}_{pod}_*/meta.json"):
            meta = json.loads(path.read_text())
            if meta["namespace"] == namespace and meta["name"] == pod:
                metas.append((meta["creationTimestamp"], path.stat().st_mtime, path.parent, meta))
        if not metas:
            raise FileNotFoundError(
                f"no logs for pod {namespace}/{pod}: the executor has not started it "
                f"(not scheduled yet, or not bound to node {self.options.node_name})"
            )
        _, _, pod_dir, meta = max(metas, key=lambda m: (m[0], m[1]))
        name = container or (meta["containers"] or meta["initContainers"])[0]
        attempts = sorted(int(p.stem) for p in (pod_dir / name).glob("*.log"))
        if previous:
            attempts = attempts[:-1]
        if not attempts:
            return ""
        return (pod_dir / name / f"{attempts[-1]}.log").read_text(errors="replace")
