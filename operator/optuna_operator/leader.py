"""Leader election over a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it
(what controller-runtime managers use): of several operator replicas, the one holding the
Lease runs the controller; the others stand by and take over when it stops renewing.

- A standby serves its health endpoint and looks at the Lease every retry period. It takes
  the Lease when nobody holds it, or when the record has not changed for the lease duration,
  timed by its own monotonic clock from when it saw the record change: wall clocks of two
  nodes are never compared (renewTime is written for people, not read).
- The holder renews every retry period. When it could not renew for the renew deadline
  (shorter than the lease duration), or finds another holder, the process exits non-zero at
  once: the Deployment restarts it as a standby, and two leaders never act.
- Every update carries the resourceVersion it read: of two replicas racing, one wins (409).
- A clean stop releases the Lease (no holder, leaseDurationSeconds 1), so a rolling update
  hands over within a retry period, not a lease duration.

`decide` and `claim` are the pure rules; `LeaseLock` the three calls; `Elector` the loops;
`run` what the `run` command calls around kopf.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from optuna_operator.apiserver import ApiServer, Request
from optuna_operator.config import LeaderElection

__all__ = ["Elector", "LeaseLock", "LeaseRecord", "Step", "claim", "decide", "identity", "run"]

log = logging.getLogger(__name__)

# A standby waits retry_period x [1, 1 + JITTER): standbys do not look in lockstep.
JITTER = 0.2


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec: who holds it, for how long, since when, and how often it changed hands.
    Times are MicroTime strings as written; only equality of records is ever compared."""

    holder: str
    duration: int
    acquired: str | None = None
    renewed: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LeaseRecord:
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),
            acquired=spec.get("acquireTime"),
            renewed=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration,
            "acquireTime": self.acquired,
            "renewTime": self.renewed,
            "leaseTransitions": self.transitions,
        }


class Step(Enum):
    """What a replica does with the Lease it read."""

    CREATE = "create"  # there is no Lease: create it, holding it
    ACQUIRE = "acquire"  # free, or its holder stopped renewing: take it over
    RENEW = "renew"  # this replica holds it: renew it
    WAIT = "wait"  # another replica holds it and renews it: stand by
    LOST = "lost"  # this replica led, and another holds it now: stop at once


def decide(me: str, leading: bool, record: LeaseRecord | None, unchanged_for: float) -> Step:
    """The rule, given the Lease as read and how many seconds (by this replica's monotonic
    clock) it has looked exactly like this."""
    if record is None:
        return Step.CREATE
    if record.holder == me:
        return Step.RENEW
    if leading:
        return Step.LOST
    if record.holder and unchanged_for < record.duration:
        return Step.WAIT
    return Step.ACQUIRE


def claim(me: str, record: LeaseRecord | None, now: str, duration: int) -> LeaseRecord:
    """The record that holds the Lease for `me` from `now`: a renewal keeps the acquire time
    and the count of transitions, a takeover counts one more."""
    if record is not None and record.holder == me:
        return replace(record, duration=duration, renewed=now)
    transitions = 0 if record is None else record.transitions + 1
    return LeaseRecord(me, duration, acquired=now, renewed=now, transitions=transitions)


def released(record: LeaseRecord, now: str) -> LeaseRecord:
    """client-go's release: no holder and a one-second lease, so a standby takes it at once."""
    return LeaseRecord("", 1, acquired=now, renewed=now, transitions=record.transitions)


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime as the API server writes it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def identity() -> str:
    """The pod's name (POD_NAME from the Downward API, else the hostname) and a random
    suffix, as controller-runtime does: a restarted process is a new holder."""
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4()}"


# ------------------------------------------------------------------------------------ I/O


class LeaseLock:
    """Read, create and update one Lease; an update carries the resourceVersion read."""

    def __init__(self, api: ApiServer, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def get(self, timeout: float) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion; None when there is no Lease."""
        status, body = self._send("GET", f"{self.path}/{self.name}", None, timeout)
        if status == 404:
            return None
        self._check(status, body, "read")
        version = str(body["metadata"]["resourceVersion"])
        return LeaseRecord.from_spec(body.get("spec") or {}), version

    def create(self, record: LeaseRecord, timeout: float) -> bool:
        """False when another replica created it first."""
        status, body = self._send("POST", self.path, self._lease(record), timeout)
        return self._check(status, body, "create")

    def update(self, record: LeaseRecord, version: str, timeout: float) -> bool:
        """False when the Lease changed since it was read (409 Conflict)."""
        lease = self._lease(record, version)
        status, body = self._send("PUT", f"{self.path}/{self.name}", lease, timeout)
        return self._check(status, body, "update")

    def _lease(self, record: LeaseRecord, version: str | None = None) -> dict[str, Any]:
        meta = {"name": self.name, "namespace": self.namespace}
        if version is not None:
            meta["resourceVersion"] = version
        spec = record.to_spec()
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> tuple[int, dict[str, Any]]:
        status, parsed = self.api.request(Request(method, path, body, timeout=timeout))
        return status, parsed if isinstance(parsed, dict) else {}

    def _check(self, status: int, body: dict[str, Any], what: str) -> bool:
        """False on 409 (another writer was first), True on success; raises otherwise."""
        if status == 409:
            return False
        if status >= 400:
            reason = body.get("message") or body.get("reason") or ""
            where = f"{self.namespace}/{self.name}"
            raise LeaseError(f"could not {what} Lease {where}: {status} {reason}")
        return True


class LeaseError(Exception):
    """The API server refused or failed a Lease request."""


class Elector:
    """One replica's side of the election: `acquire` blocks until it holds the Lease, `keep`
    renews it until told to stop (calling `on_lost` when it cannot), `release` hands it on."""

    def __init__(
        self,
        lock: LeaseLock,
        me: str,
        election: LeaderElection,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = lock
        self.me = me
        self.election = election
        self.on_lost = on_lost
        self.clock = clock
        self.leading = False
        self.renewed_at = 0.0  # monotonic time of the read before the last successful write
        self._seen: LeaseRecord | None = None
        self._seen_at = clock()
        self._holder: str | None = None  # the holder last logged while standing by

    def attempt(self) -> bool:
        """One look at the Lease and the write it calls for; True when this replica holds it.
        A write that loses a race answers False; an API error raises."""
        now = self.clock()
        # A leader's requests end by its renew deadline: a hung call must not outlast it.
        ends = (self.renewed_at if self.leading else now) + self.election.renew_deadline

        def timeout() -> float:
            return max(0.5, ends - self.clock())

        found = self.lock.get(timeout())
        record, version = found if found is not None else (None, "")
        if record != self._seen:
            self._seen, self._seen_at = record, now
        step = decide(self.me, self.leading, record, now - self._seen_at)
        if step is Step.LOST:
            assert record is not None
            self.on_lost(f"Lease {self.lock.name} is held by {record.holder or 'nobody'} now")
            return False
        if step is Step.WAIT:
            assert record is not None
            if record.holder != self._holder:
                self._holder = record.holder
                log.info("Standing by: Lease %s is held by %s", self.lock.name, record.holder)
            return False
        wanted = claim(self.me, record, micro_time(datetime.now(UTC)), self.election.lease_seconds)
        if step is Step.CREATE:
            won = self.lock.create(wanted, timeout())
        else:
            won = self.lock.update(wanted, version, timeout())
        if won:
            self._seen, self._seen_at = wanted, now
            self.renewed_at = now
            self.leading = True
        return won

    def acquire(self, stop: threading.Event) -> bool:
        """Look every retry period until this replica holds the Lease (True), or `stop` is
        set (False)."""
        while not stop.is_set():
            try:
                if self.attempt():
                    log.info("Leading: acquired Lease %s as %s", self.lock.name, self.me)
                    return True
            except Exception as exc:  # the API server may be away: keep looking
                log.warning("Could not look at Lease %s: %s", self.lock.name, exc)
            period = self.election.retry_period
            stop.wait(period * (1 + JITTER * random.random()))
        return False

    def keep(self, stop: threading.Event) -> None:
        """Renew every retry period until `stop` is set; `on_lost` once the renew deadline
        has passed without a renewal (checked before a look too: a process frozen past its
        deadline stops on waking, before any request)."""
        deadline = self.election.renew_deadline
        try:
            while not stop.wait(self.election.retry_period):
                if self.clock() - self.renewed_at < deadline:
                    try:
                        self.attempt()
                    except Exception as exc:
                        log.warning("Could not renew Lease %s: %s", self.lock.name, exc)
                overdue = self.clock() - self.renewed_at
                if overdue >= deadline and not stop.is_set():
                    self.on_lost(f"Lease {self.lock.name} not renewed for {overdue:.1f} s")
                    return
        except BaseException as exc:  # a renewer that died must not leave a leader behind
            self.on_lost(f"the renewal of Lease {self.lock.name} failed: {exc!r}")

    def release(self) -> None:
        """Hand the Lease on: no holder, one second. Nothing when it is not ours any more."""
        if not self.leading:
            return
        self.leading = False
        try:
            found = self.lock.get(self.election.retry_period)
            if found is None or found[0].holder != self.me:
                return
            record, version = found
            now = micro_time(datetime.now(UTC))
            if self.lock.update(released(record, now), version, self.election.retry_period):
                log.info("Released Lease %s", self.lock.name)
        except Exception as exc:  # a standby takes over after the lease duration instead
            log.warning("Could not release Lease %s: %s", self.lock.name, exc)


def _exit_at_once(reason: str) -> None:
    """controller-runtime's answer to a lost lease: leave now, run nothing more (no clean-up
    that might still write), and let the Deployment restart the pod as a standby."""
    log.critical("Leader election lost (%s): exiting so that only one replica acts", reason)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(1)


@contextlib.contextmanager
def _standby_health(endpoint: str | None) -> Iterator[None]:
    """Answer the liveness endpoint while standing by (kopf serves it once leading): a
    standby is healthy and ready, or a rolling update would wait forever for the new pod
    while the old one holds the Lease."""
    if not endpoint:
        yield
        return
    url = urlsplit(endpoint)
    path = url.path or "/"

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?")[0] == path
            body = b'{"leader": false}\n' if ok else b"not found\n"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json" if ok else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), Health)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="standby health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM or SIGINT while standing by: stop looking and exit cleanly."""
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(
    election: LeaderElection | None,
    api: Callable[[], ApiServer],
    lead: Callable[[], None],
    health: str | None = None,
) -> None:
    """Call `lead` (which runs until the operator stops) while holding the Lease: stand by
    until it is ours, renew it in a thread meanwhile, release it after. Without an election,
    call `lead` at once."""
    if election is None:
        lead()
        return
    lock = LeaseLock(api(), election.namespace, election.name)
    elector = Elector(lock, identity(), election, _exit_at_once)
    stop = threading.Event()
    log.info("Waiting for Lease %s/%s as %s", election.namespace, election.name, elector.me)
    with _stop_on_signals(stop), _standby_health(health):
        if not elector.acquire(stop):
            log.info("Stopped while standing by")
            return
    done = threading.Event()
    renewer = threading.Thread(target=elector.keep, args=(done,), name="lease", daemon=True)
    renewer.start()
    try:
        if not stop.is_set():  # a SIGTERM right after the Lease was won
            lead()
    finally:
        done.set()
        renewer.join()
        elector.release()
        lock.api.close()
