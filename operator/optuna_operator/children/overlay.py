"""A podTemplate overlay applied to a pod the operator builds: a strategic merge, pure, on
dicts. workers.podTemplate overlays the worker pod; dashboard.podTemplate a study's own
dashboard pod, and the chart's dashboard.podTemplate (--dashboard-pod-template) every
namespace's shared dashboard.

Lists merge by the keys `kubectl patch --type strategic` uses, but an entry replaces the base
entry of its key whole (kubectl would merge their fields, which for a volume could give it two
sources) or is appended; tolerations, which have no key, are appended. What the
operator owns is never taken from the overlay: its container's command, args, image and
security context (and for the dashboard its port and readiness probe), the environment
contract, its emptyDirs and their mounts, restartPolicy, the ServiceAccount and its token,
the pod's security context and the operator's labels. Every container the overlay brings
gets the restricted security floor.

`refusals` is the Python twin of the CRD's rules and the admission policy's volume check,
for an overlay no API server sees: the chart's, checked when the operator starts.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from optuna_operator.api.cel import QUALIFIED_KEY
from optuna_operator.api.constants import ALLOWED_VOLUME_KINDS
from optuna_operator.api.workers import (
    OPERATOR_LABELS,
    SECURITY_ANNOTATION_PREFIXES,
    OverlayTarget,
)

__all__ = [
    "DASHBOARD_PATCHABLE",
    "WORKER_PATCHABLE",
    "OperatorFields",
    "apply_pod_overlay",
    "merge_by_key",
    "refusals",
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
# The dashboard-container fields an overlay may patch: not its port or readiness probe
# (optuna-dashboard's, which the operator's Service and status rely on).
DASHBOARD_PATCHABLE = (
    "env",
    "envFrom",
    "volumeMounts",
    "resources",
    "lifecycle",
    "livenessProbe",
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
    """Names in the pod the overlay cannot take: the environment contract, the operator's
    volumes and mount paths, its labels; and the operator's container (which the overlay's
    entry of that name patches, only in `patchable` fields)."""

    def __init__(
        self,
        env: Iterable[str],
        volumes: Iterable[str],
        mount_paths: Iterable[str],
        labels: Iterable[str],
        container: str = WORKER,
        patchable: Iterable[str] = WORKER_PATCHABLE,
    ) -> None:
        self.env = frozenset(env)
        self.volumes = frozenset(volumes)
        self.mount_paths = frozenset(mount_paths)
        self.labels = frozenset(labels)
        self.container = container
        self.patchable = tuple(patchable)


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


def _patch_main(
    main: dict[str, Any], patch: dict[str, Any], owned: OperatorFields
) -> dict[str, Any]:
    """The operator's container with the overlay's entry of its name: only the fields
    `owned.patchable` names."""
    patched = copy.deepcopy(main)
    lists = {
        "env": ("name", owned.env),
        "volumeMounts": ("mountPath", owned.mount_paths),
        "ports": ("containerPort", frozenset()),
    }
    for field in owned.patchable:
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
    """The operator's container (patched by the overlay's entry of its name) first, then
    other overlay containers, each with the security floor."""
    merged = [copy.deepcopy(c) for c in base]
    for container in overlay:
        at = next((i for i, c in enumerate(merged) if c["name"] == container["name"]), None)
        if container["name"] == owned.container and at is not None:
            merged[at] = _patch_main(merged[at], container, owned)
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
    init = [
        secure_container(c) for c in patch.get("initContainers", []) if c["name"] != owned.container
    ]
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


# ------------------------------------------------------------------------------ refusals
_HOST_FIELDS = ("hostNetwork", "hostPID", "hostIPC")


def _container_refusals(where: str, container: dict[str, Any]) -> list[str]:
    """What the restricted Pod Security Standard refuses in one container of an overlay."""
    found = []
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        found.append(f"{where}: privileged containers are not allowed")
    if context.get("allowPrivilegeEscalation") or context.get("runAsNonRoot") is False:
        found.append(f"{where}: containers run as non-root without privilege escalation")
    if (context.get("capabilities") or {}).get("add"):
        found.append(f"{where}: capabilities cannot be added")
    if any(port.get("hostPort") for port in container.get("ports") or []):
        found.append(f"{where}: hostPort is not allowed")
    lifecycle = container.get("lifecycle") or {}
    handlers = [container.get(p) for p in PROBES] + [lifecycle.get(h) for h in HOOKS]
    if any(
        isinstance(h, dict) and isinstance(h.get(a), dict) and "host" in h[a]
        for h in handlers
        for a in ("httpGet", "tcpSocket")
    ):
        found.append(f"{where}: probes and lifecycle hooks cannot name a host")
    return found


def _spec_refusals(spec: dict[str, Any], t: OverlayTarget) -> list[str]:
    """The CRD's rules on podTemplate.spec and the admission policy's volume kinds."""
    path, main = f"{t.path}.spec", t.container
    found = []
    if any(spec.get(f) for f in _HOST_FIELDS) or spec.get("nodeName"):
        found.append(f"{path}: hostNetwork, hostPID, hostIPC and nodeName are not allowed")
    if spec.get("serviceAccountName"):
        found.append(f"{path}.serviceAccountName: {t.account_message}")
    if spec.get("dnsPolicy") == "None" and not spec.get("dnsConfig"):
        found.append(f"{path}: dnsPolicy None needs dnsConfig")
    volumes = spec.get("volumes") or []
    for volume in volumes:
        name = volume.get("name", "")
        kinds = [k for k in volume if k != "name" and k not in ALLOWED_VOLUME_KINDS]
        if kinds:
            found.append(
                f"{path}.volumes: volume {name} ({kinds[0]}) is not allowed; only the kinds "
                "of the restricted Pod Security Standard: " + ", ".join(ALLOWED_VOLUME_KINDS)
            )
        if name in t.volume_names:
            found.append(f"{path}.volumes: {name} is the operator's")
    names = {v.get("name") for v in volumes} | set(t.volume_names)
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            where = f"{path}.{field}[{container.get('name')}]"
            found += _container_refusals(where, container)
            missing = [
                str(m.get("name"))
                for m in container.get("volumeMounts") or []
                if m.get("name") not in names
            ]
            if missing:
                found.append(
                    f"{where}: every volumeMount must name a volume of {t.volumes_fields} "
                    f"(not {', '.join(missing)})"
                )
            if field == "containers":
                found += _main_refusals(where, container, t)
            elif container.get("name") == main or "image" not in container:
                found.append(
                    f"{where}: every init container needs an image and a name other than {main}"
                )
    return found


def _main_refusals(where: str, container: dict[str, Any], t: OverlayTarget) -> list[str]:
    """An entry of spec.containers: only a patch of the operator's container, without what
    the operator owns in it."""
    if container.get("name") != t.container:
        return [
            f"{t.path}.spec.containers: only `{t.container}` (a patch of the {t.container} "
            "container); put sidecars in initContainers with restartPolicy: Always"
        ]
    found = []
    owned = [f for f in t.owned_fields if f in container]
    if owned:
        found.append(f"{where}: {', '.join(owned)} are the operator's ({t.owned_hint})")
    env = [str(e.get("name")) for e in container.get("env") or [] if e.get("name") in t.env_names]
    if env:
        found.append(f"{where}.env: {', '.join(env)} are set by the operator")
    paths = [
        str(m.get("mountPath"))
        for m in container.get("volumeMounts") or []
        if m.get("mountPath") in t.mount_paths
    ]
    if paths:
        found.append(f"{where}.volumeMounts: {', '.join(paths)} are the operator's")
    return found


def refusals(overlay: dict[str, Any], t: OverlayTarget) -> list[str]:
    """Why an overlay (podTemplate, on the wire) would be refused at apply, each reason
    naming `t.path`: the CRD's CEL rules and the admission policy's volume kinds, for an
    overlay that no API server checks (the chart's, read at the operator's start)."""
    found = _spec_refusals(overlay.get("spec") or {}, t)
    metadata = overlay.get("metadata") or {}
    for field in ("labels", "annotations"):
        keys = list(metadata.get(field) or {})
        invalid = [k for k in keys if not re.fullmatch(QUALIFIED_KEY, k)]
        if invalid:
            found.append(
                f"{t.path}.metadata.{field}: {', '.join(invalid)}: keys must be valid "
                "label and annotation keys ([prefix/]name)"
            )
    labels = [
        k for k in metadata.get("labels") or {} if k in OPERATOR_LABELS or k.startswith(_PREFIX)
    ]
    if labels:
        found.append(f"{t.path}.metadata.labels: {', '.join(labels)} are the operator's")
    annotations = [
        k for k in metadata.get("annotations") or {} if k.startswith(SECURITY_ANNOTATION_PREFIXES)
    ]
    if annotations:
        found.append(
            f"{t.path}.metadata.annotations: AppArmor and seccomp annotations cannot be set"
        )
    return found
