"""spec.workers.podTemplate: the strategic merge onto the worker pod, and what the operator
keeps for itself whatever the overlay says; dashboard.podTemplate: the same rules with the
dashboard's messages, and their Python twin for the chart's overlay."""

from __future__ import annotations

from typing import Any

import pytest

from optuna_operator import crd
from optuna_operator.api.workers import DASHBOARD_OVERLAY
from optuna_operator.children import overlay
from optuna_operator.children.overlay import OperatorFields, apply_pod_overlay, merge_by_key

OWNED = OperatorFields(
    env=("OPTUNA_STORAGE_URL",),
    volumes=("optuna-tmp",),
    mount_paths=("/tmp",),
    labels=("app.kubernetes.io/name",),
)
FLOOR = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
WORKER_SC = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}


def base() -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "optuna-worker"}, "annotations": {}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True},
            "containers": [
                {
                    "name": "worker",
                    "image": "worker:1",
                    "command": ["optuna-operator", "worker"],
                    "env": [
                        {"name": "OPTUNA_STORAGE_URL", "valueFrom": {"secretKeyRef": {}}},
                        {"name": "HOME", "value": "/tmp/home"},
                    ],
                    "securityContext": WORKER_SC,
                    "volumeMounts": [{"name": "optuna-tmp", "mountPath": "/tmp"}],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }
            ],
            "volumes": [{"name": "optuna-tmp", "emptyDir": {}}, {"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
        },
    }


def worker(template: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = template["spec"]["containers"][0]
    return first


SIDECAR = {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}

# (case, overlay, path into the result, expected value there)
CASES: list[tuple[str, dict[str, Any], tuple[Any, ...], Any]] = [
    (
        "an init container gets the floor and keeps its own user",
        {"spec": {"initContainers": [{**SIDECAR, "securityContext": {"runAsUser": 1000}}]}},
        ("spec", "initContainers", 0, "securityContext"),
        {"runAsUser": 1000, **FLOOR},
    ),
    (
        "privileged, added capabilities and seccomp Unconfined are replaced by the floor",
        {
            "spec": {
                "initContainers": [
                    {
                        **SIDECAR,
                        "securityContext": {
                            "privileged": True,
                            "capabilities": {"add": ["SYS_ADMIN"]},
                            "seccompProfile": {"type": "Unconfined"},
                            "allowPrivilegeEscalation": True,
                        },
                    }
                ]
            }
        },
        ("spec", "initContainers", 0, "securityContext"),
        FLOOR,
    ),
    (
        "hostPort is dropped from an init container",
        {
            "spec": {
                "initContainers": [{**SIDECAR, "ports": [{"containerPort": 80, "hostPort": 80}]}]
            }
        },
        ("spec", "initContainers", 0, "ports"),
        [{"containerPort": 80}],
    ),
    (
        "the worker's command, image and security context stay the operator's",
        {
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "image": "evil:1",
                        "command": ["sh"],
                        "args": ["-c", "id"],
                        "securityContext": {"privileged": True},
                    }
                ]
            }
        },
        ("spec", "containers", 0),
        worker(base()),
    ),
    (
        "worker env merges by name; the contract's names stay the operator's",
        {
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "env": [
                            {"name": "OPTUNA_STORAGE_URL", "value": "sqlite://"},
                            {"name": "HOME", "value": "/data"},
                            {"name": "EXTRA", "value": "1"},
                        ],
                    }
                ]
            }
        },
        ("spec", "containers", 0, "env"),
        [
            {"name": "OPTUNA_STORAGE_URL", "valueFrom": {"secretKeyRef": {}}},
            {"name": "HOME", "value": "/data"},
            {"name": "EXTRA", "value": "1"},
        ],
    ),
    (
        "worker mounts merge by path; the operator's paths stay",
        {
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/tmp"},
                            {"name": "data", "mountPath": "/data"},
                        ],
                    }
                ]
            }
        },
        ("spec", "containers", 0, "volumeMounts"),
        [{"name": "optuna-tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": "/data"}],
    ),
    (
        "worker resources merge per resource",
        {
            "spec": {
                "containers": [
                    {"name": "worker", "resources": {"requests": {"ephemeral-storage": "10Gi"}}}
                ]
            }
        },
        ("spec", "containers", 0, "resources"),
        {"limits": {"nvidia.com/gpu": 1}, "requests": {"ephemeral-storage": "10Gi"}},
    ),
    (
        "worker probes and envFrom are added; its hostPort is not",
        {
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "envFrom": [{"configMapRef": {"name": "c"}}],
                        "ports": [{"containerPort": 9090, "hostPort": 9090}],
                        "readinessProbe": {"exec": {"command": ["true"]}},
                    }
                ]
            }
        },
        ("spec", "containers", 0),
        {
            **worker(base()),
            "envFrom": [{"configMapRef": {"name": "c"}}],
            "ports": [{"containerPort": 9090}],
            "readinessProbe": {"exec": {"command": ["true"]}},
        },
    ),
    (
        "volumes merge by name; the operator's volume stays",
        {
            "spec": {
                "volumes": [
                    {"name": "optuna-tmp", "hostPath": {"path": "/"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
                    {"name": "cache", "emptyDir": {}},
                ]
            }
        },
        ("spec", "volumes"),
        [
            {"name": "optuna-tmp", "emptyDir": {}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
            {"name": "cache", "emptyDir": {}},
        ],
    ),
    (
        "tolerations are appended once",
        {
            "spec": {
                "tolerations": [
                    {"key": "gpu", "operator": "Exists"},
                    {"key": "spot", "operator": "Exists"},
                ]
            }
        },
        ("spec", "tolerations"),
        [{"key": "gpu", "operator": "Exists"}, {"key": "spot", "operator": "Exists"}],
    ),
    (
        "topology spread, gates, DNS and runtime class are set",
        {
            "spec": {
                "topologySpreadConstraints": [
                    {"topologyKey": "zone", "maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}
                ],
                "schedulingGates": [{"name": "example.com/quota"}],
                "dnsPolicy": "None",
                "dnsConfig": {"nameservers": ["10.0.0.10"]},
                "runtimeClassName": "gvisor",
            }
        },
        ("spec", "schedulingGates"),
        [{"name": "example.com/quota"}],
    ),
    (
        "restartPolicy, the account, its token, host namespaces and any unlisted field stay",
        {
            "spec": {
                "restartPolicy": "Always",
                "serviceAccountName": "admin",
                "automountServiceAccountToken": True,
                "hostNetwork": True,
                "hostPID": True,
                "nodeName": "n1",
                "securityContext": {"runAsUser": 0},
                "shareProcessNamespace": True,
                "hostUsers": True,
                "priority": 1000000000,
            }
        },
        ("spec",),
        base()["spec"],
    ),
    (
        "labels are added; the operator's own win and its prefix is refused",
        {
            "metadata": {
                "labels": {
                    "team": "a",
                    "app.kubernetes.io/name": "x",
                    "optuna-operator.io/study": "other",
                },
                "annotations": {"a": "1"},
            }
        },
        ("metadata",),
        {
            "labels": {"team": "a", "app.kubernetes.io/name": "optuna-worker"},
            "annotations": {"a": "1"},
        },
    ),
    (
        "probes and hooks of a sidecar reach no other host",
        {
            "spec": {
                "initContainers": [
                    {
                        **SIDECAR,
                        "startupProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}},
                        "lifecycle": {"preStop": {"tcpSocket": {"host": "db", "port": 5432}}},
                    }
                ]
            }
        },
        ("spec", "initContainers", 0),
        {
            **SIDECAR,
            "securityContext": FLOOR,
            "startupProbe": {"httpGet": {"port": 80}},
            "lifecycle": {"preStop": {"tcpSocket": {"port": 5432}}},
        },
    ),
    (
        "probes of the worker reach no other host",
        {
            "spec": {
                "containers": [
                    {"name": "worker", "livenessProbe": {"httpGet": {"host": "x", "port": 1}}}
                ]
            }
        },
        ("spec", "containers", 0, "livenessProbe"),
        {"httpGet": {"port": 1}},
    ),
    (
        "AppArmor and seccomp annotations are dropped",
        {
            "metadata": {
                "annotations": {
                    "container.apparmor.security.beta.kubernetes.io/worker": "unconfined",
                    "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
                    "b": "2",
                }
            }
        },
        ("metadata", "annotations"),
        {"b": "2"},
    ),
    (
        "no init container may be named worker",
        {"spec": {"initContainers": [{"name": "worker", "image": "x"}]}},
        ("spec",),
        base()["spec"],
    ),
]


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@pytest.mark.parametrize(("case", "patch", "path", "expected"), CASES, ids=[c[0] for c in CASES])
def test_overlay_merges_and_the_operator_keeps_its_fields(
    case: str, patch: dict[str, Any], path: tuple[Any, ...], expected: Any
) -> None:
    template = base()
    merged = apply_pod_overlay(template, patch, OWNED)
    assert _at(merged, path) == expected, case
    assert template == base(), "the base template was changed in place"


def test_no_overlay_is_the_template_itself() -> None:
    template = base()
    assert apply_pod_overlay(template, None, OWNED) is template
    assert apply_pod_overlay(template, {}, OWNED) is template


def test_every_container_meets_the_floor_whatever_the_overlay_says() -> None:
    hostile = {"privileged": True, "runAsNonRoot": False, "capabilities": {"add": ["ALL"]}}
    patch = {
        "spec": {
            "initContainers": [{**SIDECAR, "securityContext": hostile}],
            "containers": [{"name": "worker", "securityContext": hostile}, {"name": "x"}],
        }
    }
    spec = apply_pod_overlay(base(), patch, OWNED)["spec"]
    for container in spec["initContainers"] + spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert "privileged" not in context
        assert context.get("capabilities", {"drop": ["ALL"]}) == {"drop": ["ALL"]}
    assert spec["containers"][1]["securityContext"] == FLOOR


@pytest.mark.parametrize(
    ("base_list", "patch", "key", "expected"),
    [
        ([{"n": 1, "v": "a"}], [{"n": 1, "v": "b"}], "n", [{"n": 1, "v": "b"}]),
        ([{"n": 1}], [{"n": 2}], "n", [{"n": 1}, {"n": 2}]),
        (
            [{"n": 1, "v": "a"}],
            [{"n": 1, "v": "b"}],
            None,
            [{"n": 1, "v": "a"}, {"n": 1, "v": "b"}],
        ),
        ([{"n": 1}], [{"n": 1}], None, [{"n": 1}]),
        ([], [{"n": 1}, {"n": 1, "v": "x"}], "n", [{"n": 1, "v": "x"}]),
    ],
)
def test_merge_by_key(
    base_list: list[dict[str, Any]],
    patch: list[dict[str, Any]],
    key: str | None,
    expected: list[dict[str, Any]],
) -> None:
    assert merge_by_key(base_list, patch, key) == expected


def test_the_worker_patch_takes_only_its_listed_fields() -> None:
    assert set(overlay.WORKER_PATCHABLE).isdisjoint({"image", "command", "args", "securityContext"})


# ----------------------------------------------------------------- dashboard.podTemplate
def _rules_under(node: Any) -> list[dict[str, str]]:
    """Every x-kubernetes-validations entry of a schema subtree."""
    if isinstance(node, list):
        return [rule for item in node for rule in _rules_under(item)]
    if not isinstance(node, dict):
        return []
    found = list(node.get("x-kubernetes-validations", []))
    for key, value in node.items():
        if key != "x-kubernetes-validations":
            found += _rules_under(value)
    return found


def _overlay_schema(section: str) -> dict[str, Any]:
    spec = crd.openapi_schema()["properties"]["spec"]["properties"]
    schema: dict[str, Any] = spec[section]["properties"]["podTemplate"]
    return schema


def test_the_dashboard_overlay_has_the_workers_rules_with_its_own_messages() -> None:
    # The overlays' own rules (Resources' rules, shared by every container field, name none).
    workers = [r for r in _rules_under(_overlay_schema("workers")) if "podTemplate" in r["message"]]
    dashboard = [
        r for r in _rules_under(_overlay_schema("dashboard")) if "podTemplate" in r["message"]
    ]
    assert all(r["message"].startswith("workers.podTemplate") for r in workers)
    assert all(r["message"].startswith("dashboard.podTemplate") for r in dashboard)
    assert not [r for r in dashboard if "workers." in r["message"] or "worker'" in r["rule"]]
    # The same refusals: the worker's emptyDir mount paths have no dashboard twin, and the
    # dashboard's mount rule is on its overlay (the workers' on spec.workers, which also
    # reads workers.volumes).
    assert len(dashboard) == len(workers)
    messages = " ".join(r["message"] for r in dashboard)
    for refused in (
        "privileged containers are not allowed",
        "capabilities cannot be added",
        "non-root without privilege escalation",
        "hostNetwork, hostPID, hostIPC and nodeName are not allowed",
        "hostPort is not allowed",
        "probes and lifecycle hooks cannot name a host",
        "OPTUNA_DASHBOARD_URL, PGPASSWORD are set by the operator",
        "ports, readinessProbe are the operator's",
        "every volumeMount must name a volume of dashboard.podTemplate.spec.volumes",
        "AppArmor and seccomp annotations cannot be set",
    ):
        assert refused in messages, refused


DASH_SIDECAR = {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (
            {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
            "dashboard.podTemplate.spec.volumes: volume root (hostPath) is not allowed",
        ),
        (
            {"initContainers": [{**DASH_SIDECAR, "securityContext": {"privileged": True}}]},
            "dashboard.podTemplate.spec.initContainers[proxy]: privileged containers",
        ),
        (
            {"containers": [{"name": "dashboard", "securityContext": {"privileged": True}}]},
            "dashboard.podTemplate.spec.containers[dashboard]: privileged containers",
        ),
        ({"hostNetwork": True}, "dashboard.podTemplate.spec: hostNetwork, hostPID"),
        ({"hostPID": True}, "dashboard.podTemplate.spec: hostNetwork, hostPID"),
        ({"nodeName": "n1"}, "dashboard.podTemplate.spec: hostNetwork, hostPID"),
        ({"serviceAccountName": "admin"}, "dashboard.podTemplate.spec.serviceAccountName"),
        (
            {
                "initContainers": [
                    {**DASH_SIDECAR, "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}
                ]
            },
            "capabilities cannot be added",
        ),
        (
            {"initContainers": [{**DASH_SIDECAR, "ports": [{"containerPort": 1, "hostPort": 1}]}]},
            "hostPort is not allowed",
        ),
        (
            {"initContainers": [{**DASH_SIDECAR, "startupProbe": {"httpGet": {"host": "h"}}}]},
            "probes and lifecycle hooks cannot name a host",
        ),
        ({"containers": [{"name": "proxy", "image": "p:1"}]}, "only `dashboard`"),
        (
            {"containers": [{"name": "dashboard", "command": ["sh"], "ports": []}]},
            "dashboard.podTemplate.spec.containers[dashboard]: command, ports are the operator's",
        ),
        (
            {"containers": [{"name": "dashboard", "env": [{"name": "PGPASSWORD", "value": "x"}]}]},
            "PGPASSWORD are set by the operator",
        ),
        (
            {"initContainers": [{"name": "dashboard", "image": "x:1"}]},
            "a name other than dashboard",
        ),
        ({"initContainers": [{"name": "init"}]}, "needs an image"),
        (
            {
                "initContainers": [
                    {**DASH_SIDECAR, "volumeMounts": [{"name": "x", "mountPath": "/x"}]}
                ]
            },
            "every volumeMount must name a volume of dashboard.podTemplate.spec.volumes",
        ),
        ({"dnsPolicy": "None"}, "dnsPolicy None needs dnsConfig"),
    ],
)
def test_a_dashboard_overlay_the_api_would_refuse_is_refused_naming_it(
    spec: dict[str, Any], reason: str
) -> None:
    found = overlay.refusals({"spec": spec}, DASHBOARD_OVERLAY)
    assert any(reason in r for r in found), found
    assert all(r.startswith("dashboard.podTemplate") for r in found), found


def test_a_dashboard_overlay_within_the_rules_is_not_refused() -> None:
    allowed = {
        "metadata": {"labels": {"team": "a"}, "annotations": {"example.com/x": "1"}},
        "spec": {
            "initContainers": [
                {**DASH_SIDECAR, "volumeMounts": [{"name": "certs", "mountPath": "/certs"}]}
            ],
            "containers": [{"name": "dashboard", "resources": {"limits": {"memory": "1Gi"}}}],
            "volumes": [{"name": "certs", "secret": {"secretName": "c"}}],
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["10.0.0.10"]},
        },
    }
    assert overlay.refusals(allowed, DASHBOARD_OVERLAY) == []
    metadata = {
        "labels": {"optuna-operator.io/namespace-dashboard": "x"},
        "annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"},
    }
    assert len(overlay.refusals({"metadata": metadata}, DASHBOARD_OVERLAY)) == 2
    invalid = {"labels": {"bad key": "x"}}
    (reason,) = overlay.refusals({"metadata": invalid}, DASHBOARD_OVERLAY)
    assert reason.startswith("dashboard.podTemplate.metadata.labels: bad key: keys must be")
