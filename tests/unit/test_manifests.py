"""Pure manifest builders: golden output, restricted security, no credentials in objects."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from optuna_operator import api
from optuna_operator.api import TuningStudy, WorkerConfig
from optuna_operator.children import dashboards, manifests
from optuna_operator.contract import ExitCode
from optuna_operator.reconcile.decide import study_owner_reference, with_owners

GOLDEN = Path(__file__).parent / "golden"
CTX = manifests.ChildContext(
    storage_secret="optuna-db",
    storage_key="url",
    worker_image="worker:test",
    dashboard_image="dashboard:test",
    deadline=datetime(2030, 1, 1, tzinfo=UTC),
)
# The namespace's read-only role, as a default-storage study resolves it.
TENANT_CTX = manifests.ChildContext(
    storage_secret="optuna-storage",
    storage_key="url",
    worker_image="worker:test",
    dashboard_image="dashboard:test",
    dashboard_url="postgresql+psycopg2://optuna_ro_t_ml@db:5432/optuna",
    dashboard_password_key="readonly-password",
)
OWNERS = [study_owner_reference("uid-2", "b"), study_owner_reference("uid-1", "a")]


# An overlay sidecar that asks for uid 1000 gets it, under the restricted floor.
SIDECAR_AS_1000_WITH_FLOOR = {
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def study(**spec: Any) -> TuningStudy:
    base: dict[str, Any] = {
        "directions": ["maximize"],
        "objective": {"function": "examples.xgb_regression:objective"},
        "budget": {"trials": 10, "timeoutSeconds": 600},
        "workers": {"parallelism": 3, "resources": {"limits": {"nvidia.com/gpu": 1}}},
    }
    base.update(spec)
    return TuningStudy.model_validate(
        {
            "metadata": {"name": "xgb", "namespace": "ml", "uid": "uid-1", "generation": 2},
            "spec": base,
        }
    )


def check_golden(name: str, obj: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.yaml"
    rendered = yaml.safe_dump(obj, sort_keys=True)
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"missing golden file {path}: run with UPDATE_GOLDEN=1"
    assert rendered == path.read_text(), f"{name} differs from {path}"


def test_worker_job_golden() -> None:
    check_golden("worker-job", manifests.worker_job(study(), CTX))


def test_objective_source_reaches_the_worker_as_env_from_the_configmap() -> None:
    # The golden above has no source, so a study without one keeps its exact env.
    sourced = study(
        objective={
            "function": "train:objective",
            "source": {"configMapKeyRef": {"name": "xgb-objective", "key": "train.py"}},
        }
    )
    container = _pods(manifests.worker_job(sourced, CTX))["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["OPTUNA_OPERATOR_OBJECTIVE_SOURCE"]["valueFrom"] == {
        "configMapKeyRef": {"name": "xgb-objective", "key": "train.py"}
    }
    # Delivered without a volume: the pod keeps the operator's two.
    assert [m["name"] for m in container["volumeMounts"]] == list(api.WORKER_VOLUME_NAMES)
    plain = _pods(manifests.worker_job(study(), CTX))["containers"][0]
    assert "OPTUNA_OPERATOR_OBJECTIVE_SOURCE" not in {e["name"] for e in plain["env"]}


def _own_storage_study(**dashboard: Any) -> TuningStudy:
    return study(
        storage={"secretRef": {"name": "optuna-db"}},
        dashboard={"secretRef": {"name": "optuna-db-readonly", "key": "url"}, **dashboard},
    )


def test_dashboard_golden() -> None:
    deployment, service, policy = with_owners(
        manifests.namespace_dashboard("ml", TENANT_CTX), OWNERS
    )
    check_golden("dashboard-deployment", deployment)
    check_golden("dashboard-service", service)
    check_golden("dashboard-networkpolicy", policy)


def test_a_namespace_dashboard_is_owned_by_every_study_it_serves_and_controlled_by_none() -> None:
    for obj in with_owners(manifests.namespace_dashboard("ml", TENANT_CTX), OWNERS):
        refs = obj["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs] == ["uid-1", "uid-2"]  # sorted: stable manifests
        assert not any(r.get("controller") for r in refs)
        assert obj["metadata"]["name"] == "optuna-dashboard"
        assert obj["metadata"]["labels"][manifests.NAMESPACE_DASHBOARD_LABEL] == "true"


def test_dashboards_admit_nobody_unless_the_chart_names_peers() -> None:
    *_, closed = with_owners(manifests.namespace_dashboard("ml", TENANT_CTX), OWNERS)
    assert closed["spec"]["policyTypes"] == ["Ingress"]
    assert closed["spec"]["ingress"] == []
    assert closed["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "dashboard"
    )
    peers = [{"namespaceSelector": {"matchLabels": {"team": "platform"}}}]
    ctx = manifests.ChildContext(**{**TENANT_CTX.__dict__, "dashboard_allowed_from": peers})
    *_, opened = with_owners(manifests.namespace_dashboard("ml", ctx), OWNERS)
    assert opened["spec"]["ingress"] == [
        {"from": peers, "ports": [{"protocol": "TCP", "port": manifests.DASHBOARD_PORT}]}
    ]
    *_, own = manifests.study_dashboard(_own_storage_study(), ctx)
    assert own["spec"]["ingress"] == opened["spec"]["ingress"]


def test_a_study_on_its_own_storage_gets_a_dashboard_only_on_its_read_only_secret() -> None:
    deployment, service, policy = manifests.study_dashboard(_own_storage_study(), CTX)
    container = _pods(deployment)["containers"][0]
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"]]
    assert refs == [{"name": "optuna-db-readonly", "key": "url"}]
    # Never the read-write URL of spec.storage (Secret optuna-db).
    assert "optuna-db" not in json.dumps(deployment).replace("optuna-db-readonly", "")
    assert container["args"][-1] == f"$({manifests.DASHBOARD_URL_ENV})"
    assert deployment["metadata"]["name"] == "xgb-dashboard"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]


def _pods(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize(
    "obj",
    [
        manifests.worker_job(study(), CTX),
        with_owners(manifests.namespace_dashboard("ml", TENANT_CTX), OWNERS)[0],
        manifests.study_dashboard(_own_storage_study(), CTX)[0],
    ],
    ids=["worker", "namespace-dashboard", "study-dashboard"],
)
def test_pods_meet_restricted_pod_security(obj: dict[str, Any]) -> None:
    pod = _pods(obj)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}


def test_storage_url_reaches_pods_only_through_secret_ref() -> None:
    job = manifests.worker_job(study(), CTX)
    env = {e["name"]: e for e in _pods(job)["containers"][0]["env"]}
    assert env["OPTUNA_STORAGE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "optuna-db",
        "key": "url",
    }
    assert "postgresql" not in json.dumps(job)


def test_worker_config_round_trips_and_carries_the_deadline() -> None:
    job = manifests.worker_job(study(), CTX)
    env = {e["name"]: e for e in _pods(job)["containers"][0]["env"]}
    config = WorkerConfig.model_validate_json(env["OPTUNA_OPERATOR_WORKER_CONFIG"]["value"])
    assert config.study_name == "ml.xgb"
    assert config.deadline == CTX.deadline
    assert config.budget.trials == 10


def test_parallelism_and_suspend_do_not_change_the_job_name() -> None:
    a = manifests.worker_job(study(), CTX)
    b = manifests.worker_job(
        study(
            suspend=True, workers={"parallelism": 7, "resources": {"limits": {"nvidia.com/gpu": 1}}}
        ),
        CTX,
    )
    assert a["metadata"]["name"] == b["metadata"]["name"]
    assert (b["spec"]["parallelism"], b["spec"]["suspend"]) == (7, True)


def test_changing_the_objective_names_a_new_job() -> None:
    a = manifests.worker_job(study(), CTX)
    b = manifests.worker_job(study(objective={"function": "other:objective"}), CTX)
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert len(b["metadata"]["name"]) <= 63


def test_config_errors_fail_the_job_and_disruptions_do_not() -> None:
    rules = manifests.worker_job(study(), CTX)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert set(rules[0]["onExitCodes"]["values"]) == {3, 4}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def test_interrupted_and_timed_out_workers_are_replaced_without_counting() -> None:
    rules = manifests.worker_job(study(), CTX)["spec"]["podFailurePolicy"]["rules"]
    ignored = [r["onExitCodes"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
    assert ignored == [
        {
            "containerName": "worker",
            "operator": "In",
            "values": [int(ExitCode.INTERRUPTED), int(ExitCode.TRIAL_TIMEOUT)],
        }
    ]


def test_gpu_limits_reach_the_worker_container() -> None:
    container = _pods(manifests.worker_job(study(), CTX))["containers"][0]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_children_are_owned_and_labelled() -> None:
    for obj in (
        manifests.worker_job(study(), CTX),
        *manifests.study_dashboard(_own_storage_study(), CTX),
    ):
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("TuningStudy", "uid-1", True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "optuna-operator"


def test_workers_write_only_to_their_emptydirs() -> None:
    pod = _pods(manifests.worker_job(study(), CTX))
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    # HOME inside the /tmp volume: writable in a pod, and a path the test bed can create.
    assert env["HOME"].startswith("/tmp/") and env["TMPDIR"] == "/tmp"
    assert set(env) - {"HOME", "TMPDIR"} == set(api.WORKER_ENV_NAMES) - {
        "OPTUNA_OPERATOR_WORKER_INDEX",
        "OPTUNA_OPERATOR_OBJECTIVE_SOURCE",
    }
    assert set(volumes) == set(api.WORKER_VOLUME_NAMES)


def test_shm_size_run_as_user_and_user_volumes_reach_the_pod() -> None:
    pod = _pods(
        manifests.worker_job(
            study(
                workers={
                    "shmSize": "2Gi",
                    "runAsUser": 1000,
                    "runAsGroup": 100,
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "env": [{"name": "HOME", "value": "/data"}],
                }
            ),
            CTX,
        )
    )
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["runAsGroup"] == pod["securityContext"]["fsGroup"] == 100
    assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["optuna-shm"]["emptyDir"]["sizeLimit"] == "2Gi"
    assert "data" in volumes
    container = pod["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    # The study's HOME comes after the operator's, so kubelet lets it win.
    homes = [e["value"] for e in container["env"] if e["name"] == "HOME"]
    assert homes[-1] == "/data"


def test_reserved_env_names_are_the_contracts() -> None:
    # api/ cannot import contract (contract imports api and Optuna); the CRD's rule that
    # keeps studies from overriding these names must still list exactly the contract's.
    from optuna_operator import contract

    assert set(api.WORKER_ENV_NAMES) == {
        contract.CONFIG_ENV,
        contract.STORAGE_ENV,
        contract.INDEX_ENV,
        contract.POD_NAME_ENV,
        contract.POD_NAMESPACE_ENV,
        contract.OBJECTIVE_SOURCE_ENV,
    }


def test_tenant_dashboard_reads_as_the_read_only_role_with_no_password_in_its_args() -> None:
    deployment = with_owners(manifests.namespace_dashboard("ml", TENANT_CTX), OWNERS)[0]
    container = _pods(deployment)["containers"][0]
    assert container["args"][-1] == "postgresql+psycopg2://optuna_ro_t_ml@db:5432/optuna"
    assert container["env"] == [
        {
            "name": "PGPASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "optuna-storage", "key": "readonly-password"}},
        }
    ]


POD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "a"}, "annotations": {"example.com/owner": "ml"}},
    "spec": {
        "initContainers": [
            {
                "name": "proxy",
                "image": "proxy:1",
                "restartPolicy": "Always",
                "args": ["--port", "5000"],
                "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}],
                "securityContext": {"runAsUser": 1000, "privileged": False},
                "startupProbe": {"tcpSocket": {"port": 5000}},
            }
        ],
        "containers": [
            {
                "name": "worker",
                "env": [{"name": "PROXY", "value": "localhost:5000"}],
                "resources": {"requests": {"ephemeral-storage": "10Gi"}},
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
            }
        ],
        "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "5Gi"}}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ],
        "schedulingGates": [{"name": "example.com/gate"}],
        "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
        "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["registry.local"]}],
        "runtimeClassName": "gvisor",
        "readinessGates": [{"conditionType": "example.com/ready"}],
    },
}


def test_pod_template_reaches_the_worker_pod_and_the_operator_keeps_its_fields() -> None:
    plain = manifests.worker_job(study(), CTX)
    gpu = {"limits": {"nvidia.com/gpu": 1}}
    job = manifests.worker_job(
        study(workers={"parallelism": 3, "resources": gpu, "podTemplate": POD_TEMPLATE}), CTX
    )
    pod, before = _pods(job), _pods(plain)
    assert job["metadata"]["name"] != plain["metadata"]["name"]  # a new template, a new Job
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"] == {"tcpSocket": {"port": 5000}}
    assert sidecar["securityContext"] == SIDECAR_AS_1000_WITH_FLOOR
    worker = pod["containers"][0]
    for owned in ("image", "command", "securityContext", "volumeMounts"):
        assert worker[owned] == before["containers"][0][owned], owned
    assert worker["env"][: len(before["containers"][0]["env"])] == before["containers"][0]["env"]
    assert worker["env"][-1] == {"name": "PROXY", "value": "localhost:5000"}
    assert worker["resources"]["requests"] == {"ephemeral-storage": "10Gi"}
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert worker["lifecycle"]["preStop"]
    for field in ("restartPolicy", "securityContext", "automountServiceAccountToken"):
        assert pod[field] == before[field], field
    for field in ("topologySpreadConstraints", "schedulingGates", "dnsConfig", "hostAliases"):
        assert pod[field] == POD_TEMPLATE["spec"][field], field
    assert pod["runtimeClassName"] == "gvisor"
    assert [v["name"] for v in pod["volumes"]] == [*api.WORKER_VOLUME_NAMES, "cache"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "a" and labels["app.kubernetes.io/component"] == "worker"
    assert job["spec"]["template"]["metadata"]["annotations"] == {"example.com/owner": "ml"}


def test_a_pod_template_pod_meets_restricted_pod_security() -> None:
    job = manifests.worker_job(study(workers={"podTemplate": POD_TEMPLATE}), CTX)
    pod = _pods(job)
    for container in pod["initContainers"] + pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in sc


def test_without_a_pod_template_the_job_is_unchanged() -> None:
    # The golden file is the template of every running study: an upgrade that changed it
    # would replace their Jobs.
    assert manifests.worker_job(study(workers={"parallelism": 3}), CTX) == manifests.worker_job(
        study(workers={"parallelism": 3, "podTemplate": None}), CTX
    )


# dashboard.podTemplate: a study's own dashboard takes the study's, a namespace's shared
# dashboard the chart's (ChildContext.dashboard_pod_template); the same merge as workers'.
DASHBOARD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "a", "app.kubernetes.io/name": "mine"}},
    "spec": {
        "initContainers": [
            {
                "name": "auth-proxy",
                "image": "proxy:1",
                "restartPolicy": "Always",
                "securityContext": {"privileged": True, "runAsUser": 1000},
                "volumeMounts": [{"name": "certs", "mountPath": "/certs"}],
            }
        ],
        "containers": [
            {
                "name": "dashboard",
                # The operator's: dropped whatever they say (the API refuses them at apply).
                "command": ["sh"],
                "args": ["-c", "id"],
                "image": "evil:1",
                "ports": [{"containerPort": 9999}],
                "readinessProbe": {"exec": {"command": ["true"]}},
                "securityContext": {"privileged": True},
                "env": [
                    {"name": "OPTUNA_DASHBOARD_URL", "value": "postgresql://rw@db/optuna"},
                    {"name": "PGPASSWORD", "value": "guess"},
                    {"name": "TZ", "value": "UTC"},
                ],
                # Its own to patch.
                "resources": {"limits": {"memory": "512Mi"}},
                "livenessProbe": {"httpGet": {"path": "/api/meta", "port": "http"}},
            }
        ],
        "volumes": [{"name": "certs", "secret": {"secretName": "proxy-certs"}}],
        "tolerations": [{"key": "infra", "operator": "Exists"}],
        "hostNetwork": True,
        "serviceAccountName": "admin",
    },
}


def _dashboard_pod_is_overlaid(deployment: dict[str, Any], plain: dict[str, Any]) -> None:
    """The overlay's additions are there and every field of the operator's is as without."""
    pod, before = _pods(deployment), _pods(plain)
    (sidecar,) = pod["initContainers"]
    assert sidecar["securityContext"] == SIDECAR_AS_1000_WITH_FLOOR
    assert pod["volumes"] == DASHBOARD_TEMPLATE["spec"]["volumes"]
    assert pod["tolerations"] == DASHBOARD_TEMPLATE["spec"]["tolerations"]
    (dashboard,) = pod["containers"]
    (original,) = before["containers"]
    for owned in ("image", "command", "args", "ports", "readinessProbe", "securityContext"):
        assert dashboard[owned] == original[owned], owned
    assert dashboard["env"] == [*original["env"], {"name": "TZ", "value": "UTC"}]
    assert dashboard["resources"]["limits"]["memory"] == "512Mi"
    assert dashboard["livenessProbe"] == {"httpGet": {"path": "/api/meta", "port": "http"}}
    for field in ("securityContext", "automountServiceAccountToken"):
        assert pod[field] == before[field], field
    assert "hostNetwork" not in pod and "serviceAccountName" not in pod
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels["team"] == "a"
    assert template_labels["app.kubernetes.io/name"] == "optuna-dashboard"
    # The Service and the NetworkPolicy still select the pod.
    assert deployment["spec"]["selector"] == plain["spec"]["selector"]


def test_dashboard_pod_template_reaches_a_studys_own_dashboard() -> None:
    plain = manifests.study_dashboard(_own_storage_study(), CTX)
    overlaid = manifests.study_dashboard(_own_storage_study(podTemplate=DASHBOARD_TEMPLATE), CTX)
    _dashboard_pod_is_overlaid(overlaid[0], plain[0])
    assert overlaid[1:] == plain[1:]  # Service and NetworkPolicy


def test_the_charts_pod_template_reaches_the_namespace_dashboard() -> None:
    ctx = manifests.ChildContext(
        **{**TENANT_CTX.__dict__, "dashboard_pod_template": DASHBOARD_TEMPLATE}
    )
    plain = with_owners(manifests.namespace_dashboard("ml", TENANT_CTX), OWNERS)
    overlaid = with_owners(manifests.namespace_dashboard("ml", ctx), OWNERS)
    _dashboard_pod_is_overlaid(overlaid[0], plain[0])
    labels = overlaid[0]["spec"]["template"]["metadata"]["labels"]
    assert labels[manifests.NAMESPACE_DASHBOARD_LABEL] == "true"
    # A study's own podTemplate never shapes the shared dashboard (the API refuses it there).
    shaping = study(dashboard={"podTemplate": DASHBOARD_TEMPLATE})
    desired = dashboards.desired_dashboard(shaping, TENANT_CTX)
    assert _pods(desired[0]) == _pods(manifests.namespace_dashboard("ml", TENANT_CTX)[0])
