"""Fixtures shared by integration and end-to-end tests: one real test bed per session.

Nothing here is autouse: unit tests never start the bed. A test that asks for `bed` (or
anything built on it) gets the real thing or fails saying what is missing; it never skips.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client, config

from optuna_operator.apiserver import ApiServer, load_kubeconfig
from testbed import Bed, BedError

NamespaceFactory = Callable[..., str]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pod_security(level): label the `namespace` fixture's namespace "
        "pod-security.kubernetes.io/enforce=<level> (e.g. restricted)",
    )


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """The running bed: control plane, PostgreSQL and pod executor, one per session."""
    directory = tmp_path_factory.mktemp("testbed")
    try:
        started = Bed(directory).start()
    except BedError as err:
        pytest.fail(f"the test bed could not start, so integration tests cannot run:\n{err}")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def kube_api(bed: Bed) -> Iterator[client.ApiClient]:
    """A kubernetes.client.ApiClient authenticated as the bed's admin (system:masters)."""
    api = config.new_client_from_config(config_file=str(bed.kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def api_server(bed: Bed) -> Iterator[ApiServer]:
    """The operator's own connection (apiserver.py, what kube.Cluster sends through), from
    the bed's kubeconfig as the admin."""
    api = ApiServer(load_kubeconfig(bed.kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def storage_url(bed: Bed) -> str:
    """SQLAlchemy URL of the bed's PostgreSQL database `optuna` (role `optuna`)."""
    return bed.storage_url


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace_factory(
    kube_api: client.ApiClient, request: pytest.FixtureRequest
) -> Iterator[NamespaceFactory]:
    """make(pod_security=None) -> name: a fresh namespace, deleted after the test."""
    core = client.CoreV1Api(kube_api)
    created: list[str] = []

    def make(pod_security: str | None = None) -> str:
        name = _namespace_name(request.node.name)
        labels = {"app.kubernetes.io/managed-by": "pytest"}
        if pod_security is not None:
            labels["pod-security.kubernetes.io/enforce"] = pod_security
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        created.append(name)
        return name

    yield make
    for name in created:
        # Not waited for: the namespace controller and the executor clean up behind us.
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as err:
            if err.status != 404:
                raise


@pytest.fixture
def namespace(namespace_factory: NamespaceFactory, request: pytest.FixtureRequest) -> str:
    """A namespace for this test only; @pytest.mark.pod_security("restricted") labels it."""
    marker = request.node.get_closest_marker("pod_security")
    return namespace_factory(pod_security=marker.args[0] if marker else None)
