"""The Helm chart on the real bed: install, RBAC both ways, upgrade, uninstall, and the
operator running from the chart's own Deployment under its own ServiceAccount.

The bed's executor runs the chart's operator pod as a local process (`optuna-operator run`
with the Deployment's arguments and environment). The one thing the bed cannot do is mount
the ServiceAccount token, so the test mints a token for the chart's ServiceAccount and hands
it over in a kubeconfig through `extraEnv` (KUBECONFIG): the API server authenticates the
operator as that ServiceAccount and authorizes every request with the chart's RBAC.
"""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from sqlalchemy.engine import make_url
from tests.conftest import NamespaceFactory
from tests.integration.studies import Studies, wait_for

from optuna_operator.api import GROUP, PLURAL, VERSION
from optuna_operator.storage.tenancy import tenant_names
from testbed import Bed
from testbed.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "optuna-operator"
RELEASE = "optuna-operator"
SA = "optuna-operator"
CRD = "tuningstudies.tuning.optuna-operator.io"
STUDIES = f"{PLURAL}.{GROUP}"
NETWORK_POLICIES = "networkpolicies.networking.k8s.io"
LEASES = "leases.coordination.k8s.io"


# The session's operator watches every namespace; the chart's operator must be alone.
pytestmark = pytest.mark.usefixtures("session_operator_stopped")


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{out.stdout}\n{out.stderr}")
    return out


def helm(bed: Bed, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(bed.bin_dir / "helm", "--kubeconfig", bed.kubeconfig, *args)


def kubectl(bed: Bed, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(bed.bin_dir / "kubectl", "--kubeconfig", bed.kubeconfig, *args, check=check)


def can_i(bed: Bed, release_ns: str, verb: str, what: str, namespace: str | None) -> bool:
    """`kubectl auth can-i` as the chart's ServiceAccount; `what` may be resource/name or carry
    `--subresource=...` after a space."""
    resource, _, extra = what.partition(" ")
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    out = kubectl(
        bed,
        "auth",
        "can-i",
        verb,
        resource,
        *([extra] if extra else []),
        *scope,
        "--as",
        f"system:serviceaccount:{release_ns}:{SA}",
        check=False,
    )
    assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
    return out.stdout.strip() == "yes"


def assert_access(
    bed: Bed, release_ns: str, cases: list[tuple[str, str, str | None]], allowed: bool
) -> None:
    wrong = [c for c in cases if can_i(bed, release_ns, *c) != allowed]
    verdict = "denied" if allowed else "allowed"
    assert not wrong, f"{verdict} but should not be: {wrong}"


def study_from_notes(notes: str) -> dict[str, Any]:
    """The first-study YAML that NOTES.txt tells the user to apply."""
    lines = notes.splitlines()
    start = next(i for i, line in enumerate(lines) if "cat <<'YAML'" in line) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "YAML")
    body: dict[str, Any] = yaml.safe_load(textwrap.dedent("\n".join(lines[start:end])))
    return body


def secret_value(core: client.CoreV1Api, namespace: str, name: str, key: str) -> str:
    data = core.read_namespaced_secret(name, namespace).data or {}
    return base64.b64decode(data[key]).decode()


def exists(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_install_with_bundled_postgresql_in_namespaced_mode(
    bed: Bed, kube_api: client.ApiClient, namespace_factory: NamespaceFactory, tmp_path: Path
) -> None:
    release_ns = namespace_factory(pod_security="restricted")
    team, other = namespace_factory(), namespace_factory()
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    rbac, net = client.RbacAuthorizationV1Api(kube_api), client.NetworkingV1Api(kube_api)
    ext = client.ApiextensionsV1Api(kube_api)
    pg = f"{RELEASE}-postgresql"
    # The GitOps way: the credentials are the user's Secret; the chart renders no password.
    credentials = "pg-credentials"
    password = secrets.token_hex(16)
    core.create_namespaced_secret(
        release_ns,
        {
            "metadata": {"name": credentials},
            "stringData": {
                "password": password,
                "url": f"postgresql+psycopg2://optuna:{password}@{pg}.{release_ns}.svc:5432/optuna",
            },
        },
    )
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "postgresql": {"enabled": True, "auth": {"existingSecret": credentials}},
                "watchNamespaces": [team],
            }
        )
    )

    # The TuningStudy CRD exists already (crd_installed): Helm skips a crds/ CRD that exists.
    out = helm(bed, "install", RELEASE, CHART, "-n", release_ns, "-f", values)
    assert "STATUS: deployed" in out.stdout
    assert f"watching only: {team}" in out.stdout

    # Every object, where it belongs.
    assert exists(ext.read_custom_resource_definition, CRD)
    assert exists(core.read_namespaced_service_account, SA, release_ns)
    assert exists(apps.read_namespaced_deployment, RELEASE, release_ns)
    assert exists(apps.read_namespaced_stateful_set, pg, release_ns)
    for service in (f"{RELEASE}-metrics", pg, f"{pg}-hl"):
        assert exists(core.read_namespaced_service, service, release_ns), service
    assert exists(net.read_namespaced_network_policy, pg, release_ns)
    assert exists(net.read_namespaced_network_policy, RELEASE, release_ns)  # the operator pod's
    assert exists(
        client.PolicyV1Api(kube_api).read_namespaced_pod_disruption_budget, RELEASE, release_ns
    )
    assert exists(rbac.read_namespaced_role, RELEASE, team)
    assert exists(rbac.read_namespaced_role_binding, RELEASE, team)
    assert exists(rbac.read_namespaced_role, f"{RELEASE}-storage", release_ns)
    assert exists(rbac.read_namespaced_role, f"{RELEASE}-leader-election", release_ns)
    assert exists(rbac.read_namespaced_role_binding, f"{RELEASE}-leader-election", release_ns)
    assert exists(rbac.read_cluster_role, f"{RELEASE}-discovery")
    assert not exists(rbac.read_cluster_role, RELEASE)
    # Users' roles and the admission policy, bound to the watched namespace only.
    admission = client.AdmissionregistrationV1Api(kube_api)
    for role in (f"{RELEASE}-edit", f"{RELEASE}-view"):
        assert exists(rbac.read_cluster_role, role), role
    policy = f"{RELEASE}-author-permissions"
    assert exists(admission.read_validating_admission_policy, policy)
    selector = admission.read_validating_admission_policy_binding(
        policy
    ).spec.match_resources.namespace_selector
    assert selector.match_expressions[0].values == [team]
    assert not exists(rbac.read_namespaced_role, RELEASE, other)
    # Pods admitted under the restricted Pod Security Standard; the PVC from the template.
    wait_for(
        lambda: (
            exists(core.read_namespaced_pod, f"{pg}-0", release_ns)
            and exists(core.read_namespaced_persistent_volume_claim, f"data-{pg}-0", release_ns)
        ),
        30,
        "the PostgreSQL pod and its PersistentVolumeClaim",
    )
    wait_for(
        lambda: (
            core.list_namespaced_pod(
                release_ns, label_selector="app.kubernetes.io/component=operator"
            ).items
        ),
        30,
        "the operator pod",
    )

    # Namespaced mode: the studies' namespace and the one default Secret, nothing else.
    allowed: list[tuple[str, str, str | None]] = [
        ("watch", STUDIES, team),
        ("patch", STUDIES, team),
        ("patch", f"{STUDIES} --subresource=status", team),
        ("update", f"{STUDIES} --subresource=finalizers", team),
        ("create", "jobs.batch", team),
        ("delete", "jobs.batch", team),
        ("list", "jobs.batch", team),
        ("watch", "jobs.batch", team),
        ("get", "deployments.apps", team),
        ("watch", "deployments.apps", team),
        ("create", "deployments.apps", team),
        ("patch", "services", team),
        ("get", "secrets", team),
        ("create", "secrets", team),
        ("patch", "secrets", team),
        ("list", "pods", team),
        ("create", "configmaps", team),
        ("patch", "configmaps", team),
        ("create", "events", team),
        ("list", "events", team),
        # Leader election: its own Lease in the release namespace.
        ("get", f"{LEASES}/{RELEASE}", release_ns),
        ("update", f"{LEASES}/{RELEASE}", release_ns),
        ("create", LEASES, release_ns),
        ("create", NETWORK_POLICIES, team),
        ("delete", NETWORK_POLICIES, team),
        ("watch", NETWORK_POLICIES, team),
        ("get", f"secrets/{credentials}", release_ns),
        ("watch", "namespaces", None),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
    ]
    denied: list[tuple[str, str, str | None]] = [
        ("get", "secrets", other),
        ("get", "secrets", "kube-system"),
        ("get", "secrets/some-other-secret", release_ns),
        ("list", "secrets", team),
        ("watch", "secrets", team),
        ("delete", "secrets", team),
        ("list", STUDIES, other),
        ("list", STUDIES, None),
        ("delete", STUDIES, team),
        ("create", "jobs.batch", other),
        ("create", "jobs.batch", "kube-system"),
        ("create", NETWORK_POLICIES, other),
        ("create", "pods", team),
        ("get", "pods", team),
        ("create", "pods/exec", team),
        ("get", "configmaps", team),
        ("delete", "namespaces", None),
        # Another controller's Lease beside it, or a Lease anywhere else: no.
        ("update", f"{LEASES}/another-controller", release_ns),
        ("get", f"{LEASES}/another-controller", release_ns),
        ("list", LEASES, release_ns),
        ("watch", LEASES, release_ns),
        ("delete", f"{LEASES}/{RELEASE}", release_ns),
        ("patch", f"{LEASES}/{RELEASE}", release_ns),
        ("create", LEASES, team),
        ("update", f"{LEASES}/{RELEASE}", team),
        ("update", f"{LEASES}/kube-controller-manager", "kube-system"),
        ("update", LEASES, "kube-node-lease"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ]
    assert_access(bed, release_ns, allowed, allowed=True)
    assert_access(bed, release_ns, denied, allowed=False)

    # Upgrades never touch the password: the chart does not own it.
    helm(
        bed,
        "upgrade",
        RELEASE,
        CHART,
        "-n",
        release_ns,
        "--reuse-values",
        "--set",
        "statusInterval=7",
    )
    assert secret_value(core, release_ns, credentials, "password") == password
    assert not exists(core.read_namespaced_secret, pg, release_ns)
    statefulset: Any = apps.read_namespaced_stateful_set(pg, release_ns)
    env = {e.name: e for e in statefulset.spec.template.spec.containers[0].env}
    assert env["POSTGRES_PASSWORD"].value_from.secret_key_ref.name == credentials
    deployment: Any = apps.read_namespaced_deployment(RELEASE, release_ns)
    assert "--status-interval=7" in deployment.spec.template.spec.containers[0].args

    # Uninstall leaves the CRDs, the studies and the database's password and volume.
    studies = Studies(kube_api, team)
    studies.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TuningStudy",
            "metadata": {"name": "kept"},
            "spec": {
                "directions": ["minimize"],
                "objective": {"function": "tests.integration.objectives:quadratic"},
                "budget": {"trials": 1},
            },
        }
    )
    helm(bed, "uninstall", RELEASE, "-n", release_ns, "--wait")
    assert exists(ext.read_custom_resource_definition, CRD)
    assert studies.get("kept")["metadata"]["name"] == "kept"
    assert secret_value(core, release_ns, credentials, "password") == password
    assert exists(core.read_namespaced_persistent_volume_claim, f"data-{pg}-0", release_ns)
    assert not exists(apps.read_namespaced_stateful_set, pg, release_ns)
    assert not exists(rbac.read_namespaced_role, RELEASE, team)
    assert not exists(rbac.read_cluster_role, f"{RELEASE}-discovery")
    assert not exists(admission.read_validating_admission_policy, policy)
    studies.delete("kept")  # no operator served it: no finalizer holds it

    # A reinstall finds the same Secret and volume.
    helm(bed, "install", RELEASE, CHART, "-n", release_ns, "-f", values)
    assert secret_value(core, release_ns, credentials, "password") == password
    helm(bed, "uninstall", RELEASE, "-n", release_ns, "--wait")


def test_defaults_grant_nothing_outside_the_served_namespace(
    bed: Bed, kube_api: client.ApiClient, namespace_factory: NamespaceFactory, tmp_path: Path
) -> None:
    """The chart's default values: the operator serves `default` and holds no Secret, Job or
    NetworkPolicy right anywhere else, kube-system above all."""
    release_ns = namespace_factory(pod_security="restricted")
    unserved = namespace_factory()
    rbac, net = client.RbacAuthorizationV1Api(kube_api), client.NetworkingV1Api(kube_api)
    # Default values but for the pod: the bed's executor would run it as a local process on
    # the fixed default ports. Replicas change no RBAC object.
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"replicaCount": 0}))
    try:
        out = helm(bed, "install", RELEASE, CHART, "-n", release_ns, "-f", values)
        assert "watching only: default." in out.stdout
        assert exists(rbac.read_namespaced_role, RELEASE, "default")
        assert exists(rbac.read_namespaced_role_binding, RELEASE, "default")
        assert not exists(rbac.read_cluster_role, RELEASE)
        assert not exists(rbac.read_cluster_role_binding, RELEASE)
        operator_policy: Any = net.read_namespaced_network_policy(RELEASE, release_ns)
        assert operator_policy.spec.policy_types == ["Ingress"]
        assert not operator_policy.spec.ingress  # nobody, metrics included, by default

        served: list[tuple[str, str, str | None]] = [
            ("create", "jobs.batch", "default"),
            ("create", NETWORK_POLICIES, "default"),
            ("patch", NETWORK_POLICIES, "default"),
            ("delete", NETWORK_POLICIES, "default"),
            ("watch", NETWORK_POLICIES, "default"),
            ("get", "secrets", "default"),
            ("create", "secrets", "default"),
            ("watch", STUDIES, "default"),
            ("update", f"{LEASES}/{RELEASE}", release_ns),
            ("watch", "namespaces", None),
        ]
        elsewhere: list[tuple[str, str, str | None]] = [
            ("create", "secrets", "kube-system"),
            ("get", "secrets", "kube-system"),
            ("patch", "secrets", "kube-system"),
            ("create", "jobs.batch", "kube-system"),
            ("create", "deployments.apps", "kube-system"),
            ("create", NETWORK_POLICIES, "kube-system"),
            ("get", "secrets", unserved),
            ("create", "secrets", unserved),
            ("create", "jobs.batch", unserved),
            ("create", NETWORK_POLICIES, unserved),
            ("watch", STUDIES, unserved),
            # The release namespace is not served either (no default storage Secret is set).
            ("get", "secrets", release_ns),
            ("create", "jobs.batch", release_ns),
            ("get", "secrets", None),
            ("create", "jobs.batch", None),
            ("list", STUDIES, None),
            ("update", f"{LEASES}/{RELEASE}", "default"),
            ("create", LEASES, "kube-system"),
            ("list", "secrets", "default"),
        ]
        assert_access(bed, release_ns, served, allowed=True)
        assert_access(bed, release_ns, elsewhere, allowed=False)
    finally:
        helm(bed, "uninstall", RELEASE, "-n", release_ns, "--ignore-not-found", "--wait")
    assert not exists(rbac.read_namespaced_role, RELEASE, "default")


def token_kubeconfig(bed: Bed, namespace: str, path: Path) -> None:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a bound token)."""
    token = kubectl(bed, "create", "token", SA, "-n", namespace, "--duration", "1h").stdout
    admin = yaml.safe_load(bed.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bed", "cluster": cluster}],
        "users": [{"name": SA, "user": {"token": token.strip()}}],
        "contexts": [{"name": SA, "context": {"cluster": "bed", "user": SA}}],
        "current-context": SA,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def test_operator_from_the_chart_runs_a_study(
    bed: Bed, kube_api: client.ApiClient, namespace_factory: NamespaceFactory, tmp_path: Path
) -> None:
    release_ns = namespace_factory(pod_security="restricted")
    study_ns = namespace_factory(pod_security="restricted")
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    db_secret: Any = {"metadata": {"name": "optuna-db"}, "stringData": {"url": bed.storage_url}}
    core.create_namespaced_secret(release_ns, db_secret)
    kubeconfig = tmp_path / "operator.kubeconfig"
    metrics_port = free_port()
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                # Cluster-wide, explicitly: the study's namespace is made per test run.
                "clusterWide": True,
                # Scaled up once its token exists; the pod reads it at start.
                "replicaCount": 0,
                "storage": {"existingSecret": {"name": "optuna-db"}},
                "statusInterval": 2,
                "logFormat": "text",
                # Every bed pod lives on 127.0.0.1: ports nobody else holds.
                "health": {"port": free_port()},
                "metrics": {"port": metrics_port},
                "extraEnv": [{"name": "KUBECONFIG", "value": str(kubeconfig)}],
            }
        )
    )
    try:
        out = helm(bed, "install", RELEASE, CHART, "-n", release_ns, "-f", values)
        assert "Default storage: Secret optuna-db (key url)" in out.stdout
        study = study_from_notes(out.stdout)
        token_kubeconfig(bed, release_ns, kubeconfig)
        helm(
            bed,
            "upgrade",
            RELEASE,
            CHART,
            "-n",
            release_ns,
            "--reuse-values",
            "--set",
            "replicaCount=1",
            "--wait",
            "--timeout",
            "90s",
        )
        pods: Any = core.list_namespaced_pod(
            release_ns, label_selector="app.kubernetes.io/component=operator"
        )
        pod: str = pods.items[0].metadata.name

        # Cluster-wide mode: studies everywhere, Secrets by name only, nothing beyond. Everywhere
        # means kube-system too: what clusterWide grants, as values.yaml says.
        allowed: list[tuple[str, str, str | None]] = [
            ("watch", STUDIES, None),
            ("patch", f"{STUDIES} --subresource=status", study_ns),
            ("get", "secrets", study_ns),
            ("create", "jobs.batch", study_ns),
            ("create", NETWORK_POLICIES, study_ns),
            ("update", f"{LEASES}/{RELEASE}", release_ns),
            ("get", "secrets", "kube-system"),
            ("create", "secrets", "kube-system"),
            ("create", "jobs.batch", "kube-system"),
        ]
        denied: list[tuple[str, str, str | None]] = [
            ("list", "secrets", None),
            ("list", "secrets", study_ns),
            ("delete", "secrets", study_ns),
            ("create", "pods", study_ns),
            ("create", "pods/exec", study_ns),
            ("delete", STUDIES, study_ns),
            ("delete", "namespaces", None),
            ("list", "namespaces", None),
            # Cluster-wide serves studies everywhere, but its Lease is in its own namespace.
            ("update", f"{LEASES}/{RELEASE}", study_ns),
            ("update", f"{LEASES}/kube-controller-manager", "kube-system"),
            ("list", LEASES, None),
            ("update", "customresourcedefinitions.apiextensions.k8s.io", None),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        ]
        assert_access(bed, release_ns, allowed, allowed=True)
        assert_access(bed, release_ns, denied, allowed=False)

        # The study NOTES.txt suggests, from `kubectl apply` to Succeeded.
        manifest = tmp_path / "study.yaml"
        manifest.write_text(yaml.safe_dump(study))
        kubectl(bed, "apply", "-n", study_ns, "-f", manifest)
        name = study["metadata"]["name"]
        studies = Studies(kube_api, study_ns)
        try:
            status = studies.wait_phase(name, "Succeeded", timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{bed.pod_log(release_ns, pod)}") from None
        assert status["trials"]["complete"] >= 30
        assert set(status["bestTrial"]["params"]) == {"x"}
        assert status["bestTrial"]["values"][0] < 1.0  # (x - 2)^2 with 30 TPE trials
        kubectl(
            bed, "wait", "-n", study_ns, f"ts/{name}", "--for=condition=Succeeded", "--timeout=10s"
        )
        # The study's namespace got its own role's URL, never the admin URL of the chart.
        tenant_url = secret_value(core, study_ns, "optuna-storage", "url")
        assert tenant_url and tenant_url != bed.storage_url
        assert make_url(tenant_url).username == tenant_names(study_ns).role
        assert str(make_url(bed.storage_url).password) not in tenant_url
        # The namespace's one read-only dashboard, closed by its NetworkPolicy.
        assert exists(apps.read_namespaced_deployment, "optuna-dashboard", study_ns)
        policy = client.NetworkingV1Api(kube_api).read_namespaced_network_policy(
            "optuna-dashboard", study_ns
        )
        assert policy.spec.ingress in (None, [])

        # Not one request the chart's RBAC refused (other 403s, e.g. a namespace being
        # deleted by another test, are not RBAC's).
        log = bed.pod_log(release_ns, pod)
        denial = re.compile(rf'system:serviceaccount:{release_ns}:{SA}[\\"]* cannot')
        assert not denial.search(log), log
        assert "Not enough permissions" not in log, log
        # The pod leads: it holds the Lease, under its own name.
        lease: Any = client.CoordinationV1Api(kube_api).read_namespaced_lease(RELEASE, release_ns)
        assert lease.spec.holder_identity.startswith(f"{pod}_"), lease.spec
        assert lease.spec.lease_duration_seconds == 15
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as rsp:
            metrics = rsp.read().decode()
        assert (
            f'optuna_operator_study_phase{{name="{name}",namespace="{study_ns}",'
            'phase="Succeeded"} 1.0'
        ) in metrics

        helm(bed, "uninstall", RELEASE, "-n", release_ns, "--wait")
        wait_for(
            lambda: (
                not core.list_namespaced_pod(
                    release_ns, label_selector="app.kubernetes.io/component=operator"
                ).items
            ),
            60,
            "the operator pod to go",
        )
        # Results outlive the operator.
        assert studies.status(name)["phase"] == "Succeeded"
    finally:
        helm(bed, "uninstall", RELEASE, "-n", release_ns, "--ignore-not-found")
