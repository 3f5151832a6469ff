"""Names of each namespace's PostgreSQL role and schema, and the Secret it receives."""

from __future__ import annotations

import base64
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from optuna_operator.config import _pooler
from optuna_operator.storage import tenancy
from optuna_operator.storage.admin import AdminEngines
from optuna_operator.storage.tenancy import (
    POOLED_URL_KEY,
    READONLY_PASSWORD_KEY,
    TENANT_LABEL,
    URL_KEY,
    pooled_url,
    tenant_names,
    tenant_secret,
)


def test_names_are_distinct_bounded_and_keep_the_namespace_readable() -> None:
    short = tenant_names("team-a")
    assert (short.role, short.readonly_role, short.schema) == (
        "optuna_rw_t_team_a",
        "optuna_ro_t_team_a",
        "optuna_rw_t_team_a",
    )
    long_ns = "a" * 63
    assert len(tenant_names(long_ns).role) <= 63
    assert len(tenant_names(long_ns).readonly_role) <= 63
    assert tenant_names(long_ns).role.startswith("optuna_rw_h_aaaa")


def test_names_never_collide() -> None:
    namespaces = [
        "a",
        "a-ro",
        "ro-a",
        "rw-a",
        "t-a",
        "h-a",
        "a" * 51,
        "a" * 52,
        "a" * 53,
        "a" * 62 + "b",
        "a" * 62 + "c",
        "x" * 40 + "-" + "y" * 22,
        "x" * 40 + "-" + "y" * 21 + "z",
    ]
    roles = [
        n for ns in namespaces for n in (tenant_names(ns).role, tenant_names(ns).readonly_role)
    ]
    assert len(set(roles)) == len(roles)
    assert all(len(r) <= 63 for r in roles)
    for a, b in itertools.combinations(namespaces, 2):
        assert tenant_names(a) != tenant_names(b)


def test_the_secret_holds_only_the_namespace_role_url_and_the_read_only_password() -> None:
    names = tenant_names("team-a")
    url = "postgresql+psycopg2://optuna_rw_t_team_a:pw@db:5432/optuna"
    secret = tenant_secret("team-a", names, url, "ro-pw")
    assert set(secret["data"]) == {URL_KEY, READONLY_PASSWORD_KEY}
    assert base64.b64decode(secret["data"][URL_KEY]).decode() == url
    assert secret["metadata"]["labels"][TENANT_LABEL] == "true"
    assert "ownerReferences" not in secret["metadata"]


def test_with_a_pooler_the_secret_adds_the_same_role_through_the_pooler() -> None:
    names = tenant_names("team-a")
    url = "postgresql+psycopg2://optuna_rw_t_team_a:pw@db:5432/optuna?sslmode=prefer"
    pooled = pooled_url(url, "optuna-pgbouncer.optuna-system.svc:6432")
    assert pooled == (
        "postgresql+psycopg2://optuna_rw_t_team_a:pw@optuna-pgbouncer.optuna-system.svc:6432"
        "/optuna?sslmode=prefer"
    )
    secret = tenant_secret("team-a", names, url, "ro-pw", pooled)
    assert set(secret["data"]) == {URL_KEY, READONLY_PASSWORD_KEY, POOLED_URL_KEY}
    assert base64.b64decode(secret["data"][URL_KEY]).decode() == url
    assert base64.b64decode(secret["data"][POOLED_URL_KEY]).decode() == pooled


@pytest.mark.parametrize("bad", ["pgbouncer", "pgbouncer:", ":6432", "pgbouncer:x", "h:70000"])
def test_the_worker_pooler_must_be_host_and_port(bad: str) -> None:
    assert _pooler("pgbouncer.ns.svc:6432") == "pgbouncer.ns.svc:6432"
    assert _pooler("") is None
    with pytest.raises(SystemExit, match="host:port"):
        _pooler(bad)


def test_the_read_only_url_carries_no_password_at_all() -> None:
    from optuna_operator.storage.tenancy import with_user

    admin = "postgresql+psycopg2://optuna:admin-secret@db:5432/optuna?sslmode=require"
    assert with_user(admin, "optuna_ro_t_a", None) == (
        "postgresql+psycopg2://optuna_ro_t_a@db:5432/optuna?sslmode=require"
    )
    assert "admin-secret" not in with_user(admin, "optuna_rw_t_a", "pw")


def test_only_a_scram_verifier_of_the_password_is_sent() -> None:
    from optuna_operator.storage.tenancy import scram_verifier

    verifier = scram_verifier("s3cret-password-value")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert "s3cret" not in verifier
    assert scram_verifier("s3cret-password-value") != verifier  # salted


class _RecordingCluster:
    """The three calls Tenancy makes on the cluster, recorded in order with the roles'
    provisioning; `winner` is a Secret another reconcile created first."""

    def __init__(self, calls: list[tuple[str, str]], winner: dict[str, Any] | None) -> None:
        self.calls = calls
        self.winner = winner

    def namespace_uid(self, namespace: str) -> str | None:
        return "uid-of-" + namespace

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def create(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.calls.append(("create Secret", _password_in(body)))
        if self.winner is not None:
            return self.winner, False
        return body, True

    def apply(self, body: dict[str, Any]) -> None:
        self.calls.append(("apply Secret", _password_in(body)))


def _password_in(secret: dict[str, Any]) -> str:
    url = base64.b64decode(secret["data"][URL_KEY]).decode()
    return str(make_url(url).password)


class _NoEngine:
    @contextlib.contextmanager
    def begin(self) -> Iterator[None]:
        yield None


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The roles' provisioning (with the password it gives) and the Secret's writes, in order."""
    recorded: list[tuple[str, str]] = []
    monkeypatch.setattr(
        tenancy,
        "provision",
        lambda conn, names, pw, ro, limits, uid: recorded.append(("provision", pw)),
    )
    monkeypatch.setattr(AdminEngines, "engine", lambda self, url: _NoEngine())
    return recorded


@pytest.mark.parametrize("lost_the_race", [False, True])
def test_a_new_secret_appears_only_after_its_roles_can_log_in(
    calls: list[tuple[str, str]], lost_the_race: bool
) -> None:
    names = tenant_names("team-a")
    admin = "postgresql+psycopg2://optuna:admin-pw@db:5432/optuna"
    their_url = tenancy.with_user(admin, names.role, "w" * 32)
    winner = tenant_secret("team-a", names, their_url, "r" * 32, None) if lost_the_race else None
    cluster = _RecordingCluster(calls, winner)
    creds = tenancy.Tenancy(cluster).ensure("team-a", admin)  # type: ignore[arg-type]
    ours = calls[0][1]
    assert calls[:2] == [("provision", ours), ("create Secret", ours)]
    if lost_the_race:
        # The other reconcile's passwords win and are provisioned in turn.
        assert calls[2:] == [("provision", "w" * 32)]
        assert make_url(creds.url).password == "w" * 32
    else:
        assert calls[2:] == []
        assert make_url(creds.url).password == ours


def test_a_moved_admin_url_reaches_the_roles_before_the_secret(
    calls: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = tenant_names("team-a")
    old_admin = "postgresql+psycopg2://optuna:admin-pw@old-db:5432/optuna"
    new_admin = "postgresql+psycopg2://optuna:admin-pw@new-db:5432/optuna"
    existing = tenant_secret(
        "team-a", names, tenancy.with_user(old_admin, names.role, "w" * 32), "r" * 32, None
    )
    cluster = _RecordingCluster(calls, None)
    monkeypatch.setattr(cluster, "get", lambda kind, namespace, name: existing)
    creds = tenancy.Tenancy(cluster).ensure("team-a", new_admin)  # type: ignore[arg-type]
    # The same password, on the new server first, then in the Secret's new URL.
    assert calls == [("provision", "w" * 32), ("apply Secret", "w" * 32)]
    assert make_url(creds.url).host == "new-db"
