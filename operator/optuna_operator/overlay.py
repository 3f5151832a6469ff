"""spec.workers.podTemplate applied to the worker pod: a strategic merge, pure, on dicts.

Lists merge by the keys `kubectl patch --type strategic` uses, but an entry replaces the base
entry of its key whole (kubectl would merge their fields, which for a volume could give it two
sources) or is appended; tolerations, which have no key, are appended. What the
operator owns is never taken from the overlay: the worker's command, args, image and
security context, the environment contract, its emptyDirs and their mounts, restartPolicy,
the ServiceAccount and its token, the pod's security context and the operator's labels. Every
container the overlay brings gets the restricted security floor.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from optuna_operator.api.workers import SECURITY_ANNOTATION_PREFIXES

__all__ = [
    "OperatorFields",
    "apply_pod_overlay",
    "merge_by_key",
    "secure_container",
]

WORKER = "worker"
# Label keys under the operator's prefix are its own.
_PREFIX = "optuna-operator.io/"
# The worker-container fields an overlay may patch.
WORKER_PATCHABLE = (
    "env",
    "envFrom",
    "volumeMounts",
    "resources",
    "lifecycle",
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
)
# Key of each pod spec list an overlay may extend (None: appended when not already there).
LIST_KEYS: dict[str, str | None] = {
    "volumes": "name",
    "tolerations": None,
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
    "schedulingGates": "name",
    "readinessGates": "conditionType",
}
# Pod spec fields an overlay may set; every other one (restartPolicy, securityContext, the
# ServiceAccount and its token, host namespaces, nodeName...) stays the operator's, whatever
# the API let through.
POD_FIELDS = frozenset({*LIST_KEYS, "dnsPolicy", "dnsConfig", "runtimeClassName"})
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
HOOKS = ("postStart", "preStop")
# Container security context: what a container may say for itself; the floor wins.
OWN_SECURITY_FIELDS = ("runAsUser", "runAsGroup", "readOnlyRootFilesystem")
SECURITY_FLOOR: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


class OperatorFields:
    """Names in the worker pod the overlay cannot take: the environment contract, the
    operator's volumes and mount paths, its labels."""

    def __init__(
        self,
        env: Iterable[str],
        volumes: Iterable[str],
        mount_paths: Iterable[str],
        labels: Iterable[str],
    ) -> None:
        self.env = frozenset(env)
        self.volumes = frozenset(volumes)
        self.mount_paths = frozenset(mount_paths)
        self.labels = frozenset(labels)


def merge_by_key(
    base: list[dict[str, Any]],
    patch: list[dict[str, Any]],
    key: str | None,
    protected: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Base entries in order, the last of each key replaced by the patch entry of that key
    (unless the key is protected), then the patch's new entries; without a key, patch entries not
    already in base are appended."""
    merged = [copy.deepcopy(entry) for entry in base]
    for entry in patch:
        if key is None:
            if entry not in merged:
                merged.append(copy.deepcopy(entry))
            continue
        name = entry.get(key)
        if name in protected:
            continue
        # The last of duplicates (workers.env after the operator's HOME): kubelet takes it.
        matches = [i for i, old in enumerate(merged) if old.get(key) == name]
        if not matches:
            merged.append(copy.deepcopy(entry))
        else:
            merged[matches[-1]] = copy.deepcopy(entry)
    return merged


def _unhosted(container: dict[str, Any]) -> dict[str, Any]:
    """No hostPort, and no probe or lifecycle hook that has the kubelet call another host
    (the API refuses both; dropped here too)."""
    if "ports" in container:
        container["ports"] = [
            {k: v for k, v in port.items() if k != "hostPort"} for port in container["ports"]
        ]
    lifecycle = container.get("lifecycle") or {}
    handlers = [container.get(p) for p in PROBES] + [lifecycle.get(h) for h in HOOKS]
    for handler in handlers:
        for action in ("httpGet", "tcpSocket"):
            if isinstance(handler, dict) and isinstance(handler.get(action), dict):
                handler[action].pop("host", None)
    return container


def secure_container(container: dict[str, Any]) -> dict[str, Any]:
    """An overlay container with the restricted floor: its own user, group and read-only
    root filesystem kept, everything else of its security context replaced, no host
    reached through it."""
    secured = copy.deepcopy(container)
    own = secured.get("securityContext") or {}
    secured["securityContext"] = {
        **{k: own[k] for k in OWN_SECURITY_FIELDS if k in own},
        **copy.deepcopy(SECURITY_FLOOR),
    }
    return _unhosted(secured)


def _patch_worker(
    worker: dict[str, Any], patch: dict[str, Any], owned: OperatorFields
) -> dict[str, Any]:
    """The worker container with the overlay's `worker` entry: only WORKER_PATCHABLE."""
    patched = copy.deepcopy(worker)
    lists = {
        "env": ("name", owned.env),
        "volumeMounts": ("mountPath", owned.mount_paths),
        "ports": ("containerPort", frozenset()),
    }
    for field in WORKER_PATCHABLE:
        if field not in patch:
            continue
        value = copy.deepcopy(patch[field])
        if field in lists:
            key, protected = lists[field]
            value = merge_by_key(patched.get(field, []), value, key, protected)
        elif field == "envFrom":
            value = [*patched.get(field, []), *value]
        elif field == "resources":
            old = patched.get(field, {})
            value = {
                part: {**old.get(part, {}), **value.get(part, {})}
                for part in ("limits", "requests")
                if old.get(part) or value.get(part)
            }
        patched[field] = value
    return _unhosted(patched)


def _containers(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]], owned: OperatorFields
) -> list[dict[str, Any]]:
    """The worker (patched by the overlay's `worker`) first, then other overlay containers,
    each with the security floor."""
    merged = [copy.deepcopy(c) for c in base]
    for container in overlay:
        at = next((i for i, c in enumerate(merged) if c["name"] == container["name"]), None)
        if container["name"] == WORKER and at is not None:
            merged[at] = _patch_worker(merged[at], container, owned)
        elif at is None:
            merged.append(secure_container(container))
    return merged


def _metadata(
    base: dict[str, Any], overlay: dict[str, Any], owned: OperatorFields
) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for field in ("labels", "annotations"):
        extra = {
            k: v
            for k, v in (overlay.get(field) or {}).items()
            if (field == "annotations" and not k.startswith(SECURITY_ANNOTATION_PREFIXES))
            or (field == "labels" and k not in owned.labels and not k.startswith(_PREFIX))
        }
        if extra:
            merged[field] = {**extra, **base.get(field, {})}
    return merged


def apply_pod_overlay(
    template: dict[str, Any], overlay: dict[str, Any] | None, owned: OperatorFields
) -> dict[str, Any]:
    """The pod template (`metadata`, `spec`) with the overlay (podTemplate, on the wire)
    merged in; the template itself when there is no overlay. The base's labels and
    annotations win over the overlay's."""
    if not overlay:
        return template
    spec = copy.deepcopy(template["spec"])
    patch = overlay.get("spec") or {}
    spec["containers"] = _containers(spec["containers"], patch.get("containers", []), owned)
    init = [secure_container(c) for c in patch.get("initContainers", []) if c["name"] != WORKER]
    if init:
        spec["initContainers"] = merge_by_key(spec.get("initContainers", []), init, "name")
    for field, value in patch.items():
        if field not in POD_FIELDS:
            continue
        if field in LIST_KEYS:
            protected = owned.volumes if field == "volumes" else frozenset()
            spec[field] = merge_by_key(spec.get(field, []), value, LIST_KEYS[field], protected)
        else:
            spec[field] = copy.deepcopy(value)
    metadata = _metadata(template.get("metadata", {}), overlay.get("metadata") or {}, owned)
    return {**template, "metadata": metadata, "spec": spec}
