"""Everything under tests/integration runs against the real test bed (tests/conftest.py)."""

from __future__ import annotations

import subprocess
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

from testbed import Bed

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


# --------------------------------------------------------------------------- the operator


@pytest.fixture(scope="session")
def crd_installed(bed: Bed, kube_api: client.ApiClient) -> None:
    """The generated CRD from crds/, applied with the pinned kubectl and Established."""
    subprocess.run(
        [
            str(bed.bin_dir / "kubectl"),
            "--kubeconfig",
            str(bed.kubeconfig),
            "apply",
            "-f",
            str(ROOT / "crds"),
        ],
        check=True,
        capture_output=True,
    )
    ext = client.ApiextensionsV1Api(kube_api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition("tuningstudies.tuning.optuna-operator.io")
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for(established, 30, "the TuningStudy CRD to be established")


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
