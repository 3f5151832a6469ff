"""Which dashboard serves a study and who owns it: pure, no cluster."""

from __future__ import annotations

from typing import Any

from optuna_operator.api import TuningStudy
from optuna_operator.children import manifests
from optuna_operator.children.dashboards import desired_dashboard
from optuna_operator.reconcile.decide import child_action as decide_dashboard
from optuna_operator.reconcile.decide import (
    namespace_owners,
    owned_dashboard,
    study_owner_reference,
)

CTX = manifests.ChildContext(
    storage_secret="optuna-storage",
    storage_key="url",
    worker_image="worker:test",
    dashboard_image="dashboard:test",
    dashboard_url="postgresql+psycopg2://optuna_ro_t_ml@db:5432/optuna",
    dashboard_password_key="readonly-password",
)


def study(name: str, uid: str, **spec: Any) -> TuningStudy:
    body: dict[str, Any] = {
        "directions": ["minimize"],
        "objective": {"function": "examples.quadratic:objective"},
        "budget": {"trials": 3},
        **spec,
    }
    return TuningStudy.model_validate(
        {"metadata": {"name": name, "namespace": "ml", "uid": uid}, "spec": body}
    )


def _owners(objects: list[dict[str, Any]]) -> list[str]:
    return [r["name"] for r in objects[0]["metadata"]["ownerReferences"]]


def serving(study: TuningStudy, current: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The dashboard that serves `study` after its reconcile, `current` being the
    namespace's dashboard as it is: what it is made of (children/), who owns it (decide)."""
    return owned_dashboard(study, desired_dashboard(study, CTX), current)


def test_studies_of_a_namespace_share_one_dashboard_that_goes_with_the_last() -> None:
    a, b = study("a", "uid-a"), study("b", "uid-b")
    first = serving(a, None)
    assert [o["kind"] for o in first] == ["Deployment", "Service", "NetworkPolicy"]
    assert {o["metadata"]["name"] for o in first} == {"optuna-dashboard"}
    both = serving(b, first[0])
    assert _owners(both) == ["a", "b"]
    # The same set of studies gives the same objects, whichever reconciles.
    assert serving(a, both[0]) == both
    assert decide_dashboard(both[0], serving(a, both[0])) == "none"

    # A study that turns its dashboard off leaves; the last one out removes it.
    a_off = study("a", "uid-a", dashboard={"enabled": False})
    only_b = serving(a_off, both[0])
    assert _owners(only_b) == ["b"]
    assert decide_dashboard(both[0], only_b) == "apply"
    b_off = study("b", "uid-b", dashboard={"enabled": False})
    assert serving(b_off, only_b[0]) == []
    assert decide_dashboard(only_b[0], []) == "delete"
    assert decide_dashboard(None, []) == "none"


def test_owner_references_of_deleted_studies_are_left_to_garbage_collection() -> None:
    current = {
        "metadata": {
            "ownerReferences": [
                study_owner_reference("uid-gone", "gone"),
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "cm"},
            ]
        }
    }
    refs = namespace_owners(current, study("a", "uid-a"), wants=True)
    assert [r["uid"] for r in refs] == ["uid-gone", "uid-a"]


def test_a_study_on_its_own_storage_has_a_dashboard_only_with_a_read_only_secret() -> None:
    own = {"storage": {"secretRef": {"name": "db"}}}
    assert desired_dashboard(study("a", "uid-a", **own), CTX) == []
    with_ro = study("a", "uid-a", **own, dashboard={"secretRef": {"name": "db-ro"}})
    objects = desired_dashboard(with_ro, CTX)
    assert [o["metadata"]["name"] for o in objects] == ["a-dashboard"] * 3
    env = objects[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["valueFrom"]["secretKeyRef"]["name"] for e in env] == ["db-ro"]


def test_the_cluster_client_knows_every_kind_a_dashboard_is_made_of() -> None:
    from optuna_operator.kube import Cluster
    from optuna_operator.reconcile.dashboard import KINDS

    for kind in KINDS:
        assert Cluster._path(kind, "ml", "optuna-dashboard").endswith("/optuna-dashboard")
