"""Pure builders: a TuningStudy (plus what the operator resolved) -> child object dicts."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna_operator.api import (
    API_VERSION,
    DASHBOARD_ENV_NAMES,
    KIND,
    WORKER_ENV_NAMES,
    WORKER_MOUNT_PATHS,
    WORKER_VOLUME_NAMES,
    BestTrial,
    Budget,
    TuningStudy,
    WorkerConfig,
)
from optuna_operator.api.workers import DASHBOARD_OVERLAY, OPERATOR_LABELS
from optuna_operator.children.overlay import DASHBOARD_PATCHABLE, OperatorFields, apply_pod_overlay
from optuna_operator.contract import (
    CONFIG_ENV,
    OBJECTIVE_SOURCE_ENV,
    POD_NAME_ENV,
    POD_NAMESPACE_ENV,
    REPLACE_EXIT_CODES,
    STORAGE_ENV,
    ExitCode,
)

__all__ = [
    "DASHBOARD_PORT",
    "DASHBOARD_PROBE_PATH",
    "MANAGED_BY",
    "NAMESPACE_DASHBOARD",
    "NAMESPACE_DASHBOARD_LABEL",
    "QUEUE_LABEL",
    "STUDY_LABEL",
    "TEMPLATE_HASH_LABEL",
    "ChildContext",
    "dashboard_name",
    "export_config_map",
    "labels",
    "namespace_dashboard",
    "namespace_dashboard_labels",
    "owner_reference",
    "study_dashboard",
    "study_dashboard_name",
    "worker_config",
    "worker_job",
    "workers_job_prefix",
]

MANAGED_BY = "optuna-operator"
TEMPLATE_HASH_LABEL = "optuna-operator.io/template-hash"
STUDY_LABEL = "optuna-operator.io/study"
# Kueue's label naming the LocalQueue a Job waits in (sigs.k8s.io/kueue constants.QueueLabel).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue's partial admission of a batch Job: the fewest pods it may start it with.
MIN_PARALLELISM_ANNOTATION = "kueue.x-k8s.io/job-min-parallelism"
DASHBOARD_PORT = 8080
# The one dashboard of a namespace's default-storage studies (Deployment, Service and
# NetworkPolicy of this name), and the label that tells it from anything else of that name.
NAMESPACE_DASHBOARD = "optuna-dashboard"
DASHBOARD_PROBE_PATH = "/api/meta"
NAMESPACE_DASHBOARD_LABEL = "optuna-operator.io/namespace-dashboard"
# A study's own dashboard reads its read-only URL from this variable; a namespace's its
# read-only role's password from the other.
DASHBOARD_URL_ENV, DASHBOARD_PASSWORD_ENV = DASHBOARD_ENV_NAMES

# Restricted Pod Security Standard, satisfied by default for every pod the operator makes.
# uid 65532 is the worker image's user; it also lets root-based images (e.g. PyTorch's) run
# unprivileged.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}
# Worker containers get a read-only root filesystem; what Python, pip caches, matplotlib and
# objectives write goes to emptyDirs. HOME lives inside the /tmp volume so that it is also a
# path that exists (or can be made) where no volume is mounted, e.g. the test bed's executor;
# the worker creates it at start.
WORKER_TMP, WORKER_SHM = WORKER_MOUNT_PATHS
WORKER_HOME = f"{WORKER_TMP}/home"
# What spec.workers.podTemplate cannot take from the worker pod.
WORKER_OWNED = OperatorFields(
    env=WORKER_ENV_NAMES,
    volumes=WORKER_VOLUME_NAMES,
    mount_paths=WORKER_MOUNT_PATHS,
    labels=(*OPERATOR_LABELS, STUDY_LABEL),
)


def _dashboard_owned(label: str) -> OperatorFields:
    """What a dashboard.podTemplate cannot take from a dashboard pod (whose own label is
    `label`): its environment, labels, and all of its container but DASHBOARD_PATCHABLE."""
    return OperatorFields(
        env=DASHBOARD_ENV_NAMES,
        volumes=(),
        mount_paths=(),
        labels=(*OPERATOR_LABELS, label),
        container=DASHBOARD_OVERLAY.container,
        patchable=DASHBOARD_PATCHABLE,
    )


@dataclass(frozen=True)
class ChildContext:
    """What the operator resolved that the spec alone does not say."""

    storage_secret: str
    storage_key: str
    worker_image: str
    dashboard_image: str
    deadline: datetime | None = None
    # The budget workers count finished trials against: lifecycle's `trial_budget`, which
    # adds warm-start copies that do not count; None: spec.budget as written.
    budget: Budget | None = None
    # Kueue LocalQueue of the worker Job (spec.workers.queueName or the operator's default).
    queue_name: str | None = None
    # The namespace's read-only role: its URL carries no password, which reaches the
    # dashboard as PGPASSWORD (libpq reads it) from this key of `storage_secret`. None for
    # a user's own storage Secret, which holds a URL only.
    dashboard_url: str | None = None
    dashboard_password_key: str | None = None
    # NetworkPolicy peers admitted to dashboards (the chart's dashboard.allowedFrom).
    dashboard_allowed_from: list[dict[str, Any]] = field(default_factory=list)
    # The chart's dashboard.podTemplate (on the wire), overlaid on every namespace's dashboard.
    dashboard_pod_template: dict[str, Any] | None = None


def labels(study: TuningStudy, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"optuna-{component}",
        "app.kubernetes.io/instance": study.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "optuna-operator",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        STUDY_LABEL: study.metadata.name,
    }


def owner_reference(study: TuningStudy) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": study.metadata.name,
        "uid": study.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(study: TuningStudy, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": study.metadata.namespace,
        "labels": labels(study, component),
        "ownerReferences": [owner_reference(study)],
    }


def _storage_env(ctx: ChildContext) -> dict[str, Any]:
    return {
        "name": STORAGE_ENV,
        "valueFrom": {"secretKeyRef": {"name": ctx.storage_secret, "key": ctx.storage_key}},
    }


def worker_config(study: TuningStudy, ctx: ChildContext) -> WorkerConfig:
    """What each worker process is told: the study, its objective and the budget it counts
    finished trials (warm-start copies included) against."""
    spec = study.spec
    return WorkerConfig(
        study_name=study.study_name,
        directions=spec.directions,
        objective=spec.objective,
        budget=ctx.budget if ctx.budget is not None else spec.budget,
        sampler=spec.sampler,
        pruner=spec.pruner,
        processes_per_pod=spec.workers.processes_per_pod,
        heartbeat_interval_seconds=spec.workers.heartbeat_interval_seconds,
        deadline=ctx.deadline,
    )


def workers_job_prefix(study: TuningStudy) -> str:
    return f"{study.metadata.name}-workers"


def _objective_source_env(study: TuningStudy) -> list[dict[str, Any]]:
    """objective.source as env, not a volume: the worker writes it to a file itself, so a
    stock image runs it (and a pod without volume support still gets it)."""
    source = study.spec.objective.source
    if source is None:
        return []
    ref = source.config_map_key_ref
    return [
        {
            "name": OBJECTIVE_SOURCE_ENV,
            "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}},
        }
    ]


def _worker_container(study: TuningStudy, ctx: ChildContext) -> dict[str, Any]:
    """The worker container: the env contract (worker config, storage URL, pod identity)
    before the user's env, the security floor, and the user's optional fields."""
    workers = study.spec.workers
    config = worker_config(study, ctx).to_wire()
    env: list[dict[str, Any]] = [
        {"name": CONFIG_ENV, "value": json.dumps(config, sort_keys=True)},
        _storage_env(ctx),
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": POD_NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *_objective_source_env(study),
        # Before the user's env, so a study can point HOME elsewhere (with a volume there).
        {"name": "HOME", "value": WORKER_HOME},
        {"name": "TMPDIR", "value": WORKER_TMP},
        *(workers.env or []),
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": workers.image or ctx.worker_image,
        "command": ["optuna-operator", "worker"],
        "env": env,
        "securityContext": {**CONTAINER_SECURITY_CONTEXT, "readOnlyRootFilesystem": True},
        # The worker prints its fatal error last; kubelet copies it into the pod status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": WORKER_VOLUME_NAMES[0], "mountPath": WORKER_TMP},
            {"name": WORKER_VOLUME_NAMES[1], "mountPath": WORKER_SHM},
            *(workers.volume_mounts or []),
        ],
    }
    optional_container = {
        "imagePullPolicy": workers.image_pull_policy,
        "envFrom": workers.env_from,
        "resources": workers.resources.to_wire() if workers.resources else None,
    }
    container.update({k: v for k, v in optional_container.items() if v})
    return container


def _worker_pod_template(study: TuningStudy, ctx: ChildContext) -> dict[str, Any]:
    workers = study.spec.workers
    security = dict(POD_SECURITY_CONTEXT)
    if workers.run_as_user is not None:
        security["runAsUser"] = workers.run_as_user
    if workers.run_as_group is not None:
        security["runAsGroup"] = security["fsGroup"] = workers.run_as_group
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": security,
        "containers": [_worker_container(study, ctx)],
        "volumes": [
            {"name": WORKER_VOLUME_NAMES[0], "emptyDir": {}},
            # Memory-backed: the runtime's default 64Mi /dev/shm starves PyTorch DataLoaders.
            {
                "name": WORKER_VOLUME_NAMES[1],
                "emptyDir": {"medium": "Memory", "sizeLimit": str(workers.shm_size)},
            },
            *(workers.volumes or []),
        ],
        # Workers do not talk to the Kubernetes API unless the user gives them an account.
        "automountServiceAccountToken": workers.service_account_name is not None,
        "terminationGracePeriodSeconds": 60,
    }
    optional_pod = {
        "serviceAccountName": workers.service_account_name,
        "nodeSelector": workers.node_selector,
        "tolerations": workers.tolerations,
        "affinity": workers.affinity,
        "priorityClassName": workers.priority_class_name,
        "imagePullSecrets": [{"name": n} for n in workers.image_pull_secrets or []],
    }
    pod_spec.update({k: v for k, v in optional_pod.items() if v})
    template = {
        "metadata": {
            "labels": {**(workers.pod_labels or {}), **labels(study, "worker")},
            "annotations": dict(workers.pod_annotations or {}),
        },
        "spec": pod_spec,
    }
    overlay = workers.pod_template.to_wire() if workers.pod_template else None
    return apply_pod_overlay(template, overlay, WORKER_OWNED)


def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:8]


def worker_job(study: TuningStudy, ctx: ChildContext) -> dict[str, Any]:
    """The worker Job. Its name carries a hash of the pod template (immutable in a Job), so
    a changed objective or image yields a new Job while the study continues."""
    workers = study.spec.workers
    template = _worker_pod_template(study, ctx)
    digest = template_hash(template)
    metadata = _metadata(study, f"{workers_job_prefix(study)}-{digest}", "worker")
    metadata["labels"][TEMPLATE_HASH_LABEL] = digest
    if ctx.queue_name:
        metadata["labels"][QUEUE_LABEL] = ctx.queue_name
        if workers.min_parallelism is not None:
            # Kueue lowers spec.parallelism on admission; the operator never patches a
            # queued Job, so it does not put it back.
            metadata["annotations"] = {MIN_PARALLELISM_ANNOTATION: str(workers.min_parallelism)}
    spec: dict[str, Any] = {
        "parallelism": workers.parallelism,
        # Work queue: no completions; each worker pulls trials until the global budget is met.
        "backoffLimit": max(6, 2 * workers.parallelism),
        # A queued Job starts suspended and Kueue unsuspends it on admission; the operator
        # creates it and never sends it again (spec.suspend deletes it instead).
        "suspend": True if ctx.queue_name else study.spec.suspend,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "worker",
                        "operator": "In",
                        "values": [int(ExitCode.CONFIG), int(ExitCode.TOO_MANY_FAILURES)],
                    },
                },
                # Preemption, eviction and scale-down are not the objective's fault.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # A worker stopped before the study is done (a plain pod deletion carries no
                # DisruptionTarget) or after a hung trial: replace it, count nothing.
                {
                    "action": "Ignore",
                    "onExitCodes": {
                        "containerName": "worker",
                        "operator": "In",
                        "values": [int(code) for code in REPLACE_EXIT_CODES],
                    },
                },
            ]
        },
        "template": template,
    }
    if study.spec.budget.timeout_seconds:
        # Workers stop themselves at the deadline; this is the backstop if they hang.
        spec["activeDeadlineSeconds"] = study.spec.budget.timeout_seconds + 600
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def dashboard_name(study: TuningStudy) -> str:
    """The dashboard that serves this study: its namespace's with the default storage, its
    own (spec.storage with a read-only spec.dashboard.secretRef) otherwise."""
    return NAMESPACE_DASHBOARD if study.spec.storage is None else study_dashboard_name(study)


def study_dashboard_name(study: TuningStudy) -> str:
    """A study's own dashboard (its storage is the user's)."""
    return f"{study.metadata.name}-dashboard"


def namespace_dashboard_labels(namespace: str) -> dict[str, str]:
    """Labels of a namespace's dashboard and its pods; no study label, as it serves all."""
    return {
        "app.kubernetes.io/name": "optuna-dashboard",
        "app.kubernetes.io/instance": NAMESPACE_DASHBOARD,
        "app.kubernetes.io/component": "dashboard",
        "app.kubernetes.io/part-of": "optuna-operator",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        NAMESPACE_DASHBOARD_LABEL: "true",
    }


def _dashboard_container(
    image: str, url_arg: str, env: list[dict[str, Any]], resources: dict[str, Any] | None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": DASHBOARD_OVERLAY.container,
        "image": image,
        "command": ["optuna-dashboard"],
        "args": ["--host", "0.0.0.0", "--port", str(DASHBOARD_PORT), url_arg],
        "env": env,
        "ports": [{"name": "http", "containerPort": DASHBOARD_PORT}],
        # /api/meta answers without the database: optuna-dashboard checks the storage's
        # schema version (a transaction) on every request for / and /dashboard, which a
        # probe every 10 s would turn into steady load from every idle namespace.
        "readinessProbe": {
            "httpGet": {"path": DASHBOARD_PROBE_PATH, "port": "http"},
            "periodSeconds": 10,
        },
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        container["resources"] = resources
    return container


def _dashboard_objects(
    metadata: dict[str, Any],
    pod_labels: dict[str, str],
    container: dict[str, Any],
    allowed_from: list[dict[str, Any]],
    pod_template: dict[str, Any] | None,
    owned: OperatorFields,
) -> list[dict[str, Any]]:
    """Deployment, Service and NetworkPolicy of one dashboard, all with `metadata`; the
    Deployment's pod with the overlay `pod_template` (dashboard.podTemplate) merged in."""

    def meta() -> dict[str, Any]:
        copied: dict[str, Any] = json.loads(json.dumps(metadata))  # callers annotate each
        return copied

    template = {
        "metadata": {"labels": pod_labels},
        "spec": {
            "securityContext": POD_SECURITY_CONTEXT,
            "automountServiceAccountToken": False,
            "containers": [container],
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": pod_labels},
            "template": apply_pod_overlay(template, pod_template, owned),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(),
        "spec": {
            "selector": pod_labels,
            "ports": [{"name": "http", "port": DASHBOARD_PORT, "targetPort": "http"}],
        },
    }
    # Nothing reaches a dashboard but the peers the chart names (default: none; the
    # documented path, kubectl port-forward, enters the pod's own network namespace).
    ingress = (
        [{"from": allowed_from, "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]}]
        if allowed_from
        else []
    )
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(),
        "spec": {
            "podSelector": {"matchLabels": pod_labels},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
    return [deployment, service, policy]


def namespace_dashboard(namespace: str, ctx: ChildContext) -> list[dict[str, Any]]:
    """The namespace's one dashboard (default storage): its read-only role, the password
    from the namespace's Secret as PGPASSWORD (not in the process arguments, which `ps`
    shows). Without owners: which studies own it is the reconcile's to say
    (reconcile/decide.py's `owned_dashboard`), from the dashboard as it is."""
    assert ctx.dashboard_url is not None and ctx.dashboard_password_key is not None
    pod_labels = namespace_dashboard_labels(namespace)
    secret_ref = {"name": ctx.storage_secret, "key": ctx.dashboard_password_key}
    env = [{"name": DASHBOARD_PASSWORD_ENV, "valueFrom": {"secretKeyRef": secret_ref}}]
    container = _dashboard_container(ctx.dashboard_image, ctx.dashboard_url, env, None)
    metadata = {
        "name": NAMESPACE_DASHBOARD,
        "namespace": namespace,
        "labels": pod_labels,
    }
    # The chart's overlay: it serves every study of the namespace, so none of them shapes it.
    return _dashboard_objects(
        metadata,
        pod_labels,
        container,
        ctx.dashboard_allowed_from,
        ctx.dashboard_pod_template,
        _dashboard_owned(NAMESPACE_DASHBOARD_LABEL),
    )


def study_dashboard(study: TuningStudy, ctx: ChildContext) -> list[dict[str, Any]]:
    """A study's own dashboard, on its own storage: only with spec.dashboard.secretRef, a
    read-only credential the user supplies; never the read-write URL of spec.storage. Its
    pod takes the study's spec.dashboard.podTemplate."""
    dash = study.spec.dashboard
    assert dash.secret_ref is not None
    ref = {"name": dash.secret_ref.name, "key": dash.secret_ref.key}
    # $(VAR) is expanded by the kubelet: the URL stays out of every API object (though not
    # out of the process arguments).
    env = [{"name": DASHBOARD_URL_ENV, "valueFrom": {"secretKeyRef": ref}}]
    resources = dash.resources.to_wire() if dash.resources else None
    container = _dashboard_container(
        dash.image or ctx.dashboard_image, f"$({DASHBOARD_URL_ENV})", env, resources
    )
    metadata = _metadata(study, study_dashboard_name(study), "dashboard")
    overlay = dash.pod_template.to_wire() if dash.pod_template else None
    return _dashboard_objects(
        metadata,
        labels(study, "dashboard"),
        container,
        ctx.dashboard_allowed_from,
        overlay,
        _dashboard_owned(STUDY_LABEL),
    )


def _config_map_key(name: str) -> str:
    """A parameter name as a ConfigMap key ([-._a-zA-Z0-9]+)."""
    return re.sub(r"[^-._a-zA-Z0-9]", "_", name) or "_"


def export_config_map(study: TuningStudy, best: BestTrial) -> dict[str, Any]:
    """spec.export: the best trial's parameters, one key each, and what they scored."""
    assert study.spec.export is not None
    data = {
        _config_map_key(name): value if isinstance(value, str) else json.dumps(value)
        for name, value in best.params.items()
    }
    data["optuna_best_value"] = json.dumps(best.values[0] if len(best.values) == 1 else best.values)
    data["optuna_best_trial"] = str(best.number)
    data["optuna_study"] = study.study_name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(study, study.spec.export.config_map_name, "export"),
        "data": data,
    }
