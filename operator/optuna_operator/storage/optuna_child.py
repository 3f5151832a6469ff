"""The operator's Optuna work, done in child processes so the operator never imports Optuna.

Optuna (with numpy, Alembic and its ORM) costs the operator process ~60 MiB that it needs
only for rare work: creating a study's tables and the study itself (copying a warm start's
trials in), deleting a study, and failing (and retrying) trials whose heartbeat stopped. That
work runs here, in `python -m optuna_operator.storage.optuna_child`: a child started on
demand, handed one request at a time as a line of JSON on its standard input (storage URLs
never appear in its arguments, which `ps` shows), that answers with a line of JSON and exits
when the operator has left it idle for IDLE_SECONDS, or when its standard input closes. Two
children serve concurrent reconciles; a child has an address-space limit (a warm start of a
huge study fails with a reason instead of swelling the operator) and each request a time
limit. What the child logs comes back with its answer and is logged by the operator.

Everything a reconcile reads on every pass (study rows, counts, best trials) stays in the
operator process as plain SQL (study_rows.py, summary.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna_operator.contract import redact

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

    from optuna_operator.storage.study_setup import NewStudy

__all__ = [
    "CALL_TIMEOUT_SECONDS",
    "IDLE_SECONDS",
    "MAX_CHILDREN",
    "MAX_CHILDREN_PER_URL",
    "MEMORY_LIMIT_BYTES",
    "ChildError",
    "OptunaChildren",
]

log = logging.getLogger(__name__)

# Concurrent requests (each child serves one at a time), and of them at most this many for
# one storage URL: a tenant whose database is slow holds one child, never all of them. A child
# holds ~90 MiB (Optuna, SQLAlchemy, the operator's models) while it lives, so the operator's
# peak stays well inside its memory limit (the chart's 512 MiB).
MAX_CHILDREN = 2
MAX_CHILDREN_PER_URL = 1
# A child left idle this long exits: bursts (an operator start, many studies created at once)
# reuse warm children; a quiet operator has none.
IDLE_SECONDS = 20.0
# Copying a warm start's trials is the longest request; statements time out sooner.
CALL_TIMEOUT_SECONDS = 600.0
MEMORY_LIMIT_BYTES = 2 * 1024**3
# The operator's own application name: the database sees one client, wherever the work runs.
APPLICATION_NAME = "optuna-operator"
STATEMENT_TIMEOUT_MS = 30_000


class ChildError(Exception):
    """A request the child could not carry out: `kind` names what went wrong (the
    exception's class, or "timeout" and "crash" for the child itself) and the message is
    free of credentials."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------ the operator's side
@dataclass(eq=False)
class _Child:
    process: subprocess.Popen[bytes]
    buffer: bytes = b""
    last_used: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, memory_limit: int) -> _Child:
        env = {
            **os.environ,
            # One thread each: BLAS thread pools reserve address space the limit would count.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "optuna_operator.storage.optuna_child", str(memory_limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        return cls(process)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and read its answer; ChildError when the child dies or is
        too slow (then it is killed)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            raise ChildError("crash", "the Optuna child process exited") from None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise ChildError("timeout", f"the Optuna child took longer than {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.process.wait()
                raise ChildError("crash", f"the Optuna child process exited with code {code}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End of its standard input: the child exits."""
        self._close_stdin()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._close_stdout()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._close_stdin()
        self._close_stdout()

    def _close_stdin(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def _close_stdout(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()


class OptunaChildren:
    """Up to `max_children` children, started on demand and ended when idle; safe under
    concurrent reconciles. One request per child at a time."""

    def __init__(
        self,
        max_children: int = MAX_CHILDREN,
        per_url: int = MAX_CHILDREN_PER_URL,
        idle_seconds: float = IDLE_SECONDS,
        timeout: float = CALL_TIMEOUT_SECONDS,
        memory_limit: int = MEMORY_LIMIT_BYTES,
    ) -> None:
        self._max = max_children
        self._per_url = per_url
        self._idle_seconds = idle_seconds
        self._timeout = timeout
        self._memory_limit = memory_limit
        self._cond = threading.Condition()
        self._idle: list[_Child] = []  # most recently used last
        self._count = 0  # children started and not ended (idle or busy)
        self._busy_urls: dict[str, int] = {}
        self._reaper: threading.Thread | None = None
        self._closed = False

    def call(self, op: str, url: str, **args: Any) -> Any:
        """The result of `op` on the storage at `url`; ChildError when it failed."""
        child = self._acquire(url)
        healthy = False
        try:
            answer = child.request({"op": op, "url": url, "args": args}, self._timeout)
            healthy = True
        finally:
            self._release(url, child, healthy)
        for level, name, message in answer.get("logs", []):
            logging.getLogger(name).log(level, "%s", message)
        error = answer.get("error")
        if error is not None:
            raise ChildError(error["kind"], error["message"])
        return answer.get("result")

    def running(self) -> int:
        """Children alive now (idle or serving)."""
        with self._cond:
            return self._count

    def close(self) -> None:
        """End every idle child; a busy one ends when its request does."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for child in idle:
            child.close()

    def _acquire(self, url: str) -> _Child:
        with self._cond:
            while True:
                # One that died while idle (killed from outside) is replaced, not handed out.
                for dead in [c for c in self._idle if not c.alive()]:
                    self._idle.remove(dead)
                    self._count -= 1
                    dead.kill()
                if self._busy_urls.get(url, 0) < self._per_url:
                    if self._idle:
                        child = self._idle.pop()
                        self._busy_urls[url] = self._busy_urls.get(url, 0) + 1
                        return child
                    if self._count < self._max:
                        self._count += 1
                        self._busy_urls[url] = self._busy_urls.get(url, 0) + 1
                        break
                self._cond.wait()
        try:
            return _Child.start(self._memory_limit)
        except Exception:
            with self._cond:
                self._count -= 1
                self._unbusy(url)
                self._cond.notify_all()
            raise

    def _release(self, url: str, child: _Child, healthy: bool) -> None:
        with self._cond:
            self._unbusy(url)
            keep = healthy and child.alive() and not self._closed
            if keep:
                child.last_used = time.monotonic()
                self._idle.append(child)
                self._start_reaper()
            else:
                self._count -= 1
            self._cond.notify_all()
        if not keep:
            child.kill()

    def _unbusy(self, url: str) -> None:
        left = self._busy_urls.get(url, 0) - 1
        if left > 0:
            self._busy_urls[url] = left
        else:
            self._busy_urls.pop(url, None)

    def _start_reaper(self) -> None:
        """Under the lock: a thread that ends idle children, alive while any is idle."""
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(
                target=self._reap, name="optuna-child-reaper", daemon=True
            )
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                expired = [c for c in self._idle if now - c.last_used >= self._idle_seconds]
                self._idle = [c for c in self._idle if c not in expired]
                self._count -= len(expired)
                if expired:
                    self._cond.notify_all()
                oldest = min((c.last_used for c in self._idle), default=None)
                if oldest is None and not expired:
                    self._reaper = None
                    return
            for child in expired:
                child.close()
            if oldest is not None:
                time.sleep(max(0.05, oldest + self._idle_seconds - time.monotonic()))


# ------------------------------------------------------------------ the child's side
class _Captured(logging.Handler):
    """The child's log records, sent back with its answer."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


class _Storages:
    """The child's storages, one per URL and kind, kept while the child lives."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str, int | None], RDBStorage] = {}

    def plain(self, url: str, create_tables: bool = False) -> RDBStorage:
        from optuna.storages import RDBStorage

        from optuna_operator.storage.pools import engine_kwargs

        key = (url, "plain", None)
        if create_tables or key not in self._made:
            # Creating the tables also checks the schema's version (Optuna's RuntimeError).
            self._made[key] = RDBStorage(
                url,
                engine_kwargs=engine_kwargs(
                    url, APPLICATION_NAME, None, statement_timeout_ms=STATEMENT_TIMEOUT_MS
                ),
                skip_table_creation=not create_tables,
                skip_compatibility_check=not create_tables,
            )
        return self._made[key]

    def heartbeat(self, url: str, heartbeat_interval: int) -> RDBStorage:
        from optuna_operator.storage.engines import heartbeat_storage

        key = (url, "heartbeat", heartbeat_interval)
        if key not in self._made:
            self._made[key] = heartbeat_storage(
                url,
                heartbeat_interval,
                application_name=APPLICATION_NAME,
                pool_size=None,
                statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            )
        return self._made[key]


def _open(storages: _Storages, url: str) -> str:
    """Create Optuna's tables where they are missing and check their version; the schema
    version Optuna expects (the operator compares it with what it reads)."""
    storage = storages.plain(url, create_tables=True)
    head: str = storage._version_manager.get_head_version()
    return head


def _warm_start_trials(storage: RDBStorage, new: NewStudy) -> list[Any]:
    """The COMPLETE trials of another study (the `most` recent ones), as new trials marked
    with where they came from."""
    import optuna
    from optuna.trial import TrialState

    from optuna_operator.contract import WARM_START_ATTR
    from optuna_operator.storage.study_setup import WarmStartError

    assert new.warm_start is not None
    source_name, n_objectives, most = new.warm_start, len(new.directions), new.warm_start_max
    try:
        source = optuna.load_study(study_name=source_name, storage=storage)
    except KeyError:
        raise WarmStartError(
            f"spec.warmStart.studyName {source_name!r} does not exist in this storage"
        ) from None
    if len(source.directions) != n_objectives:
        raise WarmStartError(
            f"spec.warmStart.studyName {source_name!r} has {len(source.directions)} objectives, "
            f"this study {n_objectives}"
        )
    complete = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    chosen = sorted(complete, key=lambda t: t.number)[-most:] if most else complete
    return [
        optuna.trial.create_trial(
            params=t.params,
            distributions=t.distributions,
            values=t.values,
            user_attrs={**t.user_attrs, WARM_START_ATTR: f"{source_name}#{t.number}"},
        )
        for t in chosen
    ]


def create_study(storage: RDBStorage, new: NewStudy) -> int | None:
    """The new study's id; None when another process created it first (only the creator
    may record itself as the owner)."""
    import warnings

    import optuna

    from optuna_operator.contract import WARM_START_COUNT_ATTR, to_optuna_direction

    child_log = logging.getLogger("optuna_operator.storage.study_setup")
    history = _warm_start_trials(storage, new) if new.warm_start else []
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=new.name,
            directions=[to_optuna_direction(d) for d in new.directions],
        )
    except optuna.exceptions.DuplicatedStudyError:
        return None
    if new.metric_names:
        with warnings.catch_warnings():
            # Experimental since Optuna 3.2 and unchanged since; the dashboard uses it.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(new.metric_names)
    # Copied before anything is enqueued: the sampler sees the history from trial one.
    study.add_trials(history)
    storage.set_study_system_attr(study._study_id, WARM_START_COUNT_ATTR, len(history))
    for params in new.enqueue or []:
        study.enqueue_trial(params, skip_if_exists=True)
    child_log.info("Created Optuna study %s (%d trials copied)", new.name, len(history))
    return study._study_id


def _create(storages: _Storages, url: str, new: dict[str, Any]) -> int | None:
    from optuna_operator.storage.study_setup import NewStudy

    return create_study(storages.plain(url), NewStudy.from_json(new))


def _delete(storages: _Storages, url: str, name: str, owner: dict[str, str] | None) -> bool:
    from optuna_operator.storage.study_setup import Owner, delete_owned_study

    return delete_owned_study(
        storages.plain(url), name, Owner.from_attr(owner) if owner is not None else None
    )


def _fail_stale(
    storages: _Storages, url: str, name: str, heartbeat_interval: int, silent: list[int]
) -> list[int]:
    """Fail (and retry) the study's stale trials; `silent` carries HeartbeatStorage's
    trials-without-a-heartbeat from the operator's last call (a child may not live that
    long), and the answer is the set for the next one."""
    import optuna

    storage = storages.heartbeat(url, heartbeat_interval)
    storage._silent = frozenset(silent)  # type: ignore[attr-defined]
    study = optuna.load_study(study_name=name, storage=storage)
    optuna.storages.fail_stale_trials(study)
    return sorted(storage._silent)  # type: ignore[attr-defined]


_OPS: dict[str, Callable[..., Any]] = {
    "open": _open,
    "create": _create,
    "delete": _delete,
    "fail_stale": _fail_stale,
}


def _serve(storages: _Storages, request: dict[str, Any], captured: _Captured) -> dict[str, Any]:
    url = request["url"]
    captured.records = []
    try:
        result = _OPS[request["op"]](storages, url, **request["args"])
    except MemoryError:
        answer: dict[str, Any] = {
            "error": {
                "kind": "MemoryError",
                "message": "the Optuna child ran out of its memory limit",
            }
        }
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        kind = _kind(exc)
        answer = {"error": {"kind": kind, "message": redact(first, url)}}
    else:
        answer = {"result": result}
    answer["logs"] = [
        (level, name, redact(message, url)) for level, name, message in captured.records
    ]
    return answer


def _kind(exc: Exception) -> str:
    """The exception's class, or SQLAlchemyError for any of SQLAlchemy's."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        return "SQLAlchemyError"
    return type(exc).__name__


def main(argv: list[str]) -> int:
    """The child: requests on stdin, answers on stdout, until stdin closes."""
    limit = int(argv[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Stray prints must not corrupt the answers: stdout becomes stderr, answers go to the
    # original stdout.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    captured = _Captured()
    root = logging.getLogger()
    root.handlers[:] = [captured]
    root.setLevel(logging.INFO)
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storages = _Storages()
    for line in sys.stdin:
        if not line.strip():
            continue
        answers.write(json.dumps(_serve(storages, json.loads(line), captured)) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
