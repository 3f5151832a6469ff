"""The operator's admin connections against real PostgreSQL: a tenant who may create
objects in `public` (PostgreSQL 14 and older grant that to everyone) cannot get the admin to
run them, the grant is revoked on the operator's first connection, and each namespace's
roles carry the limits that keep one tenant from taking the server."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from optuna_operator.apiserver import ApiServer
from optuna_operator.kube import Cluster
from optuna_operator.storage.tenancy import Tenancy, TenantLimits, tenant_names, with_user
from testbed import Bed


@pytest.fixture
def old_style_database(bed: Bed) -> Iterator[str]:
    """A database of its own whose `public` schema lets every role create objects, as on
    PostgreSQL 14 and older; its admin URL."""
    url = bed.create_database(f"public_create_{secrets.token_hex(4)}")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("GRANT CREATE ON SCHEMA public TO PUBLIC"))
    engine.dispose()
    yield url


def _plant_studies_view(admin_url: str) -> str:
    """As a tenant's role: a view `public.studies` whose every read advances a sequence (a
    stand-in for any function a tenant would have the admin run); the tenant's role name."""
    tenant = f"mallory_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    admin = create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE {tenant} LOGIN PASSWORD '{password}'"))
    admin.dispose()
    mallory = create_engine(with_user(admin_url, tenant, password))
    with mallory.begin() as conn:
        conn.execute(text("CREATE SEQUENCE public.tripwire"))
        conn.execute(text("GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.tripwire TO PUBLIC"))
        conn.execute(
            text(
                "CREATE FUNCTION public.tripped() RETURNS bigint LANGUAGE sql "
                "AS $$ SELECT nextval('public.tripwire') $$"
            )
        )
        conn.execute(
            text(
                "CREATE VIEW public.studies AS SELECT public.tripped() AS study_id, "
                "'team-a.x'::text AS study_name"
            )
        )
        conn.execute(text("GRANT SELECT ON public.studies TO PUBLIC"))
    mallory.dispose()
    return tenant


def _tripped(admin_url: str) -> bool:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT is_called FROM public.tripwire")).scalar())
    finally:
        engine.dispose()


def test_a_view_planted_in_public_is_never_run_by_the_admin(
    old_style_database: str,
    api_server: ApiServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _plant_studies_view(old_style_database)
    # The planted view works: whoever reads it runs the tenant's function.
    probe = create_engine(old_style_database)
    with probe.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM studies")).scalar() == 1
    probe.dispose()
    assert _tripped(old_style_database)
    engine = create_engine(old_style_database)
    with engine.begin() as conn:
        conn.execute(text("SELECT setval('public.tripwire', 1, false)"))
    engine.dispose()
    assert not _tripped(old_style_database)

    tenancy = Tenancy(Cluster(api_server))
    try:
        with caplog.at_level(logging.WARNING, logger="optuna_operator.storage.tenancy"):
            tenancy.ensure(namespace, old_style_database)
            # The 0.1.0 lookup reads `public.studies` by name: a view there is left alone.
            assert tenancy.legacy_study_exists(old_style_database, "team-a.x") is False
    finally:
        tenancy.close()
    assert not _tripped(old_style_database)
    messages = [r.getMessage() for r in caplog.records]
    assert any("Revoked CREATE on schema public from PUBLIC" in m for m in messages), messages
    assert any("Not reading public.studies (not a table" in m for m in messages), messages

    # The grant is gone: no role but the schema's owner creates objects there any more.
    engine = create_engine(old_style_database)
    with engine.connect() as conn:
        granted = conn.execute(
            text("SELECT has_schema_privilege('public', 'public', 'CREATE')")
        ).scalar()
    engine.dispose()
    assert granted is False


def test_tenant_roles_carry_a_connection_limit_and_timeouts(
    storage_url: str, api_server: ApiServer, namespace: str
) -> None:
    limits = TenantLimits(
        connection_limit=7, statement_timeout_ms=4_000, idle_in_transaction_timeout_ms=5_000
    )
    tenancy = Tenancy(Cluster(api_server), limits=limits)
    try:
        creds = tenancy.ensure(namespace, storage_url)
    finally:
        tenancy.close()
    names = tenant_names(namespace)
    engine = create_engine(storage_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT rolname, rolconnlimit, rolconfig FROM pg_roles "
                "WHERE rolname IN (:rw, :ro) ORDER BY rolname"
            ),
            {"rw": names.role, "ro": names.readonly_role},
        ).all()
    engine.dispose()
    assert len(rows) == 2
    for _, connection_limit, config in rows:
        assert connection_limit == 7
        assert "statement_timeout=4000" in config
        assert "idle_in_transaction_session_timeout=5000" in config

    # The server enforces them on the tenant's own sessions.
    tenant = create_engine(creds.url)
    try:
        with tenant.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "4s"
            with pytest.raises(Exception, match="statement timeout"):
                conn.execute(text("SELECT pg_sleep(10)"))
    finally:
        tenant.dispose()
    assert make_url(creds.url).username == names.role
