"""Who may list a study's trials (`trials NAME`, StudyClient.trials): whoever may `get`
`services/proxy` for the namespace's dashboard, `optuna-dashboard:8080` as the request path
names it. The chart folds exactly that into the built-in view role
(templates/dashboard-proxy-role.yaml, applied here with its user roles through which view
reads TuningStudies; deploy/dashboard-proxy-role.yaml, the same for clusters without the
chart, comes with crd_installed). Decided by the real API server for real ServiceAccount
tokens, each in a kubeconfig of its own, through the pinned kubectl and the CLI.

This bed has no pod network (every pod is 127.0.0.1, so a Service gets no endpoints): here a
viewer's request passes authorization and stops at the missing endpoint. Listing the trials
of a study that ran in worker pods, from a real dashboard pod: tests/node/test_trials.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from tests.conftest import NamespaceFactory
from tests.integration.studies import ROOT, wait_for
from tests.token_users import token_user

from optuna_operator.api import GROUP, PLURAL, VERSION
from optuna_operator.trials import fetch_trials
from testbed import Bed

DASHBOARD = "optuna-dashboard"
STUDY = "quad"
CHART = ROOT / "charts" / "optuna-operator"
RELEASE = "trials-test"  # not another test's: Helm names the roles after the release
ROLE_TEMPLATES = ("templates/user-roles.yaml", "templates/dashboard-proxy-role.yaml")


@pytest.fixture(scope="module")
def chart_user_roles(bed: Bed, kube_api: client.ApiClient) -> Iterator[None]:
    """The chart's ClusterRoles for users (TuningStudies and the dashboard proxy into view),
    applied with kubectl, aggregated into view."""
    show = [arg for template in ROLE_TEMPLATES for arg in ("--show-only", template)]
    rendered = subprocess.run(
        [str(bed.bin_dir / "helm"), "template", RELEASE, str(CHART), *show],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kubectl = [str(bed.bin_dir / "kubectl"), "--kubeconfig", str(bed.kubeconfig)]
    subprocess.run([*kubectl, "apply", "-f", "-"], input=rendered, text=True, check=True)
    rbac = client.RbacAuthorizationV1Api(kube_api)

    def aggregated() -> bool:
        rules = rbac.read_cluster_role("view").rules or []
        return any(PLURAL in (r.resources or []) for r in rules) and any(
            "services/proxy" in (r.resources or [])
            and f"{DASHBOARD}:8080" in (r.resource_names or [])
            for r in rules
        )

    wait_for(aggregated, 30, "the chart's user roles to be aggregated into view")
    yield
    subprocess.run([*kubectl, "delete", "-f", "-"], input=rendered, text=True, check=True)


def can_i(bed: Bed, kubeconfig: Path, namespace: str, verb: str, resource: str) -> bool:
    """`kubectl auth can-i` with the user's own kubeconfig (a SelfSubjectAccessReview)."""
    out = subprocess.run(
        [
            str(bed.bin_dir / "kubectl"),
            "--kubeconfig",
            str(kubeconfig),
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            namespace,
            *(["--subresource=proxy"] if resource.startswith("services/") else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
    return out.stdout.strip() == "yes"


def trials_cli(kubeconfig: Path, namespace: str) -> subprocess.CompletedProcess[str]:
    """`optuna-operator trials` in a process of its own, as the user runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "optuna_operator.cli",
            "trials",
            STUDY,
            "-n",
            namespace,
            "--kubeconfig",
            str(kubeconfig),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def dashboard_namespace(
    kube_api: client.ApiClient,
    crd_installed: None,
    chart_user_roles: None,
    namespace_factory: NamespaceFactory,
) -> str:
    """A namespace with a study whose status names the dashboard Service, and that Service
    (no operator here: the status is written as the operator would, the Service has no pod)."""
    ns: str = namespace_factory()
    custom = client.CustomObjectsApi(kube_api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TuningStudy",
        "metadata": {"name": STUDY},
        "spec": {
            "directions": ["minimize"],
            "objective": {"function": "examples.quadratic:objective"},
            "budget": {"trials": 5},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    status = {"status": {"phase": "Running", "dashboard": {"service": DASHBOARD}}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, STUDY, status)
    client.CoreV1Api(kube_api).create_namespaced_service(
        ns,
        {
            "metadata": {"name": DASHBOARD},
            "spec": {
                "selector": {"app.kubernetes.io/component": "dashboard"},
                "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
            },
        },
    )
    return ns


def test_view_may_get_only_its_namespaces_dashboard_through_the_proxy(
    bed: Bed,
    kube_api: client.ApiClient,
    dashboard_namespace: str,
    namespace_factory: NamespaceFactory,
    tmp_path: Path,
) -> None:
    a = dashboard_namespace
    b: str = namespace_factory()
    alice = token_user(kube_api, bed.kubeconfig, a, "alice", tmp_path)
    bob = token_user(kube_api, bed.kubeconfig, b, "bob", tmp_path)
    proxy = f"services/{DASHBOARD}:8080"
    assert can_i(bed, alice, a, "get", proxy)
    assert can_i(bed, alice, a, "get", f"services/{DASHBOARD}:http")
    # Only the dashboard, only GET, only here; and no database credential anywhere.
    assert not can_i(bed, alice, a, "get", "services/kubernetes:443")
    assert not can_i(bed, alice, a, "get", f"services/{DASHBOARD}")  # no port: not granted
    assert not can_i(bed, alice, a, "create", proxy)
    assert not can_i(bed, alice, a, "delete", proxy)
    assert not can_i(bed, alice, b, "get", proxy)
    assert not can_i(bed, alice, a, "get", "secrets")
    assert not can_i(bed, alice, a, "create", "pods/portforward")
    assert not can_i(bed, bob, a, "get", proxy)
    assert can_i(bed, bob, b, "get", proxy)  # their own namespace's dashboard


def test_a_viewer_reaches_the_dashboard_and_another_namespaces_viewer_is_refused(
    bed: Bed,
    kube_api: client.ApiClient,
    dashboard_namespace: str,
    namespace_factory: NamespaceFactory,
    tmp_path: Path,
) -> None:
    a = dashboard_namespace
    b: str = namespace_factory()
    alice = token_user(kube_api, bed.kubeconfig, a, "alice", tmp_path)
    bob = token_user(kube_api, bed.kubeconfig, b, "bob", tmp_path)
    # Allowed to read the study but not the dashboard: a Role with TuningStudies only.
    client.RbacAuthorizationV1Api(kube_api).create_namespaced_role(
        a,
        {
            "metadata": {"name": "studies-only"},
            "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get"]}],
        },
    )
    carol = token_user(kube_api, bed.kubeconfig, a, "carol", tmp_path, role="studies-only")

    # alice (view in a): the API server authorized the proxy request and looked for the
    # dashboard's pod (none in this bed) instead of refusing her.
    out = trials_cli(alice, a)
    assert out.returncode == 1, out
    assert f"the dashboard Service {a}/{DASHBOARD} has no ready pod yet" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr

    # carol reads the study but may not get services/proxy: refused by the API server, and
    # told what is missing.
    out = trials_cli(carol, a)
    assert out.returncode == 1, out
    assert "answered 403" in out.stderr and 'cannot get resource "services/proxy"' in out.stderr
    assert f"needs get on services/proxy for {DASHBOARD}:8080 in namespace {a}" in out.stderr

    # bob (view in b): refused in a, at the study and at the dashboard alike.
    out = trials_cli(bob, a)
    assert out.returncode == 1, out
    assert "answered 403" in out.stderr and "tuningstudies" in out.stderr, out.stderr
    api = config.new_client_from_config(config_file=str(bob))
    try:
        with pytest.raises(client.ApiException) as refused:
            fetch_trials(api, a, DASHBOARD, 8080, f"{a}.{STUDY}")
    finally:
        api.close()
    assert refused.value.status == 403
    assert f'services \\"{DASHBOARD}:8080\\" is forbidden' in str(refused.value.body)
