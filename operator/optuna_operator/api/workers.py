"""spec.workers: the worker Job's pod template fields, the core/v1 objects passed through to
it (env, volumes, mounts, tolerations) and the CEL rules that stop a study from taking or
overriding what the operator gives every worker pod.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema

from optuna_operator.api.cel import QUALIFIED_KEY, cel, cel_list, rules
from optuna_operator.api.constants import (
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
    "OPERATOR_LABELS",
    "EnvVarObject",
    "TolerationObject",
    "VolumeMountObject",
    "VolumeObject",
    "WorkersSpec",
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


# Labels the operator sets on worker pods; the same key in podLabels would be dropped.
OPERATOR_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


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
            cel(
                f"!has(self.podLabels) || self.podLabels.all(k, k.matches('{QUALIFIED_KEY}') "
                f"&& !(k in {cel_list(OPERATOR_LABELS)}) "
                "&& !k.startsWith('optuna-operator.io/'))",
                "workers.podLabels: keys must be valid label keys, and the operator's own "
                "labels (app.kubernetes.io/name, instance, component, part-of, managed-by, "
                "optuna-operator.io/*) cannot be set",
            ),
            cel(
                f"!has(self.nodeSelector) || self.nodeSelector.all(k, "
                f"k.matches('{QUALIFIED_KEY}'))",
                "workers.nodeSelector: keys must be valid label keys ([prefix/]name)",
            ),
            cel(
                f"!has(self.podAnnotations) || self.podAnnotations.all(k, "
                f"k.matches('{QUALIFIED_KEY}'))",
                "workers.podAnnotations: keys must be valid annotation keys ([prefix/]name)",
            ),
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
    heartbeat_interval_seconds: int = Field(
        30,
        ge=5,
        le=3600,
        description="Running trials send a heartbeat this often; a trial silent for 2x this "
        "is failed and retried (preempted or killed worker).",
    )
