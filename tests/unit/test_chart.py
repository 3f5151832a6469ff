"""The Helm chart, rendered by the pinned helm binary: lint, schema, golden manifests, and the
facts the operator relies on (its CLI accepts the chart's arguments, RBAC stays narrow)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from optuna_operator import __version__
from optuna_operator.config import LeaderElection, add_run_arguments, settings_from_args

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "optuna-operator"
GOLDEN = Path(__file__).parent / "golden"
CRD_FILE = "tuning.optuna-operator.io_tuningstudies.yaml"
RELEASE, NAMESPACE = "optuna-operator", "optuna-system"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
Manifest = dict[str, Any]


def helm_binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-binaries.sh"), "--print"],
        capture_output=True,
        text=True,
        check=False,
    )
    path = Path(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "") / "helm"
    if out.returncode != 0 or not path.is_file():
        pytest.fail(f"the pinned helm binary is missing ({path}); build it with `make binaries`")
    return path


HELM = helm_binary()


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; the API server would too. A chart must not
    rely on that, so rendered manifests are parsed with duplicates as errors."""


def _mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k) for k, _ in node.value]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(duplicates)}", node.start_mark
        )
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def render(*args: str) -> list[Manifest]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.load_all(out.stdout, Loader=UniqueKeyLoader) if d]
    return sorted(docs, key=lambda d: (d["kind"], d["metadata"].get("namespace", ""), name(d)))


def name(obj: Manifest) -> str:
    return str(obj["metadata"]["name"])


def labels(obj: Manifest) -> dict[str, str]:
    found: dict[str, str] = obj["metadata"].get("labels") or {}
    return found


def one(docs: list[Manifest], kind: str, suffix: str = "") -> Manifest:
    found = [d for d in docs if d["kind"] == kind and name(d).endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, got {[name(d) for d in found]}"
    return found[0]


def operator_container(docs: list[Manifest]) -> Manifest:
    deployment = one(docs, "Deployment", RELEASE)  # not <release>-pgbouncer
    container: Manifest = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


# --------------------------------------------------------------------------- lint and schema


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "default")
def test_helm_lint(values: Path | None) -> None:
    out = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=two"], "/replicaCount"),
        (["--set", "logFormat=xml"], "/logFormat"),
        (["--set", "watchNamespaces[0]=Team_A"], "/watchNamespaces/0"),
        (["--set", "postgresql.auth.password=p@ss/word"], "/postgresql/auth/password"),
        (["--set", "storage.existingSecret.name=other-ns/db"], "/storage/existingSecret/name"),
        (["--set", "image.digest=latest"], "/image/digest"),
        (["--set", "metrics.port=70000"], "/metrics/port"),
        (["--set", "postgresql.persistence.size=lots"], "/postgresql/persistence/size"),
        (["--set", "podDisruptionBudget.maxUnavailable=half"], "/podDisruptionBudget"),
        (["--set", "statusIntervall=5"], "additional properties 'statusIntervall'"),
        (["--set", "clusterWide=yes"], "/clusterWide"),
        (["--set", "leaderElection.leaseDuration=15"], "/leaderElection/leaseDuration"),
        (["--set", "leaderElection.retryPeriod=2 s"], "/leaderElection/retryPeriod"),
        (["--set", "dashboard.allowedFrom[0].namespace=x"], "/dashboard/allowedFrom/0"),
        (["--set-json", "metrics.networkPolicy.allowedFrom=[{}]"], "/metrics/networkPolicy"),
        (["--set-json", 'dashboard.allowedFrom=[{"ipBlock":{}}]'], "/dashboard/allowedFrom/0"),
        (["--set", "dashboard.podTemplate=sidecar"], "/dashboard/podTemplate"),
        (
            [
                "--set-json",
                'dashboard.podTemplate={"spec":{"volumes":[{"name":"h","hostPath":{}}]}}',
            ],
            "/dashboard/podTemplate/spec/volumes/0",
        ),
        (
            ["--set-json", 'dashboard.podTemplate={"spec":{"hostPID":true}}'],
            "/dashboard/podTemplate",
        ),
    ],
)
def test_bad_values_fail_on_the_schema(args: list[str], message: str) -> None:
    out = helm("template", RELEASE, str(CHART), *args)
    assert out.returncode != 0
    assert "don't meet the specifications of the schema" in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "replicaCount=2", "--set", "leaderElection.enabled=false"],
            "replicaCount > 1 needs leaderElection.enabled",
        ),
        (
            ["--set", "postgresql.enabled=true", "--set", "storage.existingSecret.name=db"],
            "set either postgresql.enabled or storage.existingSecret.name, not both",
        ),
        (
            ["--set", "serviceAccount.create=false"],
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
        # Serving nothing is not a way to ask for everything: cluster-wide is its own value.
        (
            ["--set", "watchNamespaces=null"],
            "watchNamespaces is empty: list the namespaces whose studies the operator serves",
        ),
        (["--set-json", "watchNamespaces=[]"], "or set clusterWide=true to serve every namespace"),
        (
            ["--set", "watchNamespaces={team-a,kube-system}"],
            "watchNamespaces lists kube-system: the operator never serves a system namespace",
        ),
        (
            ["--set", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.networkPolicy.allowedFrom",
        ),
    ],
)
def test_contradicting_values_fail_with_a_reason(args: list[str], message: str) -> None:
    out = helm("template", RELEASE, str(CHART), *args)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


# --------------------------------------------------------------------------- golden manifests


@pytest.mark.parametrize(
    "case", ["default", "namespaced", "cluster-wide", "postgresql", "pgbouncer"]
)
def test_rendered_manifests_golden(case: str) -> None:
    args = [] if case == "default" else ["-f", str(CHART / "ci" / f"{case}-values.yaml")]
    rendered = yaml.safe_dump_all(render(*args), sort_keys=True)
    path = GOLDEN / f"chart-{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.exists(), f"missing golden file {path}: run with UPDATE_GOLDEN=1"
    assert rendered == path.read_text(), f"chart ({case}) differs from {path}"


# --------------------------------------------------------------------------- CRDs and versions


def test_chart_crd_is_the_generated_crd() -> None:
    assert (CHART / "crds" / CRD_FILE).read_text() == (ROOT / "crds" / CRD_FILE).read_text(), (
        f"charts/optuna-operator/crds/{CRD_FILE} differs from crds/: run `make crds`"
    )


def test_chart_crds_are_the_tuning_study_only() -> None:
    """Leader election uses a built-in Lease: no kopf.dev peering CRDs to install."""
    names = set()
    for path in (CHART / "crds").glob("*.yaml"):
        for doc in yaml.load_all(path.read_text(), Loader=UniqueKeyLoader):
            assert doc["kind"] == "CustomResourceDefinition", path
            names.add(name(doc))
    assert names == {"tuningstudies.tuning.optuna-operator.io"}


def test_chart_versions_follow_the_operator() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    images = render()
    assert operator_container(images)["image"].endswith(f":{__version__}")


# ------------------------------------------------------------------- what the operator reads


def parsed_settings(container: Manifest, pod_namespace: str) -> Any:
    assert container["command"] == ["optuna-operator"] and container["args"][0] == "run"
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(container["args"][1:])  # exits (fails) on an unknown flag
    saved = os.environ.get("POD_NAMESPACE")
    os.environ["POD_NAMESPACE"] = pod_namespace
    try:
        return settings_from_args(args)
    finally:
        if saved is None:
            del os.environ["POD_NAMESPACE"]
        else:
            os.environ["POD_NAMESPACE"] = saved


def test_operator_cli_accepts_the_default_arguments() -> None:
    docs = render()
    container = operator_container(docs)
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    settings = parsed_settings(container, NAMESPACE)
    assert settings.namespaces == ("default",)  # watchNamespaces' default
    assert settings.dashboard_allowed_from == []
    assert settings.default_storage is None
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert settings.leader_election == LeaderElection(RELEASE, NAMESPACE, 15.0, 10.0, 2.0)
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert settings.metrics_port == 9090
    assert settings.worker_image == f"ghcr.io/optuna-operator/worker:{__version__}"
    probe_ports = {container[p]["httpGet"]["port"] for p in ("livenessProbe", "readinessProbe")}
    assert probe_ports == {"health"}
    assert {"name": "health", "containerPort": 8080} in container["ports"]


def test_default_queue_name_reaches_the_operator_and_it_may_read_kueue() -> None:
    assert parsed_settings(operator_container(render()), NAMESPACE).default_queue_name is None
    docs = render("--set", "defaultQueueName=gpu")
    assert parsed_settings(operator_container(docs), NAMESPACE).default_queue_name == "gpu"
    role = next(d for d in docs if d["kind"] == "Role" and name(d) == "optuna-operator")
    kueue_rules = [r for r in role["rules"] if "kueue.x-k8s.io" in r["apiGroups"]]
    assert kueue_rules == [
        {
            "apiGroups": ["kueue.x-k8s.io"],
            "resources": ["workloads", "localqueues"],
            "verbs": ["get", "list"],
        }
    ]


def test_operator_cli_accepts_namespaced_arguments() -> None:
    docs = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    settings = parsed_settings(operator_container(docs), NAMESPACE)
    assert settings.namespaces == ("team-a", "team-b")
    assert (settings.default_storage.namespace, settings.default_storage.name) == (
        NAMESPACE,
        "optuna-db",
    )
    assert settings.worker_image == "registry.example/trainer:1.2"
    assert settings.leader_election == LeaderElection(RELEASE, NAMESPACE, 15.0, 10.0, 2.0)


def test_bundled_postgresql_is_the_default_storage() -> None:
    docs = render("-f", str(CHART / "ci" / "postgresql-values.yaml"))
    settings = parsed_settings(operator_container(docs), NAMESPACE)
    secret = one(docs, "Secret", "-postgresql")
    assert settings.default_storage is not None
    assert (settings.default_storage.name, settings.default_storage.key) == (name(secret), "url")
    assert settings.leader_election is None  # leaderElection.enabled=false in these values
    assert not [d for d in docs if "leader-election" in name(d)]
    assert "url" in secret["data"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


# ------------------------------------------------- the bundled PostgreSQL's password, GitOps


def test_bundled_postgresql_without_a_password_source_fails_with_how_to_make_one() -> None:
    out = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--set", "postgresql.enabled=true")
    assert out.returncode != 0
    assert "postgresql.auth.existingSecret" in out.stderr, out.stderr
    assert "kubectl create secret generic" in out.stderr
    assert f"@{RELEASE}-postgresql.{NAMESPACE}.svc:5432/optuna" in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "postgresql.auth.existingSecret=pg-credentials"],
        ["--set", "postgresql.auth.password=chosen-by-me"],
    ],
    ids=["existingSecret", "password"],
)
def test_bundled_postgresql_renders_identically_every_time(args: list[str]) -> None:
    """Argo CD renders with `helm template` on every sync (no cluster, no `lookup`): two
    renders must be byte for byte the same, or each sync would write a new password."""
    command = ["template", RELEASE, str(CHART), "-n", NAMESPACE, "--set", "postgresql.enabled=true"]
    first, second = helm(*command, *args), helm(*command, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert "lookup" not in (CHART / "templates" / "postgresql.yaml").read_text()


def test_existing_secret_is_the_one_every_part_uses() -> None:
    docs = render(
        "-f",
        str(CHART / "ci" / "postgresql-values.yaml"),
        "--set",
        "postgresql.auth.existingSecret=pg-credentials",
        "--set",
        "watchNamespaces={team-a}",
    )
    # The user's Secret is the only one: the chart writes no password anywhere.
    assert [d for d in docs if d["kind"] == "Secret"] == []
    settings = parsed_settings(operator_container(docs), NAMESPACE)
    assert (settings.default_storage.name, settings.default_storage.key) == (
        "pg-credentials",
        "url",
    )
    postgres = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in postgres["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "pg-credentials",
        "key": "password",
    }
    storage_role = one(docs, "Role", "-storage")
    assert storage_role["rules"][0]["resourceNames"] == ["pg-credentials"]


# --------------------------------------------------------------------------- security


def pod_specs(docs: list[Manifest]) -> list[tuple[str, Manifest]]:
    return [
        (name(d), d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    ]


@pytest.mark.parametrize("case", ["default", "postgresql", "pgbouncer"])
def test_pods_meet_the_restricted_pod_security_standard(case: str) -> None:
    args = [] if case == "default" else ["-f", str(CHART / "ci" / f"{case}-values.yaml")]
    specs = pod_specs(render(*args))
    assert len(specs) == {"default": 1, "postgresql": 2, "pgbouncer": 3}[case]
    for owner, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", owner
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, owner
            assert sc["capabilities"]["drop"] == ["ALL"], owner
            assert sc["readOnlyRootFilesystem"] is True, owner
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], owner


def all_rules(docs: list[Manifest]) -> list[tuple[str, Manifest]]:
    return [
        (f"{d['kind']}/{d['metadata'].get('namespace', '')}/{name(d)}", rule)
        for d in docs
        if d["kind"] in ("ClusterRole", "Role")
        for rule in d["rules"]
    ]


@pytest.mark.parametrize("case", ["default", "namespaced", "cluster-wide", "postgresql"])
def test_rbac_has_no_wildcards_and_never_lists_secrets(case: str) -> None:
    args = [] if case == "default" else ["-f", str(CHART / "ci" / f"{case}-values.yaml")]
    rules = all_rules(render(*args))
    assert rules
    for where, rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], where
        if "secrets" in rule["resources"]:
            assert not {"list", "watch", "delete", "update"} & set(rule["verbs"]), where
        assert "pods" not in rule["resources"] or rule["verbs"] == ["list"], where
        assert not {"pods/exec", "namespaces/finalize", "clusterroles"} & set(rule["resources"])


def test_namespaced_mode_has_no_cluster_wide_study_rules() -> None:
    docs = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    # rbac.clusterDiscovery is false there: nothing cluster-scoped is bound to the operator.
    # The only ClusterRoles are the ones aggregated into the built-in user roles.
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert {name(d) for d in cluster_roles} == {
        "optuna-operator-edit",
        "optuna-operator-view",
        "optuna-operator-dashboard-proxy",
    }
    for role in cluster_roles:
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels(role))
    roles = {(d["metadata"]["namespace"], name(d)) for d in docs if d["kind"] == "Role"}
    assert roles == {
        ("team-a", "optuna-operator"),
        ("team-b", "optuna-operator"),
        (NAMESPACE, "optuna-operator-storage"),
        (NAMESPACE, "optuna-operator-leader-election"),
    }
    storage = one(docs, "Role", "-storage")["rules"]
    assert storage == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["optuna-db"],
            "verbs": ["get"],
        }
    ]


# What the operator must never hold with default values: Secrets or Jobs beyond the namespaces
# it serves (kube-system above all), through any ClusterRole it is bound to or any Role outside.
REACH = {"secrets", "jobs", "deployments", "services", "configmaps", "networkpolicies", "pods"}
NETWORK_POLICY_RULE = {
    "apiGroups": ["networking.k8s.io"],
    "resources": ["networkpolicies"],
    "verbs": ["get", "list", "watch", "create", "patch", "delete"],
}


def bound_cluster_roles(docs: list[Manifest]) -> list[Manifest]:
    """The ClusterRoles a ClusterRoleBinding or RoleBinding gives the operator's account."""
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    names = {b["roleRef"]["name"] for b in bindings if b["roleRef"]["kind"] == "ClusterRole"}
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
        ]
    return [d for d in docs if d["kind"] == "ClusterRole" and name(d) in names]


def test_defaults_serve_one_namespace_with_no_cluster_wide_secrets_or_jobs() -> None:
    docs = render()
    # Every ClusterRole in the release: the discovery role bound to the operator (namespaces
    # and CRDs, list and watch) and the users' aggregated roles (TuningStudies only).
    for role in [d for d in docs if d["kind"] == "ClusterRole"]:
        for rule in role["rules"]:
            assert not REACH & set(rule["resources"]), (name(role), rule)
    (discovery,) = bound_cluster_roles(docs)
    assert name(discovery) == f"{RELEASE}-discovery"
    assert {v for r in discovery["rules"] for v in r["verbs"]} == {"list", "watch"}
    assert {r for rule in discovery["rules"] for r in rule["resources"]} == {
        "namespaces",
        "customresourcedefinitions",
    }
    # The study rules live in a Role in `default` only, bound to the operator; its Lease in
    # the release namespace.
    roles = [d for d in docs if d["kind"] == "Role" and name(d) == RELEASE]
    assert [(d["metadata"]["namespace"], name(d)) for d in roles] == [("default", RELEASE)]
    assert {(d["metadata"]["namespace"], name(d)) for d in docs if d["kind"] == "Role"} == {
        ("default", RELEASE),
        (NAMESPACE, f"{RELEASE}-leader-election"),
    }
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and name(d) == RELEASE]
    assert binding["metadata"]["namespace"] == "default"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": RELEASE,
    }
    rules = roles[0]["rules"]
    assert {"apiGroups": ["batch"], "resources": ["jobs"]}.items() <= next(
        r for r in rules if "jobs" in r["resources"]
    ).items()
    assert NETWORK_POLICY_RULE in rules
    assert not [d for d in docs if "kube-system" in yaml.safe_dump(d)]


def test_cluster_wide_is_an_explicit_choice_and_ignores_the_list() -> None:
    docs = render("--set", "clusterWide=true", "--set", "watchNamespaces={team-a}")
    (study_role,) = [d for d in bound_cluster_roles(docs) if name(d) == RELEASE]
    resources = {r for rule in study_role["rules"] for r in rule["resources"]}
    assert {"secrets", "jobs", "networkpolicies"} <= resources
    assert NETWORK_POLICY_RULE in study_role["rules"]
    # No Role but the Lease's, in the release namespace.
    roles = [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    assert [(d["kind"], d["metadata"]["namespace"], name(d)) for d in roles] == [
        ("Role", NAMESPACE, f"{RELEASE}-leader-election"),
        ("RoleBinding", NAMESPACE, f"{RELEASE}-leader-election"),
    ]
    assert parsed_settings(operator_container(docs), NAMESPACE).namespaces == ()
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "author-permissions")
    assert "matchResources" not in binding["spec"]
    # The ci example of the mode, and what the values file says it grants.
    assert render("-f", str(CHART / "ci" / "cluster-wide-values.yaml"))
    values = (CHART / "values.yaml").read_text()
    assert "kube-system included" in values.split("clusterWide: false")[0]


@pytest.mark.parametrize("case", ["default", "namespaced", "cluster-wide", "pgbouncer"])
def test_leader_election_may_touch_its_own_lease_in_the_release_namespace_only(case: str) -> None:
    """A Role in the release namespace: create Leases (no name can be given to a create),
    get and update the one the operator is told to hold; no Lease right anywhere else, and
    nothing of kopf's peering."""
    args = [] if case == "default" else ["-f", str(CHART / "ci" / f"{case}-values.yaml")]
    docs = render(*args)
    election = parsed_settings(operator_container(docs), NAMESPACE).leader_election
    assert election is not None and election.name == RELEASE
    lease_rules = [(where, r) for where, r in all_rules(docs) if "leases" in r["resources"]]
    assert lease_rules == [
        (
            f"Role/{NAMESPACE}/{RELEASE}-leader-election",
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ),
        (
            f"Role/{NAMESPACE}/{RELEASE}-leader-election",
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [election.name],
                "verbs": ["get", "update"],
            },
        ),
    ]
    binding = one(docs, "RoleBinding", "-leader-election")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["name"] == f"{RELEASE}-leader-election"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]
    assert "kopf.dev" not in yaml.safe_dump_all(docs)
    assert "peering" not in yaml.safe_dump_all(docs)


def test_namespaced_mode_manages_network_policies_in_each_served_namespace() -> None:
    docs = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    study_roles = [d for d in docs if d["kind"] == "Role" and name(d) == RELEASE]
    assert sorted(d["metadata"]["namespace"] for d in study_roles) == ["team-a", "team-b"]
    for role in study_roles:
        assert NETWORK_POLICY_RULE in role["rules"]


def test_dashboard_allowed_from_reaches_the_operator() -> None:
    peers = [MONITORING, {"podSelector": {"matchLabels": {"app": "proxy"}}}]
    docs = render("--set-json", f"dashboard.allowedFrom={json.dumps(peers)}")
    assert parsed_settings(operator_container(docs), NAMESPACE).dashboard_allowed_from == peers
    namespaced = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert parsed_settings(operator_container(namespaced), NAMESPACE).dashboard_allowed_from == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


DASHBOARD_OVERLAY = {
    "metadata": {"labels": {"team": "platform"}},
    "spec": {
        "containers": [{"name": "dashboard", "resources": {"limits": {"memory": "512Mi"}}}],
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def test_dashboard_pod_template_reaches_the_operator() -> None:
    assert parsed_settings(operator_container(render()), NAMESPACE).dashboard_pod_template is None
    docs = render("--set-json", f"dashboard.podTemplate={json.dumps(DASHBOARD_OVERLAY)}")
    settings = parsed_settings(operator_container(docs), NAMESPACE)
    assert settings.dashboard_pod_template == DASHBOARD_OVERLAY
    namespaced = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    overlay = parsed_settings(operator_container(namespaced), NAMESPACE).dashboard_pod_template
    assert overlay == {
        "spec": {
            "containers": [{"name": "dashboard", "resources": {"limits": {"memory": "512Mi"}}}],
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        }
    }


def test_a_dashboard_pod_template_the_api_would_refuse_stops_the_operator() -> None:
    # The schema checks the shape; the operator, at start, what a study's own
    # spec.dashboard.podTemplate would be refused for.
    privileged = {
        "spec": {
            "initContainers": [
                {"name": "x", "image": "x:1", "securityContext": {"privileged": True}}
            ]
        }
    }
    docs = render("--set-json", f"dashboard.podTemplate={json.dumps(privileged)}")
    with pytest.raises(SystemExit) as exited:
        parsed_settings(operator_container(docs), NAMESPACE)
    message = str(exited.value)
    assert "dashboard.podTemplate.spec.initContainers[x]: privileged containers" in message


def operator_policy(docs: list[Manifest]) -> Manifest:
    policy = one(docs, "NetworkPolicy", RELEASE)  # not -postgresql / -pgbouncer
    deployment = one(docs, "Deployment", RELEASE)
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    return policy


def test_operator_pod_admits_nothing_by_default() -> None:
    docs = render()
    assert operator_policy(docs)["spec"]["ingress"] == []
    # Its only ports: health (probed by the kubelet from the node, which NetworkPolicy never
    # blocks) and metrics.
    ports = {p["name"] for p in operator_container(docs)["ports"]}
    assert ports == {"health", "metrics"}
    off = render("--set", "metrics.networkPolicy.enabled=false")
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]


def test_operator_pod_admits_the_metrics_port_from_prometheus_only() -> None:
    docs = render(
        "--set", "metrics.port=9191",
        "--set-json", f"metrics.networkPolicy.allowedFrom=[{json.dumps(MONITORING)}]",
    )  # fmt: skip
    (rule,) = operator_policy(docs)["spec"]["ingress"]
    container = operator_container(docs)
    metrics_port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert rule == {
        "ports": [{"port": metrics_port["containerPort"], "protocol": "TCP"}],
        "from": [MONITORING],
    }
    assert metrics_port["containerPort"] == 9191
    # Metrics off: no port to admit, the policy still closes the pod.
    off = render(
        "--set", "metrics.enabled=false",
        "--set-json", f"metrics.networkPolicy.allowedFrom=[{json.dumps(MONITORING)}]",
    )  # fmt: skip
    assert operator_policy(off)["spec"]["ingress"] == []
    # The ServiceMonitor example scrapes from where the policy admits.
    namespaced = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert one(namespaced, "ServiceMonitor")
    assert (
        operator_policy(namespaced)["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
        == (MONITORING["namespaceSelector"])
    )


def test_network_policy_admits_only_operator_workers_and_dashboards() -> None:
    docs = render("-f", str(CHART / "ci" / "postgresql-values.yaml"))
    policy = one(docs, "NetworkPolicy", "-postgresql")
    statefulset = one(docs, "StatefulSet")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == statefulset["spec"]["selector"]["matchLabels"]
    )
    peers = policy["spec"]["ingress"][0]["from"]
    operator_labels = one(docs, "Deployment", RELEASE)["spec"]["selector"]["matchLabels"]
    assert peers[0] == {"podSelector": {"matchLabels": operator_labels}}
    # The labels manifests.labels() puts on worker and dashboard pods.
    from optuna_operator.children import manifests

    expressions = {e["key"]: e["values"] for e in peers[1]["podSelector"]["matchExpressions"]}
    assert expressions == {
        "app.kubernetes.io/managed-by": [manifests.MANAGED_BY],
        "app.kubernetes.io/component": ["worker", "dashboard"],
    }
    assert peers[2] == {"podSelector": {"matchLabels": {"app": "pg-backup"}}}


def test_pgbouncer_sits_between_the_workers_and_postgresql() -> None:
    from optuna_operator.children import manifests

    docs = render("-f", str(CHART / "ci" / "pgbouncer-values.yaml"))
    service = one(docs, "Service", "-pgbouncer")
    port = service["spec"]["ports"][0]["port"]
    settings = parsed_settings(operator_container(docs), NAMESPACE)
    assert settings.worker_pooler == f"{name(service)}.{NAMESPACE}.svc:{port}"

    ini = one(docs, "ConfigMap", "-pgbouncer")["data"]["pgbouncer.ini"]
    options = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in ini.splitlines())
    )
    assert options["pool_mode"] == "transaction"
    assert options["auth_type"] == "scram-sha-256"
    assert options["auth_user"] == "optuna_pgbouncer"
    # The function files/pgbouncer-auth.sql creates, which the tests install on the bed.
    sql = (CHART / "files" / "pgbouncer-auth.sql").read_text()
    assert "optuna_pgbouncer.user_lookup(p_username text)" in sql
    assert options["auth_query"] == "SELECT uname, phash FROM optuna_pgbouncer.user_lookup($1)"
    postgresql = one(docs, "Service", "-postgresql")
    assert options["*"] == f"host={name(postgresql)}.{NAMESPACE}.svc port=5432"

    # The auth role's password comes from a Secret through the environment only.
    deployment = one(docs, "Deployment", "-pgbouncer")
    spec = deployment["spec"]["template"]["spec"]
    password = "ci-only-not-a-secret-either"
    assert password not in yaml.safe_dump([ini, spec])
    (init,) = spec["initContainers"]
    assert init["env"] == [
        {
            "name": "AUTH_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": name(deployment), "key": "password"}},
        }
    ]
    assert spec["automountServiceAccountToken"] is False

    # Only worker pods reach PgBouncer; PgBouncer reaches PostgreSQL.
    policies = {name(p): p for p in docs if p["kind"] == "NetworkPolicy"}
    (peer,) = policies[name(deployment)]["spec"]["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": manifests.MANAGED_BY,
        "app.kubernetes.io/component": "worker",
    }
    pg_peers = policies[name(postgresql)]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}} in (
        pg_peers
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "pgbouncer.enabled=true", "--set", "storage.existingSecret.name=db"],
            "pgbouncer.enabled needs pgbouncer.auth.existingSecret",
        ),
        (
            [
                "--set",
                "pgbouncer.enabled=true",
                "--set",
                "storage.existingSecret.name=db",
                "--set",
                "pgbouncer.auth.existingSecret=pgb",
            ],
            "pgbouncer.enabled needs pgbouncer.database.host",
        ),
    ],
)
def test_pgbouncer_without_what_it_needs_fails_with_how_to_give_it(
    args: list[str], message: str
) -> None:
    out = helm("template", RELEASE, str(CHART), *args)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_pgbouncer_worker_address_replaces_the_service_name() -> None:
    """Where pods do not resolve Service names (the node bed), workers get an address."""
    values = str(CHART / "ci" / "pgbouncer-values.yaml")
    docs = render("-f", values, "--set", "pgbouncer.workerAddress=10.0.0.7:6432")
    assert parsed_settings(operator_container(docs), NAMESPACE).worker_pooler == "10.0.0.7:6432"
    out = helm("template", RELEASE, str(CHART), "-f", values, "--set", "pgbouncer.workerAddress=x")
    assert out.returncode != 0 and "workerAddress" in out.stderr, out.stderr


def test_pgbouncer_is_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if "pgbouncer" in name(d)]
    assert parsed_settings(operator_container(docs), NAMESPACE).worker_pooler is None


# --------------------------------------------------------------------------- monitoring


def exported_series() -> set[str]:
    """Every series name the operator's metrics module exports."""
    from prometheus_client import REGISTRY

    from optuna_operator import metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith(metrics.__name__.split(".")[0]):
            names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def counter_series() -> set[str]:
    """The series rate() and increase() may read: counters' and histograms' (never a gauge,
    whose drops they would take for counter resets)."""
    from prometheus_client import REGISTRY

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("optuna_operator")
        for suffix in suffixes.get(family.type, [])
    }


def rated(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:rate|irate|increase)\(\s*(optuna_operator_[a-z_]+)", expr))


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(optuna_operator_[a-z_]+)\b", expr))


def balanced(expr: str) -> bool:
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in expr:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def test_monitoring_is_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert "PrometheusRule" not in kinds
    assert not [d for d in render() if name(d).endswith("-grafana-dashboard")]


def test_alerts_use_only_metrics_the_operator_exports() -> None:
    docs = render(
        "--set", "metrics.prometheusRule.enabled=true",
        "--set", "metrics.prometheusRule.noProgressFor=2h",
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set-json", f"metrics.networkPolicy.allowedFrom=[{json.dumps(MONITORING)}]",
    )  # fmt: skip
    rules = {r["alert"]: r for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert set(rules) == {
        "OptunaOperatorDown",
        "OptunaOperatorReconcileErrors",
        "OptunaStudyFailed",
        "OptunaStudyMostlyPruned",
        "OptunaStudyNoProgress",
    }
    exported = exported_series()
    assert {"optuna_operator_study_phase", "optuna_operator_reconcile_errors_total"} <= exported
    job = f'job="{RELEASE}-metrics"'
    for alert, rule in rules.items():
        assert balanced(rule["expr"]), alert
        assert metric_names(rule["expr"]) <= exported, alert
        assert rated(rule["expr"]) <= counter_series(), alert
        assert job in rule["expr"], alert
        assert rule["labels"]["severity"] in ("critical", "warning")
    # The rules' job is the metrics Service's name: the ServiceMonitor's default job label.
    assert one(docs, "Service", "-metrics")["metadata"]["name"] == f"{RELEASE}-metrics"
    assert "[2h]" in rules["OptunaStudyNoProgress"]["expr"]
    assert rated(rules["OptunaStudyNoProgress"]["expr"]) == {
        "optuna_operator_study_trials_finished_total"
    }
    # A failed study stays Failed: the alert fires on the change and resolves an hour later.
    failed = rules["OptunaStudyFailed"]["expr"]
    assert "unless on (namespace, name)" in failed and 'phase="Failed"} offset 1h' in failed
    # Study series keep the study's namespace label (honorLabels), which the alerts group by.
    endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True


def test_grafana_dashboard_parses_and_queries_only_exported_metrics() -> None:
    docs = render(
        "--set", "metrics.grafanaDashboard.enabled=true",
        "--set", "metrics.grafanaDashboard.namespace=monitoring",
    )  # fmt: skip
    config_map = one(docs, "ConfigMap", "-grafana-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["optuna-operator.json"])
    assert dashboard["uid"] == "optuna-operator"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 7
    exported = exported_series()
    for expr in exprs:
        assert balanced(expr), expr
        assert metric_names(expr) and metric_names(expr) <= exported, expr
        assert rated(expr) <= counter_series(), expr
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- who may do what


def test_user_roles_aggregate_into_admin_edit_and_view() -> None:
    docs = render()
    edit, view = one(docs, "ClusterRole", "-edit"), one(docs, "ClusterRole", "-view")
    assert labels(edit)["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert labels(edit)["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels(view)["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in labels(view)
    edit_verbs = {v for r in edit["rules"] if "tuningstudies" in r["resources"] for v in r["verbs"]}
    assert {"create", "update", "patch", "delete", "get", "list", "watch"} <= edit_verbs
    for rule in edit["rules"] + view["rules"]:
        # Users never write status: that is the operator's.
        if "tuningstudies/status" in rule["resources"]:
            assert set(rule["verbs"]) == {"get", "list", "watch"}
    assert {v for r in view["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    off = render("--set", "rbac.aggregateToDefaultRoles=false")
    assert not [d for d in off if name(d).endswith(("-edit", "-view", "-dashboard-proxy"))]


def test_viewers_may_get_only_the_namespace_dashboard_through_the_service_proxy() -> None:
    """`trials NAME` reads the dashboard through the API server's service proxy: view (and
    through it edit and admin) gets `get` on `services/proxy` for the namespace dashboard's
    Service and port as the request path names them (SERVICE:PORT, what RBAC sees; checked
    against the API server in tests/integration/test_trials_access.py), nothing else;
    deploy/ holds the same ClusterRole for clusters without the chart."""
    from optuna_operator import client
    from optuna_operator.children import manifests

    role = one(render(), "ClusterRole", "-dashboard-proxy")
    assert labels(role)["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert not [k for k in labels(role) if k.endswith(("aggregate-to-edit", "aggregate-to-admin"))]
    ctx = manifests.ChildContext(
        storage_secret="optuna-storage",
        storage_key="url",
        worker_image="worker",
        dashboard_image="dashboard",
        dashboard_url="postgresql://ro@db/optuna",
        dashboard_password_key="readonly-password",
    )
    service = manifests.namespace_dashboard("ns", ctx)[1]
    port_name = service["spec"]["ports"][0]["name"]
    dashboard = manifests.NAMESPACE_DASHBOARD
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["services/proxy"],
            "resourceNames": [
                f"{dashboard}:{client.DASHBOARD_PORT}",
                f"{dashboard}:{port_name}",
            ],
            "verbs": ["get"],
        }
    ]
    deployed = yaml.safe_load((ROOT / "deploy" / "dashboard-proxy-role.yaml").read_text())
    assert deployed["rules"] == role["rules"]
    assert labels(deployed)["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert name(deployed) == "optuna-operator-dashboard-proxy"


def test_admission_policy_is_the_generated_one() -> None:
    from optuna_operator.admission import POLICY_FILE, chart_policy_yaml, policy_manifest

    assert (CHART / "files" / POLICY_FILE).read_text() == chart_policy_yaml(), (
        "charts/optuna-operator/files/admission-policy.yaml is out of date: run `make crds`"
    )
    docs = render()
    policy = one(docs, "ValidatingAdmissionPolicy", "author-permissions")
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "author-permissions")
    assert policy["spec"] == policy_manifest()["spec"]
    # Bound to the served namespaces only (default values: `default`).
    served = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["default"]}
    assert binding["spec"] == {
        "policyName": name(policy),
        "validationActions": ["Deny"],
        "matchResources": {"namespaceSelector": {"matchExpressions": [served]}},
    }


def test_budget_advice_policy_warns_only() -> None:
    from optuna_operator.admission import ADVICE_FILE, advice_policy_manifest, policy_files

    assert (CHART / "files" / ADVICE_FILE).read_text() == policy_files(chart=True)[ADVICE_FILE]
    docs = render()
    policy = one(docs, "ValidatingAdmissionPolicy", "budget-advice")
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "budget-advice")
    assert policy["spec"] == advice_policy_manifest()["spec"]
    assert policy["spec"]["failurePolicy"] == "Ignore"
    assert binding["spec"]["policyName"] == name(policy)
    assert binding["spec"]["validationActions"] == ["Warn"]


def test_admission_policy_values_tune_it() -> None:
    docs = render(
        "--set",
        "admissionPolicy.exemptGroups={system:serviceaccounts:argocd}",
        "--set",
        "admissionPolicy.validationActions={Warn,Audit}",
    )
    conditions = one(docs, "ValidatingAdmissionPolicy", "author-permissions")["spec"][
        "matchConditions"
    ]
    assert conditions[-1] == {
        "name": "not-exempt",
        "expression": '!request.userInfo.groups.exists(g, g in ["system:serviceaccounts:argocd"])',
    }
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "author-permissions")
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]
    namespaced = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    selector = one(namespaced, "ValidatingAdmissionPolicyBinding", "author-permissions")["spec"][
        "matchResources"
    ]
    assert selector["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]
    off = render("--set", "admissionPolicy.enabled=false")
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]
