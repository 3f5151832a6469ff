"""Everything under tests/integration runs against the real test bed (tests/conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from tests.integration.studies import (
    DEFAULT_SECRET,
    OPERATOR_NAMESPACE,
    ROOT,
    OperatorProcess,
    Studies,
    wait_for,
)

from optuna_operator.api import GROUP, PLURAL, VERSION
from testbed import Bed, BedError
from testbed.kueue import Kueue, start_kueue

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


# --------------------------------------------------------------------------- the operator


@pytest.fixture(scope="session")
def crd_installed(bed: Bed, kube_api: client.ApiClient) -> None:
    """The generated CRD from crds/, applied with the pinned kubectl and Established; and the
    admission policies from deploy/, so every test runs with the guard a cluster would have.
    deploy/'s ClusterRoles are left out: the chart installs its own of the same name into this
    cluster in test_chart_install.py, and Helm does not adopt objects it did not create
    (test_trials_access.py binds the chart's roles itself)."""
    policies = [p for p in sorted((ROOT / "deploy").glob("*.yaml")) if "role" not in p.name]
    for path in (ROOT / "crds", *policies):
        subprocess.run(
            [
                str(bed.bin_dir / "kubectl"),
                "--kubeconfig",
                str(bed.kubeconfig),
                "apply",
                "-f",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
    ext = client.ApiextensionsV1Api(kube_api)

    names = ("tuningstudies.tuning.optuna-operator.io",)

    def established() -> bool:
        return all(
            any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(name).status.conditions or []
            )
            for name in names
        )

    wait_for(established, 30, "the TuningStudy CRD to be established")
    custom = client.CustomObjectsApi(kube_api)

    def served() -> bool:
        # Established is not yet served: kopf scans discovery once at start-up, and a CRD
        # still initializing answers 429.
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        except client.ApiException:
            return False
        groups = client.ApisApi(kube_api).get_api_versions().groups
        return GROUP in {g.name for g in groups}

    wait_for(served, 30, "the CRDs to be served and discoverable")


@pytest.fixture(scope="session")
def operator(
    bed: Bed,
    kube_api: client.ApiClient,
    crd_installed: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One operator process for the session, with a default storage Secret."""
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    core.create_namespaced_secret(
        OPERATOR_NAMESPACE,
        {"metadata": {"name": DEFAULT_SECRET}, "stringData": {"url": bed.storage_url}},
    )
    process = OperatorProcess(bed.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def studies(kube_api: client.ApiClient, namespace: str, operator: OperatorProcess) -> Studies:
    if not operator.alive():
        operator.start()
    return Studies(kube_api, namespace)


@pytest.fixture(scope="session")
def kueue(bed: Bed) -> Kueue:
    """Kueue running on the bed (built from the Go module proxy when missing: minutes), its
    CRDs and webhooks installed; stopped with the bed. Opt-in: from the first test that asks
    for it on, every Job created in the session passes Kueue's webhooks."""
    try:
        return start_kueue(bed)
    except BedError as err:
        pytest.fail(f"Kueue could not start on the test bed:\n{err}")


@pytest.fixture(scope="module")
def session_operator_stopped(operator: OperatorProcess) -> Iterator[None]:
    """For modules that run operators of their own: the session's one watches everything."""
    was_alive = operator.alive()
    operator.stop()
    yield
    if was_alive:
        operator.start()


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback TCP server that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)  # held open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()
