"""spec.workers.podTemplate: the strategic merge onto the worker pod, and what the operator
keeps for itself whatever the overlay says."""

from __future__ import annotations

from typing import Any

import pytest

from optuna_operator import overlay
from optuna_operator.overlay import OperatorFields, apply_pod_overlay, merge_by_key

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
