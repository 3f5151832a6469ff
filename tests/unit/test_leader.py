"""Leader election over a Lease (leader.py): the rule as a table, the records it writes, the
loops against an in-memory Lease that behaves like the API server's (resourceVersion checks,
409 on a stale write or a second create) under a clock the test moves, and the settings."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from optuna_operator import leader
from optuna_operator.config import LeaderElection, add_run_arguments, settings_from_args
from optuna_operator.leader import Elector, LeaseLock, LeaseRecord, Step, claim, decide

ME, OTHER = "operator-a_1", "operator-b_2"
T0 = "2026-01-01T00:00:00.000000Z"


def held_by(holder: str, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, acquired=T0, renewed=T0, transitions=3)


# ------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("leading", "record", "unchanged_for", "step"),
    [
        # No Lease yet: whoever looks creates it (the API server lets one create win).
        (False, None, 0.0, Step.CREATE),
        (True, None, 0.0, Step.CREATE),
        # Another replica's Lease that changed within its duration: stand by...
        (False, held_by(OTHER), 0.0, Step.WAIT),
        (False, held_by(OTHER), 14.9, Step.WAIT),
        # ...and take it over once it has looked the same for the whole duration, by this
        # replica's clock (its renewTime is never compared with this clock).
        (False, held_by(OTHER), 15.0, Step.ACQUIRE),
        (False, held_by(OTHER, duration=5), 6.0, Step.ACQUIRE),
        # Released (no holder) or never held: take it at once.
        (False, held_by(""), 0.0, Step.ACQUIRE),
        (False, LeaseRecord("", 1), 0.0, Step.ACQUIRE),
        # Ours: renew, however long ago it last changed.
        (True, held_by(ME), 0.0, Step.RENEW),
        (True, held_by(ME), 60.0, Step.RENEW),
        (False, held_by(ME), 60.0, Step.RENEW),
        # A leader that finds another holder (or none) lost it: stop, even if that holder's
        # lease looks expired.
        (True, held_by(OTHER), 0.0, Step.LOST),
        (True, held_by(OTHER), 60.0, Step.LOST),
        (True, held_by(""), 0.0, Step.LOST),
    ],
)
def test_decide(
    leading: bool, record: LeaseRecord | None, unchanged_for: float, step: Step
) -> None:
    assert decide(ME, leading, record, unchanged_for) is step


def test_claim_creates_renews_and_takes_over() -> None:
    now = "2026-01-01T00:00:02.000000Z"
    assert claim(ME, None, now, 15) == LeaseRecord(ME, 15, now, now, 0)
    # A renewal keeps when it was acquired and how often it changed hands.
    assert claim(ME, held_by(ME), now, 15) == LeaseRecord(ME, 15, T0, now, 3)
    # A takeover (of a live holder's expired lease, or a released one) counts one more.
    assert claim(ME, held_by(OTHER), now, 15) == LeaseRecord(ME, 15, now, now, 4)
    assert claim(ME, LeaseRecord("", 1, T0, T0, 4), now, 15) == LeaseRecord(ME, 15, now, now, 5)


def test_a_release_leaves_no_holder_and_one_second() -> None:
    now = "2026-01-01T00:00:09.000000Z"
    assert leader.released(held_by(ME), now) == LeaseRecord("", 1, now, now, 3)


def test_the_record_round_trips_through_the_lease_spec() -> None:
    record = held_by(ME)
    spec = record.to_spec()
    assert spec == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": T0,
        "renewTime": T0,
        "leaseTransitions": 3,
    }
    assert LeaseRecord.from_spec(spec) == record
    assert LeaseRecord.from_spec({}) == LeaseRecord("", 0)


def test_micro_time_is_what_the_api_server_writes() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    moment = datetime(2026, 1, 2, 3, 4, 5, 67, tzinfo=UTC)
    assert leader.micro_time(moment) == "2026-01-02T03:04:05.000067Z"
    east = moment.astimezone(timezone(timedelta(hours=9)))
    assert leader.micro_time(east) == "2026-01-02T03:04:05.000067Z"


def test_identity_is_the_pod_name_and_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "optuna-operator-7d9f-x2x4")
    first, second = leader.identity(), leader.identity()
    assert first.startswith("optuna-operator-7d9f-x2x4_")
    assert first != second


# ------------------------------------------------------- the loops against an in-memory Lease


class Server:
    """One Lease as the API server keeps it: a resourceVersion that moves on every write,
    409 for a create of an existing Lease or an update with a stale resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.writes = 0
        self.down = False

    def handle(self, method: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        if self.down:
            return 503, {"message": "unavailable"}
        if method == "GET":
            return (404, {}) if self.lease is None else (200, json.loads(json.dumps(self.lease)))
        assert body is not None and body["kind"] == "Lease"
        if method == "POST" and self.lease is not None:
            return 409, {"reason": "AlreadyExists"}
        if method == "PUT":
            if self.lease is None:
                return 404, {}
            if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
                return 409, {"reason": "Conflict"}
        self.version += 1
        self.writes += 1
        self.lease = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
        }
        return 200, self.lease

    def holder(self) -> str:
        assert self.lease is not None
        return str(self.lease["spec"]["holderIdentity"])


class Lock(LeaseLock):
    """LeaseLock with its one HTTP call answered by a Server."""

    def __init__(self, server: Server) -> None:
        super().__init__(None, "optuna-system", "optuna-operator")  # type: ignore[arg-type]
        self.server = server

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> tuple[int, dict[str, Any]]:
        assert path.startswith("/apis/coordination.k8s.io/v1/namespaces/optuna-system/leases")
        assert timeout > 0
        return self.server.handle(method, body)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


ELECTION = LeaderElection("optuna-operator", "optuna-system", 15.0, 10.0, 2.0)


def elector(server: Server, me: str, clock: Clock, lost: list[str]) -> Elector:
    return Elector(Lock(server), me, ELECTION, lost.append, clock)


def test_one_replica_leads_and_the_other_takes_over_when_renewals_stop() -> None:
    server, clock, lost = Server(), Clock(), []
    a, b = elector(server, ME, clock, lost), elector(server, OTHER, clock, lost)
    assert a.attempt() and a.leading
    assert server.holder() == ME
    assert not b.attempt()  # a renews; b stands by while the record keeps changing
    for _ in range(20):
        clock.now += 2.0
        assert a.attempt()
        assert not b.attempt()
    assert server.lease is not None and server.lease["spec"]["leaseTransitions"] == 0
    # a stops renewing (killed): b takes over a full lease duration after it last saw a change.
    clock.now += 2.0
    assert not b.attempt()
    clock.now += 12.9
    assert not b.attempt()
    clock.now += 0.1
    assert b.attempt() and b.leading
    assert server.holder() == OTHER
    assert server.lease is not None and server.lease["spec"]["leaseTransitions"] == 1
    # a, back (a paused process), finds another holder: lost, it does not write.
    writes = server.writes
    assert not a.attempt()
    assert lost == [f"Lease optuna-operator is held by {OTHER} now"]
    assert server.writes == writes


def test_a_skewed_renew_time_changes_nothing() -> None:
    """The holder's renewTime far in the past or future: only whether it changed matters."""
    server, clock, lost = Server(), Clock(), []
    b = elector(server, OTHER, clock, lost)
    stale = LeaseRecord(ME, 15, "2001-01-01T00:00:00.000000Z", "2001-01-01T00:00:00.000000Z")
    server.lease = {"kind": "Lease", "metadata": {"resourceVersion": "7"}, "spec": stale.to_spec()}
    assert not b.attempt()  # first sight: the lease duration starts now
    clock.now += 14.0
    assert not b.attempt()
    # Renewed with a renewTime in the future: a change, so the lease duration starts again.
    future = LeaseRecord(ME, 15, "2099-01-01T00:00:00.000000Z", "2099-01-01T00:00:01.000000Z")
    server.lease["spec"] = future.to_spec()
    clock.now += 1.0
    assert not b.attempt()
    clock.now += 14.0
    assert not b.attempt()
    clock.now += 1.0
    assert b.attempt()


def test_of_two_replicas_racing_one_wins() -> None:
    server, clock, lost = Server(), Clock(), []
    a, b = elector(server, ME, clock, lost), elector(server, OTHER, clock, lost)
    # Both read "no Lease"; the API server lets one create win.
    assert a.lock.get(1.0) is None and b.lock.get(1.0) is None
    assert a.lock.create(claim(ME, None, T0, 15), 1.0)
    assert not b.lock.create(claim(OTHER, None, T0, 15), 1.0)
    # Both read the same released Lease; the second update carries a stale resourceVersion.
    found = a.lock.get(1.0)
    assert found is not None
    record, version = found
    assert a.lock.update(leader.released(record, T0), version, 1.0)
    found = a.lock.get(1.0)
    assert found is not None
    record, version = found
    assert a.lock.update(claim(ME, record, T0, 15), version, 1.0)
    assert not b.lock.update(claim(OTHER, record, T0, 15), version, 1.0)
    assert server.holder() == ME


def test_a_release_hands_over_at_the_next_look() -> None:
    server, clock, lost = Server(), Clock(), []
    a, b = elector(server, ME, clock, lost), elector(server, OTHER, clock, lost)
    assert a.attempt()
    assert not b.attempt()
    a.release()
    assert server.holder() == "" and not a.leading
    assert server.lease is not None and server.lease["spec"]["leaseDurationSeconds"] == 1
    clock.now += 2.0
    assert b.attempt()
    assert server.holder() == OTHER
    a.release()  # not ours any more: nothing written
    assert server.holder() == OTHER


def test_the_leader_gives_up_after_the_renew_deadline() -> None:
    server, clock, lost = Server(), Clock(), []
    a = elector(server, ME, clock, lost)
    assert a.attempt()
    server.down = True
    ticks: list[float] = []

    class Ticking(threading.Event):
        """stop.wait(period) moves the clock by the period instead of sleeping."""

        def wait(self, timeout: float | None = None) -> bool:
            assert timeout == ELECTION.retry_period
            clock.now += timeout
            ticks.append(clock.now)
            return len(ticks) > 100

    a.keep(Ticking())
    assert len(lost) == 1 and lost[0].startswith("Lease optuna-operator not renewed for 10.0 s")
    assert len(ticks) == 5  # renewals failed at 2, 4, 6, 8 and 10 s, then it gave up


def test_a_standby_keeps_looking_through_api_errors() -> None:
    server, clock, lost = Server(), Clock(), []
    b = elector(server, OTHER, clock, lost)
    server.down = True
    looks: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            assert ELECTION.retry_period <= timeout < ELECTION.retry_period * 1.2
            looks.append(timeout)
            server.down = len(looks) < 3
            return False

    assert b.acquire(Stop())
    assert len(looks) == 3 and server.holder() == OTHER and not lost
    stopped = threading.Event()
    stopped.set()
    assert not elector(Server(), ME, clock, lost).acquire(stopped)


# ------------------------------------------------------------------- the standby's health


def test_a_standby_answers_its_health_endpoint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with leader._standby_health(f"http://127.0.0.1:{port}/healthz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as rsp:
            assert rsp.status == 200
            assert json.loads(rsp.read()) == {"leader": False}
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert info.value.code == 404
    # The port is free again for kopf's own endpoint.
    with leader._standby_health(f"http://127.0.0.1:{port}/healthz"):
        pass


# ------------------------------------------------------------------------------ settings


def settings(*argv: str) -> Any:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_leader_election_is_on_by_default_with_client_go_timings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("POD_NAMESPACE", "OPTUNA_OPERATOR_NAMESPACE", "OPTUNA_OPERATOR_LEADER_ELECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POD_NAMESPACE", "optuna-system")
    assert settings().leader_election == LeaderElection(
        "optuna-operator", "optuna-system", 15.0, 10.0, 2.0
    )
    assert ELECTION.lease_seconds == 15
    assert LeaderElection(lease_duration=2.5).lease_seconds == 3


def test_leader_election_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    chosen = settings(
        "--leader-elect-resource-name=tuner",
        "--leader-elect-lease-duration=1m",
        "--leader-elect-renew-deadline=40",
        "--leader-elect-retry-period=1500ms",
    ).leader_election
    assert chosen == LeaderElection("tuner", "ops", 60.0, 40.0, 1.5)
    assert settings("--leader-elect=false").leader_election is None
    assert settings("--leader-elect").leader_election is not None
    monkeypatch.setenv("OPTUNA_OPERATOR_LEADER_ELECT", "false")
    assert settings().leader_election is None
    assert settings("--leader-elect=true").leader_election is not None
    monkeypatch.setenv("OPTUNA_OPERATOR_LEADER_ELECT_LEASE_DURATION", "30s")
    monkeypatch.setenv("OPTUNA_OPERATOR_LEADER_ELECT_RETRY_PERIOD", "5s")
    election = settings("--leader-elect").leader_election
    assert (election.lease_duration, election.retry_period) == (30.0, 5.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--leader-elect-lease-duration=soon"], "must be a duration such as 15s"),
        (["--leader-elect-lease-duration=10s"], "longer than --leader-elect-renew-deadline"),
        (["--leader-elect-renew-deadline=2s"], "longer than 1.2 x --leader-elect-retry-period"),
        (["--leader-elect-retry-period=0"], "--leader-elect-retry-period must be positive"),
        (["--leader-elect-resource-name="], "must not be empty"),
    ],
)
def test_leader_election_settings_that_cannot_work_stop_the_operator(
    argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit, match=message.replace(".", r"\.")):
        settings(*argv)


def test_a_bad_boolean_is_refused() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--leader-elect=maybe"])
