"""Bookkeeping for every process one bed starts: spawn, wait for readiness, stop in reverse.

The record list is persisted so that `python -m testbed down`, a different process, stops
exactly what `up` started.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from testbed import procs
from testbed.errors import BedError
from testbed.procs import ProcessRecord

__all__ = ["Supervisor", "log_tail"]


def log_tail(path: str | Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, state_file: Path, die_with_parent: bool = True) -> None:
        self.state_file = state_file
        # True for beds owned by a live process (pytest, scripts): if it is killed, the
        # kernel stops the bed too. `testbed up` turns it off so the bed outlives it.
        self.die_with_parent = die_with_parent
        self.records: list[ProcessRecord] = []
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        # How each process was started, to start it again after a fault test stopped it.
        self._how: dict[str, tuple[Sequence[str], Path, dict[str, Any]]] = {}

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        death_signal: int | None = None,
    ) -> ProcessRecord:
        how: dict[str, Any] = {
            "env": env,
            "cwd": cwd,
            "user": user,
            "stop_signal": stop_signal,
            "death_signal": death_signal,
        }
        self._how[name] = (argv, log_path, how)
        popen, record = procs.spawn(
            name, argv, log_path, die_with_parent=self.die_with_parent, **how
        )
        self.records.append(record)
        self._popens[record.pid] = popen
        self.save()
        return record

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([r.to_json() for r in self.records], indent=2))
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, state_file: Path) -> Supervisor:
        sup = cls(state_file)
        if state_file.exists():
            sup.records = [ProcessRecord.from_json(r) for r in json.loads(state_file.read_text())]
        return sup

    def check_alive(self, records: Sequence[ProcessRecord]) -> None:
        """Raise with the log tail of the first of records that has exited."""
        for record in records:
            popen = self._popens.get(record.pid)
            if popen is not None:
                popen.poll()
            if not procs.is_running(record):
                raise BedError(
                    f"{record.name} exited during start-up; last lines of {record.log}:\n"
                    f"{log_tail(record.log)}"
                )

    def wait_until(
        self,
        check: Callable[[], bool],
        what: str,
        timeout_s: float,
        watch: Sequence[ProcessRecord] = (),
    ) -> None:
        """Poll check until it is true; fail early when a watched process dies."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive(watch)
            try:
                if check():
                    return
            except Exception as exc:  # the thing polled is not up yet; keep the reason
                last_error = exc
            time.sleep(0.25)
        logs = "\n".join(f"--- {r.name} ({r.log}):\n{log_tail(r.log, 15)}" for r in watch)
        raise BedError(f"timed out after {timeout_s:.0f}s waiting for {what}: {last_error}\n{logs}")

    def stop_one(self, name: str, grace_s: float = 15.0) -> None:
        """Stop one process by name (a fault test's outage); start_again brings it back."""
        record = next(r for r in self.records if r.name == name)
        procs.stop(record, grace_s, self._popens.pop(record.pid, None))
        self.records.remove(record)
        self.save()

    def start_again(self, name: str) -> ProcessRecord:
        """Start a process stopped by stop_one with the same command line, appending to its
        log: same ports, same data directory, as a restarted service comes back."""
        if any(r.name == name for r in self.records):
            raise BedError(f"{name} is still running")
        argv, log_path, how = self._how[name]
        return self.spawn(name, argv, log_path, **how)

    def stop_all(self, grace_s: float = 15.0) -> None:
        """Stop everything, newest first, so dependants go before what they depend on."""
        for record in reversed(self.records):
            procs.stop(record, grace_s, self._popens.get(record.pid))
        self.records = []
        self._popens = {}
        self.save()
