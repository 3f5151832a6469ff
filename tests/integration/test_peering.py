"""Two operator replicas with kopf peering: one acts, the other stands by and takes over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from tests.integration.studies import OperatorProcess, Studies, study_body, wait_for

from testbed import Bed

pytestmark = pytest.mark.usefixtures("session_operator_stopped")
PEERING = "optuna-operator-peering-test"


@pytest.fixture(scope="module")
def replicas(
    bed: Bed,
    kube_api: client.ApiClient,
    crd_installed: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[OperatorProcess]]:
    client.CustomObjectsApi(kube_api).create_cluster_custom_object(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}},
    )
    logs: Path = tmp_path_factory.mktemp("replicas")
    procs = [
        OperatorProcess(bed.kubeconfig, logs / f"replica-{i}.log", peering=PEERING)
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _peers(kube_api: client.ApiClient) -> dict[str, object]:
    obj = client.CustomObjectsApi(kube_api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", PEERING
    )
    peers: dict[str, object] = obj.get("status") or {}
    return peers


def test_only_one_replica_acts_and_the_other_takes_over(
    replicas: list[OperatorProcess], kube_api: client.ApiClient, namespace: str
) -> None:
    wait_for(lambda: len(_peers(kube_api)) >= 2, 60, "both replicas to announce themselves")
    studies = Studies(kube_api, namespace)
    studies.create(study_body("shared", budget={"trials": 8}))
    studies.wait_phase("shared", "Succeeded")
    events = studies.events("shared")
    assert len([e for e in events if e.startswith("CreatedJob")]) == 1, events
    assert len([e for e in events if e.startswith("StudyCreated")]) == 1, events

    # Kill whichever replica acted; the survivor runs the next study.
    acting = [r for r in replicas if "Created Job" in r.log()]
    assert len(acting) == 1, [r.log()[-2000:] for r in replicas]
    acting[0].stop(kill=True)
    studies.create(study_body("after-failover", budget={"trials": 5}))
    studies.wait_phase("after-failover", "Succeeded", timeout=300)
