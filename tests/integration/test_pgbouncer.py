"""PgBouncer (Debian's package, transaction pooling, the chart's auth_query) between the workers
and PostgreSQL: 100 worker processes on a PostgreSQL that could not take them directly, and a
TuningStudy through the operator with its workers going through PgBouncer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from sqlalchemy.engine import make_url
from tests.integration.studies import (
    TENANT_SECRET,
    OperatorProcess,
    Studies,
    secret_value,
    study_body,
    tenant_url,
)

from bench_pgbouncer import DIRECT_CONNECTIONS, run_workers
from bench_pgbouncer import tenant_url as new_tenant_url
from optuna_operator.storage.tenancy import POOLED_URL_KEY, pooled_url
from testbed import Bed
from testbed.pgbouncer import PgBouncer, pgbouncer_show, start_pgbouncer
from testbed.postgres import remove_postgres_data, start_postgres
from testbed.supervisor import Supervisor

# PostgreSQL keeps 3 of these for superusers (superuser_reserved_connections).
MAX_CONNECTIONS = 40
ROLE_SLOTS = MAX_CONNECTIONS - 3
# Per pool (one per namespace role) plus the reserve a pool gets when clients wait 2 s.
POOL_SIZE, RESERVE = 20, 10
# PgBouncer's cap over all its pools of the database, its login lookups' pool included (that
# pool grows with the logins that arrive together): what the role slots leave after the
# test's own direct connections and the peak sampler's.
POOLER_SLOTS = ROLE_SLOTS - DIRECT_CONNECTIONS - 1
PODS, PROCESSES_PER_POD = 10, 10
TRIALS = 200


def test_100_worker_processes_finish_a_study_on_a_postgresql_too_small_for_them(
    tmp_path: Path,
) -> None:
    sup = Supervisor(tmp_path / "processes.json")
    pg = start_postgres(sup, tmp_path, max_connections=MAX_CONNECTIONS, name="postgres-small")
    try:
        bouncer = start_pgbouncer(
            sup,
            tmp_path,
            pg,
            "optuna",
            pool_size=POOL_SIZE,
            reserve_pool_size=RESERVE,
            max_db_connections=POOLER_SLOTS,
        )
        url = pooled_url(new_tenant_url(pg.url, "many-workers"), bouncer.address)
        run = run_workers(
            url, pg.url, "many", TRIALS, bouncer, PODS, PROCESSES_PER_POD, logs=tmp_path
        )
    finally:
        sup.stop_all()
        remove_postgres_data(pg.root)
    assert run.trials == TRIALS
    # No worker failed: none waited on a connection it could not get (Optuna's own schema
    # check used to hold one server connection while waiting for a second).
    assert run.restarts == 0, run
    # Every worker process holds at least one connection while it runs: directly, PostgreSQL
    # would have had to take more clients than it has slots.
    assert run.peak_clients > MAX_CONNECTIONS, run
    assert run.peak_server <= POOLER_SLOTS, run
    log = (tmp_path / "postgres-small.log").read_text()
    assert "too many clients" not in log
    assert "remaining connection slots are reserved" not in log


# --------------------------------------------------------------------------- through the operator


@pytest.fixture(scope="module")
def pooled_operator(
    bed: Bed,
    crd_installed: None,
    session_operator_stopped: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PgBouncer]:
    """PgBouncer in front of the bed's PostgreSQL and an operator that sends workers to it."""
    bouncer = bed.start_pgbouncer(name="pgbouncer", pool_size=5)
    process = OperatorProcess(
        bed.kubeconfig,
        tmp_path_factory.mktemp("pooled-operator") / "operator.log",
        extra_args=["--worker-pooler", bouncer.address],
    )
    process.start()
    try:
        yield bouncer
    finally:
        process.stop()
        bed.stop_component("pgbouncer")


def test_a_study_whose_workers_go_through_pgbouncer_succeeds(
    kube_api: client.ApiClient, namespace: str, pooled_operator: PgBouncer
) -> None:
    studies = Studies(kube_api, namespace)
    studies.create(
        study_body(
            "pooled", budget={"trials": 12}, workers={"parallelism": 2, "processesPerPod": 2}
        )
    )
    status = studies.wait_phase("pooled", "Succeeded")
    assert status["trials"]["complete"] == 12

    # The namespace's Secret holds its own role's URL twice: direct (the operator's) and
    # through PgBouncer (the workers'), the same role and password.
    direct = make_url(tenant_url(kube_api, namespace))
    pooled = secret_value(kube_api, namespace, TENANT_SECRET, POOLED_URL_KEY)
    assert pooled is not None
    assert make_url(pooled) == direct.set(host="127.0.0.1", port=pooled_operator.port)
    job = studies.batch.list_namespaced_job(namespace).items[0]
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["OPTUNA_STORAGE_URL"].value_from.secret_key_ref.key == POOLED_URL_KEY

    # PgBouncer served that role's transactions: it logged in with auth_query, no password
    # of the role anywhere but the namespace's Secret.
    pools = pgbouncer_show(pooled_operator, "POOLS")
    assert direct.username in {p["user"] for p in pools}, pools
    totals = {
        str(s["database"]): int(str(s["total_xact_count"]))
        for s in pgbouncer_show(pooled_operator, "STATS")
    }
    assert totals[str(direct.database)] > 12 * 10, totals
