"""Tenancy on the real bed with real PostgreSQL permissions: each namespace has its own role
and schema; no tenant reads, writes, resumes or deletes another's studies; dashboards are
read-only; the admin credential stays in the operator's namespace; children the operator
did not create are never taken over."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import wsgiref.util
from typing import Any

import optuna
import psycopg2
import pytest
from kubernetes import client
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from tests.conftest import NamespaceFactory
from tests.integration.studies import (
    DEFAULT_SECRET,
    OPERATOR_NAMESPACE,
    TENANT_SECRET,
    OperatorProcess,
    Studies,
    secret_value,
    study_body,
    wait_for,
)

from optuna_operator.apiserver import ApiServer
from optuna_operator.kube import Cluster
from optuna_operator.storage.study_store import OWNER_ATTR
from optuna_operator.storage.tenancy import tenant_names
from testbed import Bed

INSUFFICIENT_PRIVILEGE = "42501"


@pytest.fixture
def two_tenants(
    kube_api: client.ApiClient, namespace_factory: NamespaceFactory, operator: OperatorProcess
) -> tuple[Studies, Studies]:
    if not operator.alive():
        operator.start()
    return Studies(kube_api, namespace_factory()), Studies(kube_api, namespace_factory())


def _sql_error(url: str, statement: str) -> str | None:
    """Run one statement as the URL's role; PostgreSQL's SQLSTATE when it fails."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    except ProgrammingError as exc:
        return str(getattr(exc.orig, "pgcode", None))
    finally:
        engine.dispose()
    return None


def _owner(url: str, study_name: str) -> dict[str, str]:
    """The owner the operator recorded in the study's system attrs."""
    storage = optuna.storages.RDBStorage(url)
    try:
        attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study_name))
    finally:
        storage.engine.dispose()
    owner: dict[str, str] = attrs[OWNER_ATTR]
    return owner


def _trial_count(url: str, study_name: str) -> int:
    return len(optuna.load_study(study_name=study_name, storage=url).trials)


def test_each_namespace_has_its_own_role_and_schema_and_cannot_touch_anothers(
    two_tenants: tuple[Studies, Studies], kube_api: client.ApiClient, storage_url: str
) -> None:
    a, b = two_tenants
    a.create(study_body("quad", budget={"trials": 3}))
    b.create(study_body("quad", budget={"trials": 3}))
    a.wait_phase("quad", "Succeeded")
    b.wait_phase("quad", "Succeeded")
    url_a, url_b = a.storage_url(), b.storage_url()
    names_a, names_b = tenant_names(a.namespace), tenant_names(b.namespace)
    assert make_url(url_a).username == names_a.role
    study_b = f"{b.namespace}.quad"

    # Each study lives in its namespace's schema, owned by its role.
    admin = create_engine(storage_url)
    with admin.connect() as conn:
        for names, ns in ((names_a, a.namespace), (names_b, b.namespace)):
            owner = conn.execute(
                text("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = :s"),
                {"s": names.schema},
            ).scalar()
            assert owner == names.role
            in_schema = conn.execute(
                text(f'SELECT study_name FROM "{names.schema}".studies')
            ).scalars()
            assert list(in_schema) == [f"{ns}.quad"]
        attrs = conn.execute(
            text("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = :r"),
            {"r": names_a.role},
        ).one()
        assert tuple(attrs) == (False, False, False)
    admin.dispose()

    # With A's credential, B's study is not even visible, and B's tables refuse A.
    with pytest.raises(KeyError):
        optuna.load_study(study_name=study_b, storage=url_a)
    schema_b = f'"{names_b.schema}"'
    for statement in (
        f"SELECT * FROM {schema_b}.trials",
        f"SELECT * FROM {schema_b}.trial_values",
        f"UPDATE {schema_b}.trials SET state = 'FAIL'",
        f"DELETE FROM {schema_b}.studies",
        f"CREATE TABLE {schema_b}.planted (x int)",
        f'CREATE SCHEMA "{a.namespace}-extra"',
        "CREATE ROLE sneaky LOGIN",
    ):
        assert _sql_error(url_a, statement) == INSUFFICIENT_PRIVILEGE, statement
    assert _trial_count(url_b, study_b) == 3

    # The read-only role reads its own schema only, and writes nothing.
    ro_password = secret_value(kube_api, a.namespace, TENANT_SECRET, "readonly-password")
    assert ro_password
    ro_url = (
        make_url(url_a)
        .set(username=names_a.readonly_role, password=ro_password)
        .render_as_string(hide_password=False)
    )
    assert _trial_count(ro_url, f"{a.namespace}.quad") == 3
    assert _sql_error(ro_url, "DELETE FROM trials") == INSUFFICIENT_PRIVILEGE
    assert _sql_error(ro_url, "UPDATE studies SET study_name = 'x'") == INSUFFICIENT_PRIVILEGE
    assert _sql_error(ro_url, f"SELECT * FROM {schema_b}.trials") == INSUFFICIENT_PRIVILEGE

    # The admin credential is in no Secret the operator wrote outside its namespace
    # (other tests put it into Secrets of their own on purpose: bring-your-own storage).
    admin_password = make_url(storage_url).password
    assert admin_password
    core = client.CoreV1Api(kube_api)
    written = core.list_secret_for_all_namespaces(
        label_selector="app.kubernetes.io/managed-by=optuna-operator"
    ).items
    everything_in_a_and_b = [
        *core.list_namespaced_secret(a.namespace).items,
        *core.list_namespaced_secret(b.namespace).items,
    ]
    assert {s.metadata.namespace for s in everything_in_a_and_b} == {a.namespace, b.namespace}
    for secret in [*written, *everything_in_a_and_b]:
        assert secret.metadata.namespace != OPERATOR_NAMESPACE
        for key, raw in (secret.data or {}).items():
            value = base64.b64decode(raw).decode()
            assert admin_password not in value, f"{secret.metadata.name}[{key}]"
    assert [s.metadata.name for s in core.list_namespaced_secret(a.namespace).items] == [
        TENANT_SECRET
    ]


def test_a_study_naming_another_namespaces_study_cannot_read_resume_or_delete_it(
    two_tenants: tuple[Studies, Studies],
) -> None:
    a, b = two_tenants
    b.create(study_body("victim", budget={"trials": 4}))
    b.wait_phase("victim", "Succeeded")
    victim = f"{b.namespace}.victim"
    url_b = b.storage_url()
    before = _trial_count(url_b, victim)

    # A names B's study: it gets a study of that name in its own schema, never B's.
    a.create(study_body("thief", studyName=victim, budget={"trials": 2}, deletionPolicy="Delete"))
    status = a.wait_phase("thief", "Succeeded")
    assert status["trials"]["complete"] == 2
    assert _trial_count(a.storage_url(), victim) == 2
    a.delete("thief")
    wait_for(lambda: not _exists(a, "thief"), 60, "the thief to be deleted")
    assert _trial_count(url_b, victim) == before
    recorded = _owner(url_b, victim)
    assert (recorded["namespace"], recorded["name"]) == (b.namespace, "victim")


def _exists(studies: Studies, name: str) -> bool:
    try:
        studies.get(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_a_study_owned_by_another_tuningstudy_is_never_resumed_or_deleted(
    studies: Studies,
) -> None:
    studies.create(study_body("owner", budget={"trials": 3}))
    studies.wait_phase("owner", "Succeeded")
    name = f"{studies.namespace}.owner"
    url = studies.storage_url()
    uid = studies.get("owner")["metadata"]["uid"]

    studies.create(
        study_body("other", studyName=name, budget={"trials": 10}, deletionPolicy="Delete")
    )
    cond = studies.wait_condition("other", "StorageReady", "False", "StudyNotOwned")
    assert f"{studies.namespace}/owner" in cond["message"], cond
    assert not studies.jobs("other")
    studies.delete("other")
    wait_for(lambda: not _exists(studies, "other"), 60, "the other TuningStudy to be deleted")
    assert _trial_count(url, name) == 3

    # The same namespace/name re-created after a Retain delete resumes its study.
    studies.delete("owner")
    wait_for(lambda: not _exists(studies, "owner"), 60, "the owner to be deleted")
    studies.create(study_body("owner", budget={"trials": 5}))
    status = studies.wait_phase("owner", "Succeeded")
    assert status["trials"]["complete"] == 5
    assert _trial_count(url, name) == 5
    recorded = _owner(url, name)
    assert recorded["uid"] != uid and recorded["name"] == "owner"


def test_a_study_made_outside_the_operator_is_adopted_only_on_request(studies: Studies) -> None:
    studies.create(study_body("first", budget={"trials": 1}))
    studies.wait_phase("first", "Succeeded")
    url = studies.storage_url()
    outside = optuna.create_study(study_name="by-hand", storage=url, direction="maximize")
    outside.enqueue_trial({"x": 2.0})
    studies.create(study_body("adopter", studyName="by-hand", budget={"trials": 3}))
    cond = studies.wait_condition("adopter", "StorageReady", "False", "StudyNotOwned")
    assert "adoptExistingStudy" in cond["message"]
    studies.patch_spec("adopter", {"adoptExistingStudy": True})
    studies.wait_phase("adopter", "Succeeded")
    adopted = optuna.load_study(study_name="by-hand", storage=url)
    assert adopted.trials[0].params["x"] == 2.0
    assert _owner(url, "by-hand")["name"] == "adopter"


def _wsgi(app: Any, method: str, path: str) -> tuple[int, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path}
    wsgiref.util.setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO(b"")
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
        seen["status"] = int(status.split()[0])

    body = b"".join(app(environ, start_response))
    try:
        return seen["status"], json.loads(body or b"null")
    except ValueError:
        return seen["status"], body.decode(errors="replace")


def test_the_dashboard_reads_only_its_namespace_and_cannot_delete(
    two_tenants: tuple[Studies, Studies],
    kube_api: client.ApiClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = two_tenants
    b.create(study_body("other", budget={"trials": 2}))
    a.create(study_body("dash", budget={"trials": 3}, dashboard={"enabled": True}))
    a.wait_phase("dash", "Succeeded")
    b.wait_phase("other", "Succeeded")
    # The real optuna-dashboard process (the bed runs it from the venv) logs in as the
    # read-only role with PGPASSWORD and serves: its readiness probe passes.
    a.wait_condition("dash", "DashboardAvailable", "True", timeout=120)
    # One dashboard per namespace, read-only: the only one the operator starts.
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment(
        "optuna-dashboard", a.namespace
    )
    assert a.status("dash")["dashboard"]["service"] == "optuna-dashboard"
    container = deployment.spec.template.spec.containers[0]
    url = container.args[-1]
    names = tenant_names(a.namespace)
    assert make_url(url).username == names.readonly_role
    assert make_url(url).password is None
    ro_password = secret_value(kube_api, a.namespace, TENANT_SECRET, "readonly-password")
    assert ro_password and all(ro_password not in arg for arg in container.args)
    env = {e.name: e for e in container.env}
    assert env["PGPASSWORD"].value_from.secret_key_ref.name == TENANT_SECRET
    assert "OPTUNA_STORAGE_URL" not in env

    # optuna-dashboard's own app, started as the pod starts it: that URL, PGPASSWORD set.
    import optuna_dashboard

    monkeypatch.setenv("PGPASSWORD", ro_password)
    app = optuna_dashboard.wsgi(url)
    code, listed = _wsgi(app, "GET", "/api/studies")
    assert code == 200, listed
    assert [s["study_name"] for s in listed["study_summaries"]] == [f"{a.namespace}.dash"]
    study_id = listed["study_summaries"][0]["study_id"]
    code, answer = _wsgi(app, "DELETE", f"/api/studies/{study_id}")
    assert code >= 400, answer
    code, listed = _wsgi(app, "GET", "/api/studies")
    assert [s["study_name"] for s in listed["study_summaries"]] == [f"{a.namespace}.dash"]
    # libpq took the password from PGPASSWORD: without it the role cannot log in.
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(make_url(url).set(drivername="postgresql").render_as_string()).close()


def _dashboard_owners(studies: Studies) -> list[str] | None:
    try:
        deployment = client.AppsV1Api(studies.core.api_client).read_namespaced_deployment(
            "optuna-dashboard", studies.namespace
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return sorted(r.name for r in deployment.metadata.owner_references or [])


def test_the_studies_of_a_namespace_share_one_dashboard_that_goes_with_the_last(
    studies: Studies,
) -> None:
    studies.create(study_body("one", budget={"trials": 2}, dashboard={"enabled": True}))
    studies.create(study_body("two", budget={"trials": 2}, dashboard={"enabled": True}))
    studies.create(study_body("dark", budget={"trials": 2}))  # dashboard off: not an owner
    for name in ("one", "two", "dark"):
        studies.wait_phase(name, "Succeeded")
    wait_for(lambda: _dashboard_owners(studies) == ["one", "two"], 60, "both owners")
    apps = client.AppsV1Api(studies.core.api_client)
    names = [d.metadata.name for d in apps.list_namespaced_deployment(studies.namespace).items]
    assert names == ["optuna-dashboard"]
    assert studies.status("dark").get("dashboard") is None

    # The dashboard outlives one of its studies and goes with the last (garbage collection).
    studies.delete("one")
    wait_for(lambda: _dashboard_owners(studies) == ["two"], 60, "one owner left")
    studies.delete("two")
    wait_for(lambda: _dashboard_owners(studies) is None, 60, "the dashboard to go")
    networking = client.NetworkingV1Api(studies.core.api_client)
    wait_for(
        lambda: not networking.list_namespaced_network_policy(studies.namespace).items,
        60,
        "its NetworkPolicy to go",
    )


def test_a_study_on_its_own_storage_gets_no_dashboard_on_its_read_write_url(
    studies: Studies, storage_url: str
) -> None:
    studies.core.create_namespaced_secret(
        studies.namespace,
        {"metadata": {"name": "own-db"}, "stringData": {"url": storage_url}},
    )
    studies.create(
        study_body(
            "own",
            budget={"trials": 2},
            storage={"secretRef": {"name": "own-db"}},
            dashboard={"enabled": True},
        )
    )
    studies.wait_phase("own", "Succeeded")
    cond = studies.wait_condition(
        "own", "DashboardAvailable", "False", "DashboardNeedsReadOnlySecret"
    )
    assert "spec.dashboard.secretRef" in cond["message"]
    apps = client.AppsV1Api(studies.core.api_client)
    assert apps.list_namespaced_deployment(studies.namespace).items == []


def test_children_of_someone_else_are_never_taken_over(
    studies: Studies, kube_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_api)
    foreign: dict[str, Any] = {
        "metadata": {"name": "optuna-dashboard", "labels": {"team": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    core.create_namespaced_service(studies.namespace, foreign)
    studies.create(study_body("clash", budget={"trials": 2}, dashboard={"enabled": True}))
    cond = studies.wait_condition("clash", "WorkersReady", "False", "ChildConflict")
    assert "Service optuna-dashboard" in cond["message"], cond
    service = core.read_namespaced_service("optuna-dashboard", studies.namespace)
    assert service.metadata.owner_references is None
    assert service.metadata.labels == {"team": "web"}
    assert service.spec.selector == {"app": "web"}

    # Once the name is free the study goes on.
    core.delete_namespaced_service("optuna-dashboard", studies.namespace)
    studies.wait_phase("clash", "Succeeded", timeout=240)


def test_deleting_the_namespace_secret_rotates_both_passwords(studies: Studies) -> None:
    studies.create(study_body("first", budget={"trials": 1}))
    studies.wait_phase("first", "Succeeded")
    old = studies.storage_url()
    studies.core.delete_namespaced_secret(TENANT_SECRET, studies.namespace)
    # Any reconcile in the namespace after the operator's one-minute recheck renews them.
    studies.create(study_body("second", budget={"trials": 1}))
    new = wait_for(
        lambda: (
            (url := secret_value(studies.core.api_client, studies.namespace, TENANT_SECRET, "url"))
            and url != old
            and url
        ),
        120,
        "new credentials",
    )
    studies.wait_phase("second", "Succeeded", timeout=180)
    assert _trial_count(new, f"{studies.namespace}.first") == 1
    with pytest.raises(Exception, match="password authentication failed"):
        _trial_count(old, f"{studies.namespace}.first")


def test_a_study_of_operator_0_1_0_is_migrated_into_its_namespace_schema(
    studies: Studies,
    storage_url: str,
    bed: Bed,
    operator: OperatorProcess,
    kube_api: client.ApiClient,
    api_server: ApiServer,
) -> None:
    # What 0.1.0 left behind, with no operator running: the study under the admin role
    # (public schema), no owner; the admin URL copied into `<study>-storage`.
    operator.stop()
    try:
        name = f"{studies.namespace}.legacy"
        legacy = optuna.create_study(study_name=name, storage=storage_url, direction="maximize")
        legacy.optimize(lambda t: -((t.suggest_float("x", -10, 10) - 2) ** 2), n_trials=3)
        legacy._storage.set_study_system_attr(
            legacy._study_id, "optuna_operator:operator_version", "0.1.0"
        )
        body = studies.create(study_body("legacy", budget={"trials": 5}))
        owner = {
            "apiVersion": body["apiVersion"],
            "kind": "TuningStudy",
            "name": "legacy",
            "uid": body["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        copy = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "legacy-storage",
                "namespace": studies.namespace,
                "labels": {"app.kubernetes.io/managed-by": "optuna-operator"},
                "ownerReferences": [owner],
            },
            "type": "Opaque",
            "stringData": {"url": storage_url},
        }
        Cluster(api_server).apply(copy)  # as 0.1.0 wrote it
    finally:
        operator.start()
    cond = studies.wait_condition("legacy", "StorageReady", "False", "LegacyStudyNotMigrated")
    assert f"optuna-operator migrate --namespace {studies.namespace}" in cond["message"]
    assert not studies.jobs("legacy")
    wait_for(
        lambda: secret_value(kube_api, studies.namespace, "legacy-storage", "url") is None,
        60,
        "the 0.1.0 copy of the admin URL to be emptied",
    )

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_operator.cli",
            "migrate",
            "--namespace",
            studies.namespace,
            "--default-storage-secret",
            f"{OPERATOR_NAMESPACE}/{DEFAULT_SECRET}",
            "--delete-source",
        ],
        env={**os.environ, "KUBECONFIG": str(bed.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{studies.namespace}/legacy: {name}: moved (3 trials)" in result.stdout
    assert make_url(storage_url).password not in result.stdout + result.stderr

    status = studies.wait_phase("legacy", "Succeeded", timeout=240)
    assert status["trials"]["complete"] == 5  # the 3 moved trials count
    assert _trial_count(studies.storage_url(), name) == 5
    assert _owner(studies.storage_url(), name)["name"] == "legacy"
    with pytest.raises(KeyError):
        optuna.load_study(study_name=name, storage=storage_url)


def test_a_namespace_recreated_under_the_same_name_starts_empty(
    studies: Studies, storage_url: str, operator: OperatorProcess
) -> None:
    ns = studies.namespace
    names = tenant_names(ns)
    studies.create(study_body("kept", budget={"trials": 2}))
    studies.wait_phase("kept", "Succeeded")
    old_uid = studies.core.read_namespace(ns).metadata.uid
    studies.core.delete_namespace(ns)
    wait_for(
        lambda: ns not in {n.metadata.name for n in studies.core.list_namespace().items},
        180,
        f"namespace {ns} to be deleted",
    )
    studies.core.create_namespace({"metadata": {"name": ns}})
    try:
        # The same TuningStudy in the new namespace: a new, empty study, not the old one's.
        studies.create(study_body("kept", budget={"trials": 2}))
        studies.wait_phase("kept", "Succeeded")
        admin = create_engine(storage_url)
        with admin.connect() as conn:
            archived = conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname = :n"),
                {"n": f"{names.schema[:50]}_was_{old_uid.replace('-', '')[:8]}"},
            ).scalar()
            assert archived is not None, "the old schema, holding a study, is kept aside"
            owner = conn.execute(
                text("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = :n"),
                {"n": archived},
            ).scalar()
            old_trials = conn.execute(text(f'SELECT count(*) FROM "{archived}".trials')).scalar()
        admin.dispose()
        assert owner == make_url(storage_url).username  # out of the namespace role's reach
        assert old_trials == 2
        new_url = studies.storage_url()
        assert _trial_count(new_url, f"{ns}.kept") == 2  # its own two, not four
        assert _sql_error(new_url, f'SELECT 1 FROM "{archived}".studies') == INSUFFICIENT_PRIVILEGE
    finally:
        studies.core.delete_namespace(ns)
