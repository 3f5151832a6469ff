"""Objectives in any language: one child process per trial, driven by the protocol."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import optuna

from optuna_operator.api import Parameter
from optuna_operator.contract import (
    ERROR_ATTR,
    STDERR_ATTR,
    STORAGE_ENV_NAMES,
    ConfigError,
)
from optuna_operator.worker.objective_base import ObjectiveBase
from optuna_operator.worker.protocol import (
    Constraint,
    ProtocolError,
    Report,
    Result,
    env_name,
    format_value,
    parse_line,
    parse_result_file,
    substitute,
)
from optuna_operator.worker.search_space import sample
from optuna_operator.worker.signals import StopSignal, WorkerInterrupted

__all__ = ["CommandObjective", "check_command"]

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
STDERR_TAIL_CHARS = 2000
# Time a stopped command gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.1


class TrialFailed(Exception):
    """The command did not produce a usable result; the message is kept on the trial."""


def check_command(command: Sequence[str]) -> None:
    """Fail at start-up, not on every trial, when the program does not exist."""
    program = command[0]
    if "{" in program:
        return  # chosen per trial from a parameter; checked when it runs
    if "/" in program:
        path = Path(program)
        if not path.is_file():
            raise ConfigError(f"command not found: {program} (working directory {os.getcwd()})")
        if not os.access(path, os.X_OK):
            raise ConfigError(f"command is not executable: {program}")
        return
    if shutil.which(program) is None:
        raise ConfigError(f"command not found: {program!r} is not on PATH")


class CommandObjective(ObjectiveBase):
    def __init__(
        self,
        command: Sequence[str],
        space: Sequence[Parameter],
        n_objectives: int,
        timeout_seconds: float | None,
        stop: StopSignal,
        study_name: str,
        worker_id: str,
        log_prefix: str = "",
        storage_url: str | None = None,
    ) -> None:
        super().__init__(n_objectives, stop, worker_id, timeout_seconds, storage_url)
        self._command = list(command)
        self._space = list(space)
        self._names = [p.name for p in space]
        self._study_name = study_name
        self._log_prefix = log_prefix

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        self.current = trial
        params = sample(trial, self._space)
        with tempfile.TemporaryDirectory(prefix=f"optuna-trial-{trial.number}-") as tmp:
            trial_dir = Path(tmp)
            if self._stop.requested:
                # The runner fails it with this reason and retries it (worker/runner.py).
                raise WorkerInterrupted("stop requested before the trial started")
            try:
                values = self._run(trial, params, trial_dir)
            except TrialFailed as err:
                trial.set_user_attr(ERROR_ATTR, self._redact(str(err)))
                raise
        return values[0] if self._n_objectives == 1 else list(values)

    def _run(self, trial: optuna.Trial, params: dict[str, Any], trial_dir: Path) -> list[float]:
        params_file = trial_dir / "params.json"
        params_file.write_text(json.dumps(params))
        result_file = trial_dir / "result.json"
        args = substitute(self._command, params, self._names)
        env = self._child_env(trial.number, params, params_file, result_file, trial_dir)
        prefix = f"{self._log_prefix}[trial {trial.number}] "
        try:
            child = Child(args, env, prefix, self._redact)
        except OSError as err:
            raise TrialFailed(f"cannot start {args[0]!r}: {err}") from err
        try:
            result, constraints = self._supervise(trial, child)
        finally:
            child.kill()
        if child.returncode != 0:
            # Redacted whole, then cut: a cut first could leave part of a password unmatched.
            tail = child.stderr_tail(self._redact)
            if tail:
                trial.set_user_attr(STDERR_ATTR, tail)
            last = tail.splitlines()[-1] if tail else ""
            raise TrialFailed(f"{_describe_exit(child.returncode)}" + (f": {last}" if last else ""))
        if result is None and result_file.exists():
            try:
                result = parse_result_file(result_file.read_text())
            except ProtocolError as err:
                raise TrialFailed(str(err)) from None
        if result is None:
            raise TrialFailed(
                "command exited 0 without an 'optuna:result' line or OPTUNA_RESULT_FILE"
            )
        if len(result.values) != self._n_objectives:
            raise TrialFailed(
                f"command reported {len(result.values)} value(s), the study has "
                f"{self._n_objectives}"
            )
        # Before Optuna's tell: samplers read a finished trial's constraints.
        for name, value in {**constraints, **result.constraints}.items():
            trial.set_constraint(name, value)
        return list(result.values)

    def _supervise(
        self, trial: optuna.Trial, child: Child
    ) -> tuple[Result | None, dict[str, float]]:
        """Follow the child's stdout until it exits; prune, time out or stop it on the way.
        Returns the last result line and the last value of each constraint line."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        result: Result | None = None
        constraints: dict[str, float] = {}
        while True:
            exited = child.poll() is not None
            if exited:
                child.kill()  # stragglers would hold stdout open; finishing also flushes it
                child.join_readers()
            for message in child.drain(block=not exited):
                if isinstance(message, ProtocolError):
                    raise TrialFailed(str(message))
                if isinstance(message, Result):
                    result = message
                elif isinstance(message, Constraint):
                    constraints[message.name] = message.value
                elif isinstance(message, Report) and self._n_objectives == 1:
                    # Optuna has no intermediate values for several objectives: ignored.
                    # Reports read after the exit still count: pruners compare later trials
                    # with the whole curve of finished ones.
                    trial.report(message.value, message.step)
                    if not exited and trial.should_prune():
                        child.kill()
                        raise optuna.TrialPruned(f"pruned at step {message.step}")
            if exited:
                return result, constraints
            if self._stop.requested:
                child.kill()
                raise WorkerInterrupted("stop requested during the trial")
            if deadline is not None and time.monotonic() >= deadline:
                child.kill()
                raise TrialFailed(f"timed out after {self._timeout:g} s (trialTimeoutSeconds)")

    def _child_env(
        self,
        number: int,
        params: Mapping[str, Any],
        params_file: Path,
        result_file: Path,
        trial_dir: Path,
    ) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # The storage secret is the worker's business, not the objective's; inherited
            # OPTUNA_PARAM_* could masquerade as a skipped conditional parameter.
            if k not in STORAGE_ENV_NAMES and not k.startswith("OPTUNA_PARAM_")
        }
        env.update({env_name(name): format_value(value) for name, value in params.items()})
        env.update(
            {
                "OPTUNA_PARAMS_FILE": str(params_file),
                "OPTUNA_RESULT_FILE": str(result_file),
                "OPTUNA_TRIAL_DIR": str(trial_dir),
                "OPTUNA_TRIAL_NUMBER": str(number),
                "OPTUNA_STUDY_NAME": self._study_name,
                # Protocol lines must arrive while the trial runs, not when it ends.
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env


Message = Report | Result | Constraint | ProtocolError


class Child:
    """One command process in its own process group, with its output followed by threads."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        prefix: str,
        clean: Callable[[str], str] = str,
    ) -> None:
        self._messages: queue.Queue[Message] = queue.Queue()
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._prefix = prefix
        # What the pod log gets: the command's output with credentials redacted (a command
        # may print its environment, where the storage URL is).
        self._clean = clean
        self._killed = False
        # Its own session: pruning stops the command's whole tree, not just the shell.
        self._proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def poll(self) -> int | None:
        return self._proc.poll()

    def drain(self, block: bool) -> list[Message]:
        messages: list[Message] = []
        try:
            messages.append(
                self._messages.get(timeout=POLL_SECONDS) if block else self._messages.get_nowait()
            )
            while True:
                messages.append(self._messages.get_nowait())
        except queue.Empty:
            pass
        return messages

    def join_readers(self) -> None:
        for reader in self._readers:
            reader.join(timeout=KILL_GRACE_SECONDS)

    def stderr_tail(self, clean: Callable[[str], str] = str) -> str:
        """The last lines of stderr, passed whole through `clean`, then the last characters."""
        text = clean("\n".join(self._tail))
        return text[-STDERR_TAIL_CHARS:]

    def kill(self) -> None:
        """SIGTERM the group, SIGKILL what is left after the grace period, reap the leader."""
        if self._killed:
            return  # the group id may belong to someone else once the leader is reaped
        self._killed = True
        pgid = self._proc.pid
        if self._proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=KILL_GRACE_SECONDS)
        # Also reached after a normal exit: background children must not outlive the trial.
        _signal_group(pgid, signal.SIGKILL)
        self._proc.wait()

    def _echo(self, out: IO[str], line: str) -> None:
        out.write(self._prefix + self._clean(line.rstrip("\n")) + "\n")

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._echo(sys.stdout, line)
            try:
                message = parse_line(line)
            except ProtocolError as err:
                self._messages.put(err)
                continue
            if message is not None:
                self._messages.put(message)
        sys.stdout.flush()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._tail.append(line.rstrip("\n"))
            self._echo(sys.stderr, line)
        sys.stderr.flush()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ProcessLookupError: the group is already gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"command killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"command killed by signal {-code}"
    return f"command exited with code {code}"
