"""Who may create and read a TuningStudy, decided by the real API server: the chart's roles
aggregated into the built-in admin/edit/view ClusterRoles, and the ValidatingAdmissionPolicy
from deploy/ asking the real RBAC authorizer about the study's author.

Users are impersonated by the bed's admin (Impersonate-User): the API server authenticates
the admin, then authorizes and admits every request as the named user, as it would for that
user's own credentials. Nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config
from tests.integration.studies import ROOT, study_body, wait_for

from optuna_operator.admission import POLICY_FILE, POLICY_NAME
from optuna_operator.api import GROUP, PLURAL, VERSION
from testbed import Bed

CHART = ROOT / "charts" / "optuna-operator"
POLICY = ROOT / "deploy" / POLICY_FILE
REFUSED = "TuningStudy refused"
ROLES_RELEASE = "guard-test"
DB_DENIED = "may not get every secret this study hands its workers (db)"

UserApi = Callable[[str], client.CustomObjectsApi]


def _kubectl_apply(bed: Bed, text: str) -> None:
    subprocess.run(
        [str(bed.bin_dir / "kubectl"), "--kubeconfig", str(bed.kubeconfig), "apply", "-f", "-"],
        input=text,
        text=True,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def users(bed: Bed, kube_api: client.ApiClient, crd_installed: None) -> Iterator[UserApi]:
    """as_user(name) -> CustomObjectsApi acting as that user; the chart's aggregated roles and
    the admission policy installed and in force."""
    roles = subprocess.run(
        [
            str(bed.bin_dir / "helm"),
            "template",
            # Not the chart tests' release name: Helm refuses to adopt objects it did not make.
            ROLES_RELEASE,
            str(CHART),
            "--show-only",
            "templates/user-roles.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    _kubectl_apply(bed, roles)
    _kubectl_apply(bed, POLICY.read_text())
    rbac = client.RbacAuthorizationV1Api(kube_api)

    def aggregated() -> bool:
        return all(
            any(
                GROUP in (rule.api_groups or []) and PLURAL in (rule.resources or [])
                for rule in rbac.read_cluster_role(role).rules or []
            )
            for role in ("admin", "edit", "view")
        )

    wait_for(aggregated, 30, "the chart's roles to be aggregated into admin, edit and view")
    admission = client.AdmissionregistrationV1Api(kube_api)

    def type_checked() -> client.V1ValidatingAdmissionPolicyStatus | None:
        status = admission.read_validating_admission_policy(POLICY_NAME).status
        return status if status and status.observed_generation else None

    # The API server type-checks every expression against the CRD's schema.
    checked = wait_for(type_checked, 30, "the admission policy to be type-checked")
    assert not (checked.type_checking and checked.type_checking.expression_warnings), checked
    clients: list[client.ApiClient] = []

    def as_user(user: str) -> client.CustomObjectsApi:
        api = config.new_client_from_config(config_file=str(bed.kubeconfig))
        api.set_default_header("Impersonate-User", user)
        clients.append(api)
        return client.CustomObjectsApi(api)

    yield as_user
    for api in clients:
        api.close()
    for role in (f"{ROLES_RELEASE}-optuna-operator-edit", f"{ROLES_RELEASE}-optuna-operator-view"):
        rbac.delete_cluster_role(role)


def _bind(kube_api: client.ApiClient, namespace: str, user: str, role: str, kind: str) -> None:
    client.RbacAuthorizationV1Api(kube_api).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": f"{user}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )


def _role(
    kube_api: client.ApiClient, namespace: str, name: str, rules: list[dict[str, Any]]
) -> None:
    client.RbacAuthorizationV1Api(kube_api).create_namespaced_role(
        namespace, {"metadata": {"name": name}, "rules": rules}
    )


STUDIES_RULE = {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "patch"]}
PODS_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}


def _create(
    api: client.CustomObjectsApi, namespace: str, body: dict[str, Any], dry_run: bool = True
) -> dict[str, Any]:
    result: dict[str, Any] = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All" if dry_run else None
    )
    return result


def _refused(api: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> tuple[int, str]:
    with pytest.raises(client.ApiException) as info:
        _create(api, namespace, body)
    return info.value.status, json.loads(info.value.body)["message"]


SOURCED = {
    "function": "train:objective",
    "source": {"configMapKeyRef": {"name": "code", "key": "train.py"}},
}


def _study(name: str = "s", **workers: Any) -> dict[str, Any]:
    # Suspended: nothing runs even if an operator of this session is watching.
    return study_body(name, suspend=True, workers={"parallelism": 1, **workers})


SIDECAR = {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}
OVERLAY_DENIED = (
    "may not get every secret the containers of spec.workers.podTemplate and "
    "spec.dashboard.podTemplate read (db)"
)


def _overlay(**spec: Any) -> dict[str, Any]:
    """A study whose workers.podTemplate.spec is `spec`."""
    return _study(podTemplate={"spec": spec})


def _policy_in_force(as_user: UserApi, kube_api: client.ApiClient, namespace: str) -> None:
    """The policy is picked up asynchronously; probe until it refuses a pod-less author."""
    _role(kube_api, namespace, "probe", [STUDIES_RULE])
    _bind(kube_api, namespace, "probe", "probe", "Role")
    probe = as_user("probe")

    def refuses() -> bool:
        try:
            _create(probe, namespace, _study("probe"))
        except client.ApiException as err:
            return REFUSED in (err.body or "")
        return False

    wait_for(refuses, 30, "the admission policy to refuse a study whose author cannot make pods")


def test_edit_user_creates_and_view_user_reads_studies(
    users: UserApi, kube_api: client.ApiClient, namespace: str
) -> None:
    _bind(kube_api, namespace, "alice", "edit", "ClusterRole")
    _bind(kube_api, namespace, "carol", "view", "ClusterRole")
    _policy_in_force(users, kube_api, namespace)
    alice, carol = users("alice"), users("carol")

    created = _create(alice, namespace, _study("by-alice"), dry_run=False)
    assert created["metadata"]["name"] == "by-alice"
    # edit grants impersonate on ServiceAccounts and get on Secrets, so these pass too.
    _create(alice, namespace, _study(serviceAccountName="trainer"))
    _create(
        alice,
        namespace,
        _study(env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}]),
    )
    # edit grants get on ConfigMaps: an objective shipped in one passes.
    _create(alice, namespace, study_body("s", suspend=True, objective=SOURCED))
    # An overlay with labels only (no spec) and one with a sidecar reading a Secret pass.
    _create(alice, namespace, _study(podTemplate={"metadata": {"labels": {"team": "a"}}}))
    _create(
        alice,
        namespace,
        _overlay(initContainers=[{**SIDECAR, "envFrom": [{"secretRef": {"name": "t"}}]}]),
    )
    alice.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "by-alice", {"spec": {"workers": {"parallelism": 2}}}
    )

    listed = carol.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert [s["metadata"]["name"] for s in listed["items"]] == ["by-alice"]
    assert carol.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "by-alice")
    carol.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "by-alice")
    with pytest.raises(client.ApiException) as info:
        _create(carol, namespace, _study("by-carol"))
    assert info.value.status == 403
    with pytest.raises(client.ApiException) as info:
        carol.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "by-alice")
    assert info.value.status == 403
    alice.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "by-alice")


def test_author_who_may_not_create_pods_is_refused_naming_the_permission(
    users: UserApi, kube_api: client.ApiClient, namespace: str
) -> None:
    _role(kube_api, namespace, "studies-only", [STUDIES_RULE])
    _bind(kube_api, namespace, "bob", "studies-only", "Role")
    _policy_in_force(users, kube_api, namespace)

    status, message = _refused(users("bob"), namespace, _study())
    assert status == 403
    assert f"bob may not create pods in namespace {namespace}" in message, message
    assert "create verb on pods" in message


def test_service_accounts_and_secrets_the_author_may_not_use_stay_out_of_reach(
    users: UserApi, kube_api: client.ApiClient, namespace: str
) -> None:
    secrets_rule = {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["mine"],
        "verbs": ["get"],
    }
    _role(kube_api, namespace, "pods-not-accounts", [STUDIES_RULE, PODS_RULE, secrets_rule])
    _bind(kube_api, namespace, "dave", "pods-not-accounts", "Role")
    _policy_in_force(users, kube_api, namespace)
    dave = users("dave")

    _create(dave, namespace, _study())
    mine = {"name": "T", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "k"}}}
    _create(dave, namespace, _study(env=[mine]))
    # The overlay's Secrets the author may read pass, in any container.
    _create(dave, namespace, _overlay(initContainers=[{**SIDECAR, "env": [mine]}]))

    def ref(kind: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": "db", "key": "url"}} if kind == "env" else {}

    cases: list[tuple[dict[str, Any], str]] = [
        (_study(serviceAccountName="deployer"), "may not impersonate serviceaccount deployer"),
        (_study(env=[{"name": "T", "valueFrom": ref("env")}]), DB_DENIED),
        (_study(envFrom=[{"secretRef": {"name": "db"}}]), DB_DENIED),
        (
            _study(
                volumes=[{"name": "creds", "secret": {"secretName": "db"}}],
                volumeMounts=[{"name": "creds", "mountPath": "/creds"}],
            ),
            DB_DENIED,
        ),
        (
            _study(
                volumes=[{"name": "p", "projected": {"sources": [{"secret": {"name": "db"}}]}}],
                volumeMounts=[{"name": "p", "mountPath": "/p"}],
            ),
            "may not get every secret projected into volume(s) p",
        ),
        (
            study_body("s", suspend=True, storage={"secretRef": {"name": "db", "key": "url"}}),
            DB_DENIED,
        ),
        (_study(priorityClassName="high"), "may not use priorityclass high"),
        # spec.workers.podTemplate: a sidecar's env and envFrom, the worker's patch, volumes.
        (
            _overlay(initContainers=[{**SIDECAR, "env": [{"name": "T", "valueFrom": ref("env")}]}]),
            OVERLAY_DENIED,
        ),
        (
            _overlay(initContainers=[{**SIDECAR, "envFrom": [{"secretRef": {"name": "db"}}]}]),
            OVERLAY_DENIED,
        ),
        (
            _overlay(containers=[{"name": "worker", "envFrom": [{"secretRef": {"name": "db"}}]}]),
            OVERLAY_DENIED,
        ),
        (_overlay(volumes=[{"name": "creds", "secret": {"secretName": "db"}}]), DB_DENIED),
        (
            _overlay(
                volumes=[{"name": "p", "projected": {"sources": [{"secret": {"name": "db"}}]}}]
            ),
            "may not get every secret projected into volume(s) p",
        ),
        (
            study_body("s", suspend=True, export={"configMapName": "app-config"}),
            "may not update configmap app-config",
        ),
    ]
    for body, expected in cases:
        status, message = _refused(dave, namespace, body)
        assert status == 403, message
        assert f"dave {expected}" in message, message

    # Changing an admitted study to reach further is refused the same way.
    _create(dave, namespace, _study("kept"), dry_run=False)
    with pytest.raises(client.ApiException) as info:
        dave.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "kept",
            {"spec": {"workers": {"serviceAccountName": "deployer"}}},
        )
    assert "may not impersonate serviceaccount deployer" in info.value.body


def test_an_objective_source_needs_get_on_its_configmap(
    users: UserApi, kube_api: client.ApiClient, namespace: str
) -> None:
    other = {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["other"]}
    _role(kube_api, namespace, "no-code", [STUDIES_RULE, PODS_RULE, {**other, "verbs": ["get"]}])
    _bind(kube_api, namespace, "frank", "no-code", "Role")
    _policy_in_force(users, kube_api, namespace)
    frank = users("frank")

    status, message = _refused(frank, namespace, study_body("s", suspend=True, objective=SOURCED))
    assert status == 403, message
    assert f"frank may not get configmap code in namespace {namespace}" in message, message
    assert "spec.objective.source" in message

    # get on that one ConfigMap is enough.
    code = {**other, "resourceNames": ["code"], "verbs": ["get"]}
    _role(kube_api, namespace, "code", [code])
    _bind(kube_api, namespace, "frank", "code", "Role")
    sourced = study_body("s", suspend=True, objective=SOURCED)
    wait_for(lambda: _admitted(frank, namespace, sourced), 30, "get on configmap code to count")


def _admitted(api: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> bool:
    try:
        _create(api, namespace, body)
    except client.ApiException as err:
        if err.status != 403:
            raise
        return False
    return True


def test_host_volumes_are_refused_even_for_editors(
    users: UserApi, kube_api: client.ApiClient, namespace: str
) -> None:
    _bind(kube_api, namespace, "erin", "edit", "ClusterRole")
    _policy_in_force(users, kube_api, namespace)
    body = _study(
        volumes=[{"name": "host", "hostPath": {"path": "/var/run"}}],
        volumeMounts=[{"name": "host", "mountPath": "/host"}],
    )
    status, message = _refused(users("erin"), namespace, body)
    assert status == 403
    assert "volume host (hostPath) is not allowed" in message, message
    for volume in (
        {"name": "host", "hostPath": {"path": "/"}},
        {"name": "share", "nfs": {"server": "nfs.local", "path": "/"}},
    ):
        status, message = _refused(users("erin"), namespace, _overlay(volumes=[volume]))
        assert status == 403
        kind = next(k for k in volume if k != "name")
        assert f"volume {volume['name']} ({kind}) is not allowed" in message, message
    # The same editor may add a sidecar and an emptyDir: the policy lets it through.
    _create(
        users("erin"),
        namespace,
        _overlay(initContainers=[SIDECAR], volumes=[{"name": "cache", "emptyDir": {}}]),
    )


def test_priority_class_needs_the_use_verb(
    users: UserApi, kube_api: client.ApiClient, namespace: str
) -> None:
    user = f"pc-{namespace}"
    _bind(kube_api, namespace, user, "edit", "ClusterRole")
    _policy_in_force(users, kube_api, namespace)
    api = users(user)
    status, message = _refused(api, namespace, _study(priorityClassName="batch-high"))
    assert status == 403
    assert f"{user} may not use priorityclass batch-high" in message, message
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_cluster_role(
        {
            "metadata": {"name": user},
            "rules": [
                {
                    "apiGroups": ["scheduling.k8s.io"],
                    "resources": ["priorityclasses"],
                    "resourceNames": ["batch-high"],
                    "verbs": ["use"],
                }
            ],
        }
    )
    try:
        # A RoleBinding: this namespace may use the class (a ClusterRoleBinding would do too).
        _bind(kube_api, namespace, user, user, "ClusterRole")
        wait_for(
            lambda: _admitted(api, namespace, _study(priorityClassName="batch-high")),
            30,
            "the use grant to reach the authorizer",
        )
    finally:
        rbac.delete_cluster_role(user)


def test_writes_that_leave_the_spec_alone_are_not_checked(
    users: UserApi, kube_api: client.ApiClient, namespace: str
) -> None:
    """What the operator writes (status, its finalizer, metadata) passes without the
    rights to create pods; a spec change by the same user does not."""
    writer_rules = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
    ]
    _role(kube_api, namespace, "status-writer", writer_rules)
    _bind(kube_api, namespace, "writer", "status-writer", "Role")
    _policy_in_force(users, kube_api, namespace)
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _study("s")
    )
    writer = users("writer")
    writer.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "s", {"status": {"phase": "Pending"}}
    )
    writer.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "s",
        {"metadata": {"annotations": {"optuna-operator.io/seen": "1"}, "finalizers": ["x/y"]}},
    )
    with pytest.raises(client.ApiException) as info:
        writer.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "s", {"spec": {"workers": {"parallelism": 3}}}
        )
    assert "writer may not create pods" in info.value.body
    writer.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "s", {"metadata": {"finalizers": None}}
    )
