"""Starting and stopping the bed's processes by pid, safely across pid reuse.

Every process starts in its own session, so it outlives the command that started it (that is
what lets `python -m testbed up` return) and so its whole process group can be signalled.
A pid alone is not an identity: the kernel reuses pids, so each record also keeps the
process's start time from /proc and nothing is signalled unless both still match.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ProcessRecord",
    "group_members",
    "is_running",
    "spawn",
    "start_ticks",
    "stop",
    "stop_group",
]


@dataclass(frozen=True)
class ProcessRecord:
    """What is needed to find and stop a process later, possibly from another process."""

    name: str
    pid: int
    start_ticks: int
    log: str
    stop_signal: int = int(signal.SIGTERM)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            log=str(data["log"]),
            stop_signal=int(data["stop_signal"]),
        )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after the last
    # ')' are fixed. rest[0] is field 3 (state).
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when gone or a zombie.

    A zombie counts as gone: after `down` the processes are re-parented to PID 1, which in
    some containers never reaps them.
    """
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(record: ProcessRecord) -> bool:
    return start_ticks(record.pid) == record.start_ticks


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is pgid."""
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def group_is_ours(pgid: int, leader_ticks: int) -> bool:
    """Whether process group `pgid` is still the one whose leader started at `leader_ticks`.

    After the leader exits and is reaped, and the last member is gone, the number is free:
    a new process (the operator of a test, say) can get that pid and, starting a session,
    the same pgid. Signalling the group then would kill a stranger. While any member of the
    old group lives the number cannot be taken, so a live process with pid == pgid that
    leads its own group and started at another time means the group was re-created.
    """
    fields = _stat_fields(pgid)
    if fields is None or fields[0] in ("Z", "X"):
        return True  # the leader is gone: members, if any, are the group's own
    if int(fields[19]) == leader_ticks:
        return True
    return int(fields[2]) != pgid


def _with_parent_death_signal(argv: Sequence[str], sig: int) -> list[str]:
    """argv run so the kernel sends sig when the spawning thread dies.

    setpriv (util-linux) sets it and execs argv, keeping the pid; doing it in a Python
    preexec_fn instead is unsafe in a process with threads. Without setpriv, no guard.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(argv)
    return [setpriv, f"--pdeathsig={signal.Signals(sig).name.removeprefix('SIG')}", "--", *argv]


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
    die_with_parent: bool = False,
    death_signal: int | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start argv in a new session with stdout and stderr appended to log_path.

    die_with_parent: the process gets death_signal (default: stop_signal) if the spawning
    thread dies without stopping it (a test run killed by a timeout); not for `testbed up`,
    which exits on purpose.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if die_with_parent:
        argv = _with_parent_death_signal(argv, death_signal or stop_signal)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=user,
            group=user,
            # Dropping to an unprivileged user (PostgreSQL) must also drop root's groups.
            extra_groups=[] if user is not None else None,
            start_new_session=True,
        )
    ticks = start_ticks(proc.pid)
    if ticks is None:
        # It died at once; the record still lets callers find its log.
        ticks = -1
    return proc, ProcessRecord(name, proc.pid, ticks, str(log_path), int(stop_signal))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(
    pgid: int, first_signal: int, grace_s: float, reap: subprocess.Popen[bytes] | None
) -> None:
    """Signal a process group, wait up to grace_s for it to empty, then SIGKILL what is left.

    Only call this while the group is known to be ours: a pgid cannot be reused while any
    member lives, so signalling is safe exactly as long as members exist.
    """
    if group_members(pgid):
        _signal_group(pgid, first_signal)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap.poll()
        if not group_members(pgid):
            break
        time.sleep(0.05)
    else:
        _signal_group(pgid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5
        while group_members(pgid) and time.monotonic() < kill_deadline:
            if reap is not None:
                reap.poll()
            time.sleep(0.05)
    if reap is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            reap.wait(timeout=5)


def stop(
    record: ProcessRecord, grace_s: float = 15.0, reap: subprocess.Popen[bytes] | None = None
) -> None:
    """Stop a recorded process and its group; a no-op when it is already gone."""
    if not is_running(record):
        # Members of its group may outlive the leader (a crashed parent's children).
        if group_members(record.pid) and record.start_ticks >= 0:
            stop_group(record.pid, signal.SIGKILL, 0, reap)
        elif reap is not None:
            reap.poll()
        return
    stop_group(record.pid, record.stop_signal, grace_s, reap)
