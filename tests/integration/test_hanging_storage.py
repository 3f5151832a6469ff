"""A tenant whose storage hangs costs that tenant only: eight studies whose database accepts
connections and never answers (a black hole on loopback) beside a healthy study in another
namespace, which finishes about as fast as alone. The operator's reconcile threads are
shared: one namespace holds at most half of them, and every database call has a timeout."""

from __future__ import annotations

import time

from kubernetes import client
from tests.conftest import NamespaceFactory
from tests.integration.studies import OperatorProcess, Studies, study_body, wait_for

HANGING = 8


def _time_to_succeed(studies: Studies, name: str) -> float:
    started = time.monotonic()
    studies.create(study_body(name, budget={"trials": 4}))
    studies.wait_phase(name, "Succeeded", timeout=300)
    return time.monotonic() - started


def test_hanging_storages_of_one_tenant_do_not_slow_another(
    kube_api: client.ApiClient,
    namespace_factory: NamespaceFactory,
    operator: OperatorProcess,
    silent_listener: int,
) -> None:
    if not operator.alive():
        operator.start()
    healthy = Studies(kube_api, namespace_factory())
    alone = _time_to_succeed(healthy, "alone")

    stuck = Studies(kube_api, namespace_factory())
    url = f"postgresql+psycopg2://nobody:secret@127.0.0.1:{silent_listener}/optuna"
    stuck.core.create_namespaced_secret(
        stuck.namespace, {"metadata": {"name": "hangs"}, "stringData": {"url": url}}
    )
    for i in range(HANGING):
        stuck.create(
            study_body(f"stuck-{i}", budget={"trials": 4}, storage={"secretRef": {"name": "hangs"}})
        )
    beside = _time_to_succeed(healthy, "beside")
    print(f"healthy study alone {alone:.1f} s, beside {HANGING} hanging storages {beside:.1f} s")
    assert beside <= 1.5 * alone, (alone, beside)

    # The stuck studies say why they wait (each attempt ends at the 10 s connect timeout).
    def unreachable() -> bool:
        reasons = [
            (stuck.condition(f"stuck-{i}", "StorageReady") or {}).get("reason")
            for i in range(HANGING)
        ]
        return reasons.count("StorageUnreachable") == HANGING

    wait_for(unreachable, 120, "every stuck study to report StorageUnreachable")
