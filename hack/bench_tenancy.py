"""Tenancy costs on a fresh test bed: setting up a namespace's role, schema and Secret; a
status refresh over an unpooled per-namespace engine vs a pooled one (0.1.0's); the operator
connections left open after refreshing N namespaces.

    PYTHONPATH=hack:. .venv/bin/python hack/bench_tenancy.py [N=30]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from kubernetes import client, config
from sqlalchemy import create_engine, text

from optuna_operator.api import Direction
from optuna_operator.apiserver import ApiServer, load_kubeconfig
from optuna_operator.kube import Cluster
from optuna_operator.storage import storages
from optuna_operator.storage.study_store import Owner, StoreRegistry, StudyHandle
from optuna_operator.storage.tenancy import Tenancy
from testbed import Bed


def main(n: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bed = Bed(Path(tempfile.mkdtemp(prefix="bench-tenancy-"))).start()
    try:
        api = config.new_client_from_config(config_file=str(bed.kubeconfig))
        core = client.CoreV1Api(api)
        tenancy = Tenancy(Cluster(ApiServer(load_kubeconfig(bed.kubeconfig))))
        ensure_s: list[float] = []
        urls: list[tuple[str, str]] = []
        for i in range(n):
            ns = f"bench-{i}"
            core.create_namespace({"metadata": {"name": ns}})
            start = time.perf_counter()
            creds = tenancy.ensure(ns, bed.storage_url)
            ensure_s.append(time.perf_counter() - start)
            urls.append((ns, creds.url))
        print(
            f"namespace set-up (Secret, 2 roles, schema, grants): median "
            f"{statistics.median(ensure_s) * 1000:.0f} ms, max {max(ensure_s) * 1000:.0f} ms, "
            f"{n} namespaces"
        )
        for pool, label in ((None, "unpooled (NullPool, now)"), (4, "pooled (pool_size 4, 0.1.0)")):
            storages.OPERATOR_POOL_SIZE = pool
            stores = StoreRegistry()
            handles: list[tuple[str, StudyHandle]] = []
            for ns, url in urls:
                owner = Owner(ns, f"s-{pool}", "uid")
                name = f"{ns}.s-{pool}"
                handle = stores.ensure_study(
                    url, name, [Direction.MINIMIZE], None, None, {}, owner=owner
                )
                handles.append((url, handle))
            refresh: list[float] = []
            for _ in range(3):
                for url, handle in handles:
                    start = time.perf_counter()
                    stores.summarize(url, handle)
                    refresh.append(time.perf_counter() - start)
            admin = create_engine(bed.storage_url)
            with admin.connect() as conn:
                open_connections = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = 'optuna-operator'"
                    )
                ).scalar()
            admin.dispose()
            p90 = sorted(refresh)[int(len(refresh) * 0.9)]
            print(
                f"{label}: refresh median {statistics.median(refresh) * 1000:.1f} ms, p90 "
                f"{p90 * 1000:.1f} ms; operator connections open afterwards: {open_connections}"
            )
            stores.close()
        tenancy.close()
    finally:
        bed.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
