"""spec.workers: the worker Job's pod template fields, the core/v1 objects passed through to
it (env, volumes, mounts, tolerations) and the CEL rules that stop a study from taking or
overriding what the operator gives every worker pod.

The podTemplate overlay's models serve two pods: the worker pod (workers.podTemplate) and,
as subclasses with the dashboard's rules and messages, a dashboard pod
(dashboard.podTemplate); an `OverlayTarget` says what differs between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema

from optuna_operator.api.cel import QUALIFIED_KEY, cel, cel_list, rules
from optuna_operator.api.constants import (
    DASHBOARD_ENV_NAMES,
    WORKER_ENV_NAMES,
    WORKER_MOUNT_PATHS,
    WORKER_VOLUME_NAMES,
)
from optuna_operator.api.types import (
    FreeObject,
    ImageRef,
    LabelValue,
    Model,
    ObjectName,
    Quantity,
    Resources,
)

__all__ = [
    "DASHBOARD_OVERLAY",
    "OPERATOR_LABELS",
    "SECURITY_ANNOTATION_PREFIXES",
    "WORKERS_OVERLAY",
    "Capabilities",
    "DashboardCapabilities",
    "DashboardOverlayContainer",
    "DashboardPodSpecOverlay",
    "DashboardPodTemplate",
    "DashboardPodTemplateMetadata",
    "DashboardSecurityContext",
    "EnvVarObject",
    "HostAlias",
    "OverlayContainer",
    "OverlaySecurityContext",
    "OverlayTarget",
    "PodSpecOverlay",
    "PodTemplateMetadata",
    "PodTemplateOverlay",
    "ReadinessGate",
    "SchedulingGate",
    "TolerationObject",
    "VolumeMountObject",
    "VolumeObject",
    "WorkersSpec",
    "overlay_mounts",
]


def _open_object(kind: str, **properties: dict[str, Any]) -> Any:
    """A core/v1 object passed through as a dict, with the fields CEL rules read declared
    (a rule cannot name a field of an object that declares none)."""
    return WithJsonSchema(
        {
            "type": "object",
            "description": f"A core/v1 {kind}; every field of it is passed on.",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": properties,
        }
    )


_STRING: dict[str, Any] = {"type": "string", "maxLength": 253}
_NAME: dict[str, Any] = {"type": "string", "maxLength": 63}
_OPEN: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
EnvVarObject = Annotated[
    dict[str, Any],
    _open_object(
        "EnvVar", name=_STRING, value={"type": "string", "maxLength": 32768}, valueFrom=_OPEN
    ),
]
VolumeObject = Annotated[dict[str, Any], _open_object("Volume", name=_NAME)]
VolumeMountObject = Annotated[
    dict[str, Any], _open_object("VolumeMount", name=_NAME, mountPath=_STRING)
]
TolerationObject = Annotated[
    dict[str, Any],
    _open_object(
        "Toleration",
        key=_STRING,
        operator=_STRING,
        value=_STRING,
        effect=_STRING,
        tolerationSeconds={"type": "integer", "format": "int64"},
    ),
]


# Annotations that would loosen a pod's confinement (kubelet still reads AppArmor's).
SECURITY_ANNOTATION_PREFIXES = (
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
)
# Labels the operator sets on worker pods; the same key in podLabels would be dropped.
OPERATOR_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


def _preserve_unknown(*entries: dict[str, str]) -> Any:
    """json_schema_extra of a core/v1 object typed in part: the declared fields are checked
    (and pruned of what they do not declare), every other field of it is passed on."""

    def extra(schema: dict[str, Any]) -> None:
        schema.pop("additionalProperties", None)
        schema["x-kubernetes-preserve-unknown-fields"] = True
        if entries:
            schema["x-kubernetes-validations"] = list(entries)

    return extra


def _annotation_keys(field: str, path: str) -> dict[str, str]:
    """The rule that an annotation map sets valid keys and none that loosens confinement
    (the kubelet still honours an AppArmor `unconfined` annotation)."""
    return cel(
        f"!has(self.{field}) || self.{field}.all(k, k.matches('{QUALIFIED_KEY}') && "
        + " && ".join(f"!k.startsWith('{p}')" for p in SECURITY_ANNOTATION_PREFIXES)
        + ")",
        f"{path}: keys must be valid annotation keys ([prefix/]name), and AppArmor and "
        "seccomp annotations cannot be set (every pod meets the restricted standard)",
    )


def _listed(max_items: int, description: str) -> Any:
    """An optional list field of the overlay, bounded for the cost of CEL rules over it."""
    return Field(None, max_length=max_items, description=description)


def _label_keys(field: str, path: str) -> dict[str, str]:
    """The rule that a label map sets valid keys and none of the operator's own labels."""
    return cel(
        f"!has(self.{field}) || self.{field}.all(k, k.matches('{QUALIFIED_KEY}') "
        f"&& !(k in {cel_list(OPERATOR_LABELS)}) && !k.startsWith('optuna-operator.io/'))",
        f"{path}: keys must be valid label keys, and the operator's own labels "
        "(app.kubernetes.io/name, instance, component, part-of, managed-by, "
        "optuna-operator.io/*) cannot be set",
    )


_SHORT = Annotated[str, Field(max_length=253)]
_CAPABILITY = Annotated[str, Field(max_length=64)]
# What an overlay may not take from the operator's container; declared so that a rule can
# refuse them by name rather than prune them silently.
_OPERATOR_CONTAINER_FIELDS = ("image", "command", "args", "securityContext", "restartPolicy")


@dataclass(frozen=True)
class OverlayTarget:
    """The pod a podTemplate overlays, as its rules and their messages need it: the path a
    user writes, the operator's container that the overlay's entry of the same name patches,
    and the names and fields of it that stay the operator's."""

    path: str  # workers.podTemplate
    container: str  # the operator's container: worker
    env_names: tuple[str, ...]
    volume_names: tuple[str, ...]
    mount_paths: tuple[str, ...]
    # Fields of the operator's container an overlay may not name, and where to set them.
    owned_fields: tuple[str, ...]
    owned_hint: str
    account_message: str  # why spec.serviceAccountName is refused
    sidecar_reason: str  # why other entries of spec.containers are refused
    volumes_fields: str  # where the pod's volumes come from, for the mount rule's message


WORKERS_OVERLAY = OverlayTarget(
    path="workers.podTemplate",
    container="worker",
    env_names=WORKER_ENV_NAMES,
    volume_names=WORKER_VOLUME_NAMES,
    mount_paths=WORKER_MOUNT_PATHS,
    owned_fields=_OPERATOR_CONTAINER_FIELDS,
    owned_hint="use workers.image, workers.runAsUser",
    account_message="set workers.serviceAccountName (its author needs the impersonate verb "
    "on the account)",
    sidecar_reason=", so the pod ends when the worker does",
    volumes_fields="workers.podTemplate.spec.volumes or workers.volumes",
)
DASHBOARD_OVERLAY = OverlayTarget(
    path="dashboard.podTemplate",
    container="dashboard",
    env_names=DASHBOARD_ENV_NAMES,
    volume_names=(),
    mount_paths=(),
    owned_fields=(*_OPERATOR_CONTAINER_FIELDS, "ports", "readinessProbe"),
    owned_hint="use dashboard.image; the port and readiness probe are optuna-dashboard's",
    account_message="a dashboard runs without a ServiceAccount token and needs no account",
    sidecar_reason="",
    volumes_fields="dashboard.podTemplate.spec.volumes",
)


def _capability_rules(t: OverlayTarget) -> dict[str, Any]:
    return rules(
        cel(
            "!has(self.add) || size(self.add) == 0",
            f"{t.path}: capabilities cannot be added (the restricted Pod Security Standard; "
            "the operator drops ALL from every container)",
        )
    )


class Capabilities(Model):
    """Linux capabilities: the operator drops ALL from every container; none may be added."""

    model_config = ConfigDict(json_schema_extra=_capability_rules(WORKERS_OVERLAY))
    add: list[_CAPABILITY] | None = Field(None, max_length=16, description="Refused.")
    drop: list[_CAPABILITY] | None = Field(
        None, max_length=64, description="Ignored: the operator drops ALL."
    )


def _security_rules(t: OverlayTarget) -> dict[str, Any]:
    return rules(
        cel(
            "!has(self.privileged) || !self.privileged",
            f"{t.path}: privileged containers are not allowed",
        ),
        cel(
            "(!has(self.allowPrivilegeEscalation) || !self.allowPrivilegeEscalation) "
            "&& (!has(self.runAsNonRoot) || self.runAsNonRoot)",
            f"{t.path}: containers run as non-root without privilege escalation "
            "(the restricted Pod Security Standard)",
        ),
    )


class OverlaySecurityContext(Model):
    """What a container of workers.podTemplate may say about its security: its user, group
    and a read-only root filesystem. The operator sets the restricted floor on every
    container (runAsNonRoot, allowPrivilegeEscalation false, capabilities drop ALL, seccomp
    RuntimeDefault); other fields are dropped, privileged and added capabilities refused."""

    model_config = ConfigDict(json_schema_extra=_security_rules(WORKERS_OVERLAY))
    run_as_user: int | None = Field(None, ge=1, le=2147483647, description="A non-root uid.")
    run_as_group: int | None = Field(None, ge=0, le=2147483647, description="A gid.")
    run_as_non_root: bool | None = Field(None, description="Only true.")
    read_only_root_filesystem: bool | None = Field(None, description="core/v1 field.")
    allow_privilege_escalation: bool | None = Field(None, description="Only false.")
    privileged: bool | None = Field(None, description="Refused when true.")
    capabilities: Capabilities | None = Field(None, description="None may be added.")


ContainerPortObject = Annotated[
    dict[str, Any],
    _open_object(
        "ContainerPort",
        name=_NAME,
        containerPort={"type": "integer", "format": "int32"},
        hostPort={"type": "integer", "format": "int32"},
    ),
]

# Probes and lifecycle hooks: `host` would have the kubelet call any address (the baseline
# Pod Security Standard forbids it from Kubernetes 1.34); declared so a rule can refuse it.
_HOSTED = {
    "type": "object",
    "description": "core/v1 HTTPGetAction or TCPSocketAction, without host.",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {"host": _STRING},
}
_HANDLER: dict[str, Any] = {
    "type": "object",
    "description": "A core/v1 LifecycleHandler.",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {"httpGet": _HOSTED, "tcpSocket": _HOSTED},
}
HandlerObject = Annotated[dict[str, Any], _open_object("Probe", httpGet=_HOSTED, tcpSocket=_HOSTED)]
LifecycleObject = Annotated[
    dict[str, Any], _open_object("Lifecycle", postStart=_HANDLER, preStop=_HANDLER)
]
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def _no_host(handler: str) -> str:
    return (
        f"(!has({handler}.httpGet) || !has({handler}.httpGet.host)) && "
        f"(!has({handler}.tcpSocket) || !has({handler}.tcpSocket.host))"
    )


def _container_rules(t: OverlayTarget) -> Any:
    no_probe_host = cel(
        " && ".join(f"(!has(self.{p}) || {_no_host(f'self.{p}')})" for p in _PROBES)
        + " && (!has(self.lifecycle) || "
        + " && ".join(
            f"(!has(self.lifecycle.{h}) || {_no_host(f'self.lifecycle.{h}')})"
            for h in ("postStart", "preStop")
        )
        + ")",
        f"{t.path}: probes and lifecycle hooks cannot name a host (the kubelet would "
        "call it); they reach the pod's own address",
    )
    return _preserve_unknown(
        cel(
            "!has(self.ports) || self.ports.all(p, !has(p.hostPort) || p.hostPort == 0)",
            f"{t.path}: hostPort is not allowed (the restricted Pod Security "
            "Standard); reach a pod through a Service",
        ),
        no_probe_host,
    )


class OverlayContainer(Model):
    """A container of workers.podTemplate (core/v1 Container): every field is passed on
    except those the operator owns. The container named `worker` patches the worker
    container (env, envFrom, volumeMounts, resources, lifecycle, ports and probes only)."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_container_rules(WORKERS_OVERLAY))
    name: str = Field(
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Container name (a DNS label); `worker` patches the worker container.",
    )
    image: ImageRef | None = Field(None, description="Image (not for `worker`).")
    command: list[_SHORT] | None = _listed(64, "Not for `worker`.")
    args: list[_SHORT] | None = _listed(256, "Not for `worker`.")
    restart_policy: Literal["Always"] | None = Field(
        None,
        description="Always makes an init container a sidecar (Kubernetes 1.29+): it runs "
        "beside the worker and stops when the worker ends.",
    )
    security_context: OverlaySecurityContext | None = Field(
        None, description="User, group and read-only root filesystem (not for `worker`)."
    )
    env: list[EnvVarObject] | None = _listed(256, "core/v1 EnvVar.")
    env_from: list[FreeObject] | None = _listed(64, "core/v1 EnvFromSource list.")
    volume_mounts: list[VolumeMountObject] | None = _listed(64, "core/v1 VolumeMount list.")
    resources: Resources | None = Field(
        None, description="Container resources, e.g. requests: {ephemeral-storage: 10Gi}."
    )
    ports: list[ContainerPortObject] | None = _listed(
        32, "core/v1 ContainerPort list, without hostPort."
    )
    liveness_probe: HandlerObject | None = None
    readiness_probe: HandlerObject | None = None
    startup_probe: HandlerObject | None = None
    lifecycle: LifecycleObject | None = None


class SchedulingGate(Model):
    """A core/v1 PodSchedulingGate: the pod waits until a controller removes it."""

    name: str = Field(max_length=316, pattern=QUALIFIED_KEY, description="Gate name.")


class HostAlias(Model):
    """A core/v1 HostAlias: lines added to the pod's /etc/hosts."""

    ip: str = Field(max_length=45, description="IP address.")
    hostnames: list[Annotated[str, Field(max_length=253)]] | None = Field(
        None, max_length=16, description="Host names for the address."
    )


class ReadinessGate(Model):
    """A core/v1 PodReadinessGate."""

    condition_type: str = Field(max_length=316, description="Pod condition type.")


TopologySpreadObject = Annotated[
    dict[str, Any],
    _open_object(
        "TopologySpreadConstraint",
        topologyKey=_STRING,
        whenUnsatisfiable=_STRING,
        maxSkew={"type": "integer", "format": "int32"},
    ),
]
_REFUSED = "Refused: the operator owns or forbids this field."
_DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _pod_spec_rules(t: OverlayTarget) -> dict[str, Any]:
    spec, main = f"{t.path}.spec", t.container
    entries = [
        cel(
            "!(has(self.hostNetwork) && self.hostNetwork) && !(has(self.hostPID) && "
            "self.hostPID) && !(has(self.hostIPC) && self.hostIPC) && !has(self.nodeName)",
            f"{spec}: hostNetwork, hostPID, hostIPC and nodeName are not "
            "allowed (the restricted Pod Security Standard; nodeName skips the scheduler "
            "and quotas: use nodeSelector or affinity)",
        ),
        cel("!has(self.serviceAccountName)", f"{spec}.serviceAccountName: {t.account_message}"),
        cel(
            f"!has(self.containers) || self.containers.all(c, c.name == '{main}')",
            f"{spec}.containers: only `{main}` (a patch of the {main} "
            "container); put sidecars in initContainers with restartPolicy: Always"
            + t.sidecar_reason,
        ),
        cel(
            "!has(self.containers) || self.containers.all(c, "
            + " && ".join(f"!has(c.{f})" for f in t.owned_fields)
            + ")",
            f"{spec}.containers[{main}]: "
            + ", ".join(t.owned_fields)
            + f" are the operator's ({t.owned_hint})",
        ),
        cel(
            "!has(self.containers) || self.containers.all(c, !has(c.env) || "
            f"c.env.all(e, !(e.name in {cel_list(t.env_names)})))",
            f"{spec}.containers[{main}].env: "
            + ", ".join(t.env_names)
            + " are set by the operator and cannot be overridden",
        ),
    ]
    if t.mount_paths:
        entries.append(
            cel(
                "!has(self.containers) || self.containers.all(c, !has(c.volumeMounts) || "
                f"c.volumeMounts.all(m, !has(m.mountPath) || "
                f"!(m.mountPath in {cel_list(t.mount_paths)})))",
                f"{spec}.containers[{main}].volumeMounts: "
                + " and ".join(t.mount_paths)
                + " are the operator's writable emptyDirs",
            )
        )
    others = f" && !(v.name in {cel_list(t.volume_names)})" if t.volume_names else ""
    entries += [
        cel(
            "!has(self.initContainers) || self.initContainers.all(c, has(c.image) "
            f"&& c.name != '{main}')",
            f"{spec}.initContainers: every init container needs an "
            f"image and a name other than {main}",
        ),
        cel(
            "!has(self.volumes) || self.volumes.all(v, has(v.name) "
            f"&& v.name.matches('{_DNS_LABEL}'){others})",
            f"{spec}.volumes: every volume needs a name that is a DNS label"
            + (", other than " + " and ".join(t.volume_names) if t.volume_names else ""),
        ),
        cel(
            "!has(self.dnsPolicy) || self.dnsPolicy != 'None' || has(self.dnsConfig)",
            f"{spec}: dnsPolicy None needs dnsConfig",
        ),
    ]
    return rules(*entries)


class PodSpecOverlay(Model):
    """core/v1 PodSpec fields the worker pod takes from workers.podTemplate.spec, merged as
    `kubectl patch --type strategic` would: lists by name (hostAliases by ip, readinessGates
    by conditionType, topologySpreadConstraints by topologyKey), tolerations appended."""

    model_config = ConfigDict(json_schema_extra=_pod_spec_rules(WORKERS_OVERLAY))

    # Sequences: the dashboard's subclass narrows them to its own container model.
    init_containers: Sequence[OverlayContainer] | None = _listed(
        16, "Init containers and sidecars (restartPolicy: Always)."
    )
    containers: Sequence[OverlayContainer] | None = _listed(
        1, "Only `worker`: a patch of the worker container."
    )
    volumes: list[VolumeObject] | None = _listed(64, "core/v1 Volume list (restricted kinds only).")
    tolerations: list[TolerationObject] | None = _listed(
        64, "core/v1 Toleration list, added to the pod's."
    )
    topology_spread_constraints: list[TopologySpreadObject] | None = _listed(
        16, "core/v1 TopologySpreadConstraint list."
    )
    scheduling_gates: list[SchedulingGate] | None = _listed(
        16, "The pods wait until every gate is removed."
    )
    dns_policy: Literal["ClusterFirst", "Default", "None"] | None = Field(
        None, description="core/v1 DNSPolicy (None with dnsConfig)."
    )
    dns_config: FreeObject | None = Field(None, description="core/v1 PodDNSConfig.")
    host_aliases: list[HostAlias] | None = _listed(32, "/etc/hosts.")
    runtime_class_name: ObjectName | None = Field(None, description="A RuntimeClass.")
    readiness_gates: list[ReadinessGate] | None = _listed(16, "core/v1 PodReadinessGate list.")
    host_network: bool | None = Field(None, description=_REFUSED)
    host_pid: bool | None = Field(None, alias="hostPID", description=_REFUSED)
    host_ipc: bool | None = Field(None, alias="hostIPC", description=_REFUSED)
    node_name: str | None = Field(None, max_length=253, description=_REFUSED)
    service_account_name: str | None = Field(None, max_length=253, description=_REFUSED)


def _metadata_rules(t: OverlayTarget) -> dict[str, Any]:
    return rules(
        _label_keys("labels", f"{t.path}.metadata.labels"),
        _annotation_keys("annotations", f"{t.path}.metadata.annotations"),
    )


class PodTemplateMetadata(Model):
    """Labels and annotations added to the worker pods (the operator's own labels win)."""

    model_config = ConfigDict(json_schema_extra=_metadata_rules(WORKERS_OVERLAY))
    labels: dict[str, LabelValue] | None = Field(
        None, description="Pod labels.", json_schema_extra={"maxProperties": 64}
    )
    annotations: dict[str, str] | None = Field(
        None, description="Pod annotations.", json_schema_extra={"maxProperties": 64}
    )


class PodTemplateOverlay(Model):
    """A strategic-merge overlay on the worker pod, for what the fields of workers lack:
    init containers and sidecars, topologySpreadConstraints, schedulingGates, dnsConfig,
    hostAliases, runtimeClassName, readinessGates, ephemeral-storage. The operator's own
    fields win: the worker's command, image and environment contract, restartPolicy, the
    ServiceAccount (workers.serviceAccountName) and the restricted security floor, which
    every container gets."""

    metadata: PodTemplateMetadata | None = Field(None, description="Pod labels, annotations.")
    spec: PodSpecOverlay | None = Field(None, description="Pod spec fields merged in.")


_NAMED = "exists(v, has(v.name) && v.name == m.name)"


def overlay_mounts(t: OverlayTarget, overlay: str, volumes: str | None = None) -> dict[str, str]:
    """The rule that every volumeMount of the overlay (at CEL path `overlay`) names a volume
    the pod will have: the overlay's own, the operator's, or those of the list `volumes`
    (workers.volumes); else the pod would fail at creation."""
    spec = f"{overlay}.spec"
    sources = [
        *([f"m.name in {cel_list(t.volume_names)}"] if t.volume_names else []),
        *([f"has({volumes}) && {volumes}.{_NAMED}"] if volumes else []),
        f"has({spec}.volumes) && {spec}.volumes.{_NAMED}",
    ]

    def named(field: str) -> str:
        return (
            f"(!has({spec}.{field}) || {spec}.{field}.all(c, !has(c.volumeMounts) || "
            f"c.volumeMounts.all(m, has(m.name) && ({' || '.join(sources)}))))"
        )

    guard = f"!has({overlay}) || " if overlay != "self" else ""
    return cel(
        f"{guard}!has({spec}) || {named('containers')} && {named('initContainers')}",
        f"{t.path}: every volumeMount must name a volume of {t.volumes_fields}",
    )


# The worker's: a sidecar may also mount workers.volumes or the worker's /tmp.
_OVERLAY_MOUNTS = overlay_mounts(WORKERS_OVERLAY, "self.podTemplate", "self.volumes")


# ------------------------------------------------------------- dashboard.podTemplate
# The same models with the dashboard's rules and messages: a study's own dashboard
# (spec.dashboard.podTemplate) and the chart's overlay on every namespace's dashboard
# (--dashboard-pod-template) are checked by these.


class DashboardCapabilities(Capabilities):
    """Linux capabilities: the operator drops ALL from every container; none may be added."""

    model_config = ConfigDict(json_schema_extra=_capability_rules(DASHBOARD_OVERLAY))


class DashboardSecurityContext(OverlaySecurityContext):
    """What a container of dashboard.podTemplate may say about its security: its user,
    group and a read-only root filesystem; the operator sets the restricted floor."""

    model_config = ConfigDict(json_schema_extra=_security_rules(DASHBOARD_OVERLAY))
    capabilities: DashboardCapabilities | None = Field(None, description="None may be added.")


class DashboardOverlayContainer(OverlayContainer):
    """A container of dashboard.podTemplate (core/v1 Container). The container named
    `dashboard` patches the dashboard container (env, envFrom, volumeMounts, resources,
    lifecycle, liveness and startup probes only)."""

    model_config = ConfigDict(json_schema_extra=_container_rules(DASHBOARD_OVERLAY))
    name: str = Field(
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Container name (a DNS label); `dashboard` patches the dashboard container.",
    )
    image: ImageRef | None = Field(None, description="Image (not for `dashboard`).")
    command: list[_SHORT] | None = _listed(64, "Not for `dashboard`.")
    args: list[_SHORT] | None = _listed(256, "Not for `dashboard`.")
    restart_policy: Literal["Always"] | None = Field(
        None, description="Always makes an init container a sidecar (Kubernetes 1.29+)."
    )
    security_context: DashboardSecurityContext | None = Field(
        None, description="User, group and read-only root filesystem (not for `dashboard`)."
    )


class DashboardPodSpecOverlay(PodSpecOverlay):
    """core/v1 PodSpec fields the dashboard pod takes from dashboard.podTemplate.spec,
    merged as for workers.podTemplate."""

    model_config = ConfigDict(json_schema_extra=_pod_spec_rules(DASHBOARD_OVERLAY))
    init_containers: Sequence[DashboardOverlayContainer] | None = _listed(
        16, "Init containers and sidecars (restartPolicy: Always)."
    )
    containers: Sequence[DashboardOverlayContainer] | None = _listed(
        1, "Only `dashboard`: a patch of the dashboard container."
    )


class DashboardPodTemplateMetadata(PodTemplateMetadata):
    """Labels and annotations added to the dashboard pod (the operator's own labels win)."""

    model_config = ConfigDict(json_schema_extra=_metadata_rules(DASHBOARD_OVERLAY))


class DashboardPodTemplate(PodTemplateOverlay):
    """A strategic-merge overlay on a dashboard pod, as workers.podTemplate is on the
    worker pod: init containers and sidecars, volumes, topology spread, DNS, labels,
    resources. The operator's own fields win: the dashboard's command, arguments, image,
    environment, port, readiness probe and the restricted security floor."""

    model_config = ConfigDict(json_schema_extra=rules(overlay_mounts(DASHBOARD_OVERLAY, "self")))
    metadata: DashboardPodTemplateMetadata | None = Field(
        None, description="Pod labels, annotations."
    )
    spec: DashboardPodSpecOverlay | None = Field(None, description="Pod spec fields merged in.")


class WorkersSpec(Model):
    """The worker Job: pods that pull trials from the shared study until the budget is met."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.minParallelism) || self.minParallelism < self.parallelism",
                "workers.minParallelism must be less than workers.parallelism",
            ),
            cel(
                "!has(self.env) || self.env.all(e, has(e.name) && e.name.matches('^[ -<>-~]+$'))",
                "workers.env: every entry needs a name of printable characters without '='",
            ),
            cel(
                f"!has(self.env) || self.env.all(e, !has(e.name) || !(e.name in "
                f"{cel_list(WORKER_ENV_NAMES)}))",
                "workers.env: "
                + ", ".join(WORKER_ENV_NAMES)
                + " are set by the operator and cannot be overridden",
            ),
            cel(
                "!has(self.env) || self.env.all(e, !has(e.valueFrom) "
                "|| !has(e.value) || size(e.value) == 0)",
                "workers.env: an entry takes value or valueFrom, not both",
            ),
            cel(
                "!has(self.volumes) || self.volumes.all(v, has(v.name) "
                "&& v.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(v.name) <= 63)",
                "workers.volumes: every volume needs a name that is a DNS label "
                "(lowercase letters, digits and '-', at most 63 characters)",
            ),
            cel(
                f"!has(self.volumes) || self.volumes.all(v, !has(v.name) || !(v.name in "
                f"{cel_list(WORKER_VOLUME_NAMES)}))",
                "workers.volumes: "
                + " and ".join(WORKER_VOLUME_NAMES)
                + " are the operator's own volumes; pick another name",
            ),
            cel(
                "!has(self.volumeMounts) || self.volumeMounts.all(m, has(m.name) "
                "&& has(self.volumes) && self.volumes.exists(v, has(v.name) && v.name == m.name))",
                "workers.volumeMounts: every mount must name a volume of workers.volumes",
            ),
            cel(
                "!has(self.volumeMounts) || self.volumeMounts.all(m, has(m.mountPath) "
                f"&& !(m.mountPath in {cel_list(WORKER_MOUNT_PATHS)}))",
                "workers.volumeMounts: every mount needs a mountPath, and "
                + " and ".join(WORKER_MOUNT_PATHS)
                + " are the operator's writable emptyDirs (size /dev/shm with workers.shmSize)",
            ),
            cel(
                "!has(self.tolerations) || self.tolerations.all(t, "
                "(!has(t.operator) || t.operator in ['Exists', 'Equal']) "
                "&& (!has(t.effect) || t.effect in ['NoSchedule', 'PreferNoSchedule', "
                "'NoExecute']) && (!has(t.tolerationSeconds) || has(t.effect) "
                "&& t.effect == 'NoExecute'))",
                "workers.tolerations: operator is Exists or Equal, effect NoSchedule, "
                "PreferNoSchedule or NoExecute, and tolerationSeconds needs effect NoExecute",
            ),
            cel(
                "!has(self.tolerations) || self.tolerations.all(t, !has(t.operator) "
                "|| t.operator != 'Exists' || !has(t.value) || size(t.value) == 0)",
                "workers.tolerations: a toleration with operator Exists takes no value",
            ),
            _label_keys("podLabels", "workers.podLabels"),
            _OVERLAY_MOUNTS,
            cel(
                f"!has(self.nodeSelector) || self.nodeSelector.all(k, "
                f"k.matches('{QUALIFIED_KEY}'))",
                "workers.nodeSelector: keys must be valid label keys ([prefix/]name)",
            ),
            _annotation_keys("podAnnotations", "workers.podAnnotations"),
            cel(
                "quantity(string(self.shmSize)).isGreaterThan(quantity('0'))",
                "workers.shmSize must be a positive quantity, e.g. 1Gi",
            ),
            cel(
                "self.parallelism >= 1",
                "workers.parallelism must be at least 1 (a Job of 0 workers would leave the "
                "study Pending); set spec.suspend: true to stop the workers",
            ),
        )
    )

    parallelism: int = Field(1, ge=0, le=1000, description="Worker pods running at once.")
    processes_per_pod: int = Field(
        1,
        ge=1,
        le=16,
        description="Trial processes per pod; with N GPUs per pod set N to run one trial "
        "per GPU (each process sees one GPU through CUDA_VISIBLE_DEVICES).",
    )
    image: ImageRef | None = Field(
        None, description="Image with the objective's code and the worker."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    resources: Resources | None = Field(
        None, description="Worker container resources, e.g. limits: {nvidia.com/gpu: 1}."
    )
    # Bounded so the API server can afford the CEL rules over them.
    env: list[EnvVarObject] | None = Field(
        None,
        max_length=256,
        description="Extra environment (core/v1 EnvVar). HOME (default /tmp/home) may be "
        "overridden; the operator's own variables may not.",
    )
    env_from: list[FreeObject] | None = Field(
        None, max_length=64, description="core/v1 EnvFromSource list."
    )
    volumes: list[VolumeObject] | None = Field(
        None, max_length=64, description="core/v1 Volume list."
    )
    volume_mounts: list[VolumeMountObject] | None = Field(
        None, max_length=64, description="core/v1 VolumeMount list."
    )
    node_selector: dict[str, LabelValue] | None = Field(
        None, json_schema_extra={"maxProperties": 64}
    )
    tolerations: list[TolerationObject] | None = Field(
        None, max_length=64, description="core/v1 Toleration list."
    )
    affinity: FreeObject | None = Field(None, description="core/v1 Affinity.")
    service_account_name: ObjectName | None = None
    image_pull_secrets: list[ObjectName] | None = Field(
        None, max_length=16, description="Names of pull Secrets."
    )
    priority_class_name: ObjectName | None = None
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Kueue LocalQueue (in the study's namespace) the worker Job waits in: the "
        "Job gets the kueue.x-k8s.io/queue-name label and is created suspended; Kueue starts "
        "it when its ClusterQueue has quota and may suspend it again to preempt it. Defaults "
        "to the operator's --default-queue-name.",
    )
    min_parallelism: int | None = Field(
        None,
        ge=1,
        le=999,
        description="With a Kueue queue: let Kueue admit the worker Job with as few as this "
        "many workers when the quota does not fit parallelism (partial admission, the "
        "kueue.x-k8s.io/job-min-parallelism annotation). Ignored without a queue.",
    )
    pod_labels: dict[str, LabelValue] | None = Field(None, json_schema_extra={"maxProperties": 64})
    pod_annotations: dict[str, str] | None = Field(None, json_schema_extra={"maxProperties": 64})
    shm_size: Quantity = Field(
        "64Mi",
        description="Size of the memory-backed /dev/shm (counts against the pod's memory); "
        "raise it for PyTorch DataLoader workers, e.g. 2Gi.",
    )
    run_as_user: int | None = Field(
        None,
        ge=1,
        le=2147483647,
        description="User id of the worker container (default 65532, the worker image's "
        "user); for images built around another non-root user.",
    )
    run_as_group: int | None = Field(
        None,
        ge=0,
        le=2147483647,
        description="Group id of the worker container and of its volumes (default 65532).",
    )
    pod_template: PodTemplateOverlay | None = Field(
        None,
        description="A strategic-merge overlay on the worker pod (core/v1 PodTemplateSpec "
        "fields): init containers and sidecars, topology spread, scheduling gates, DNS, "
        "extra volumes, labels. The operator's own fields win; host namespaces, hostPath "
        "and privileged containers are refused.",
    )
    heartbeat_interval_seconds: int = Field(
        30,
        ge=5,
        le=3600,
        description="Running trials send a heartbeat this often; a trial silent for 2x this "
        "is failed and retried (preempted or killed worker).",
    )
