"""The real API server enforces the generated schema and CEL rules, with messages a user can
act on; every example is accepted and parses back into the models with defaults filled."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from optuna_operator.api import GROUP, PLURAL, VERSION, TuningStudy
from optuna_operator.children import manifests
from testbed import Bed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

VALID: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "TuningStudy",
    "metadata": {"name": "v"},
    "spec": {
        "directions": ["minimize"],
        "objective": {
            "command": ["bash", "run.sh", "{opt}"],
            "searchSpace": [
                {"name": "opt", "categorical": {"choices": ["sgd", "adam"]}},
                {"name": "lr", "float": {"low": 0.001, "high": 0.1, "log": True}},
                {
                    "name": "momentum",
                    "float": {"low": 0.0, "high": 0.9},
                    "when": {"param": "opt", "in": ["sgd"]},
                },
                {"name": "layers", "int": {"low": 1, "high": 4}},
            ],
        },
        "budget": {"trials": 10},
    },
}


def _with(path: str, value: Any, *more: Any) -> dict[str, Any]:
    """VALID with fields replaced: path, value[, path, value...] (dotted paths, list indexes
    as numbers; a value of None deletes)."""
    body = copy.deepcopy(VALID)
    changes = [(path, value), *zip(more[::2], more[1::2], strict=True)]
    for dotted, new in changes:
        node: Any = body["spec"]
        keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        for key in keys[:-1]:
            node = node[key]
        if new is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = new
    return body


TWO = ["minimize", "maximize"]


FUNCTION = {"function": "examples.xgb_regression:objective"}
SS = "objective.searchSpace"

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no directions", _with("directions", []), "directions"),
    ("bad direction", _with("directions", ["up"]), 'Unsupported value: "up"'),
    (
        "function and command",
        _with("objective.function", "m:f"),
        "exactly one of function or command",
    ),
    ("neither function nor command", _with("objective", {}), "exactly one of function or command"),
    ("command without search space", _with("objective", {"command": ["x"]}), "needs a searchSpace"),
    (
        "function with search space",
        _with("objective", {**FUNCTION, "searchSpace": VALID["spec"]["objective"]["searchSpace"]}),
        "only used with command",
    ),
    (
        "function not module:attr",
        _with("objective", {"function": "train.py"}),
        "objective.function",
    ),
    (
        "float low >= high",
        _with(f"{SS}.1.float", {"low": 1.0, "high": 0.5}),
        "low must be less than high",
    ),
    (
        "float log with low 0",
        _with(f"{SS}.1.float", {"low": 0.0, "high": 1.0, "log": True}),
        "log scale needs low > 0",
    ),
    (
        "float step with log",
        _with(f"{SS}.1.float", {"low": 0.1, "high": 1.0, "log": True, "step": 0.1}),
        "step cannot be combined with log",
    ),
    (
        "float step too big",
        _with(f"{SS}.1.float", {"low": 0.0, "high": 1.0, "step": 2.0}),
        "step must fit in the range",
    ),
    ("float step zero", _with(f"{SS}.1.float", {"low": 0.0, "high": 1.0, "step": 0}), "step"),
    (
        "int low >= high",
        _with(f"{SS}.3.int", {"low": 4, "high": 4}),
        "int: low must be less than high",
    ),
    (
        "int log with low 0",
        _with(f"{SS}.3.int", {"low": 0, "high": 4, "log": True}),
        "int: log scale needs low > 0",
    ),
    (
        "int step too big",
        _with(f"{SS}.3.int", {"low": 0, "high": 4, "step": 5}),
        "int: step must fit",
    ),
    (
        "int log with step",
        _with(f"{SS}.3.int", {"low": 1, "high": 8, "log": True, "step": 2}),
        "log scale needs step 1",
    ),
    ("empty choices", _with(f"{SS}.0.categorical", {"choices": []}), "choices"),
    (
        "duplicate choices",
        _with(f"{SS}.0.categorical", {"choices": ["sgd", "sgd"]}),
        "Duplicate value",
    ),
    (
        "no range type",
        _with(f"{SS}.3", {"name": "layers"}),
        "exactly one of float, int or categorical",
    ),
    (
        "two range types",
        _with(f"{SS}.3.float", {"low": 0.0, "high": 1.0}),
        "exactly one of float, int or categorical",
    ),
    ("duplicate names", _with(f"{SS}.3.name", "lr"), "Duplicate value"),
    ("bad parameter name", _with(f"{SS}.3.name", "num-layers"), "should match"),
    (
        "when on unknown param",
        _with(f"{SS}.2.when", {"param": "nope", "in": ["sgd"]}),
        "when.param must name a categorical",
    ),
    (
        "when on float param",
        _with(f"{SS}.2.when", {"param": "lr", "in": ["sgd"]}),
        "when.param must name a categorical",
    ),
    (
        "when value not a choice",
        _with(f"{SS}.2.when", {"param": "opt", "in": ["rmsprop"]}),
        "must be one of the parent parameter's choices",
    ),
    (
        "when on itself",
        _with(f"{SS}.2.when", {"param": "momentum", "in": ["sgd"]}),
        "cannot depend on itself",
    ),
    ("metricNames length", _with("metricNames", ["a", "b"]), "one name per direction"),
    (
        "goal with two directions",
        _with("directions", TWO, "budget", {"trials": 5, "goal": 0.1}),
        "goal works only with a single direction",
    ),
    (
        "no budget",
        _with("budget", {"maxFailedTrials": 3}),
        "set trials, timeoutSeconds or deadline",
    ),
    ("zero trials", _with("budget", {"trials": 0}), "budget.trials"),
    (
        "negative failed trials",
        _with("budget", {"trials": 5, "maxFailedTrials": -1}),
        "maxFailedTrials",
    ),
    (
        "NSGA with one direction",
        _with("sampler", {"type": "NSGAII"}),
        "need two or more directions",
    ),
    (
        "CMAES with two directions",
        _with("directions", TWO, "sampler", {"type": "CMAES"}),
        "single direction only",
    ),
    (
        "options of another sampler",
        _with("sampler", {"type": "Random", "tpe": {"nStartupTrials": 5}}),
        "sampler.tpe is only valid when sampler.type is TPE",
    ),
    ("unknown sampler", _with("sampler", {"type": "Bayes"}), 'Unsupported value: "Bayes"'),
    (
        "grid for a function without space",
        _with("objective", FUNCTION, "sampler", {"type": "Grid"}),
        "needs sampler.grid.searchSpace",
    ),
    (
        "options of another pruner",
        _with("pruner", {"type": "Median", "hyperband": {}}),
        "pruner.hyperband is only valid when pruner.type is Hyperband",
    ),
    (
        "percentile without percentile",
        _with("pruner", {"type": "Percentile"}),
        "needs pruner.percentile.percentile",
    ),
    (
        "percentile out of range",
        _with("pruner", {"type": "Percentile", "percentile": {"percentile": 150}}),
        "percentile",
    ),
    (
        "threshold without bounds",
        _with("pruner", {"type": "Threshold", "threshold": {}}),
        "needs lower or upper",
    ),
    (
        "patient without patience",
        _with("pruner", {"type": "Patient"}),
        "needs pruner.patient.patience",
    ),
    (
        "hyperband bad maxResource",
        _with("pruner", {"type": "Hyperband", "hyperband": {"maxResource": "lots"}}),
        "positive integer or 'auto'",
    ),
    (
        "pruning with two directions",
        _with("directions", TWO, "pruner", {"type": "Median"}),
        "pruning works only with a single direction",
    ),
    ("negative parallelism", _with("workers", {"parallelism": -1}), "parallelism"),
    (
        "the same metric name twice",
        _with("directions", TWO, "metricNames", ["loss", "loss"]),
        "metricNames must be distinct",
    ),
    (
        "a read-only dashboard Secret without spec.storage",
        _with("dashboard", {"secretRef": {"name": "ro"}}),
        "dashboard.secretRef is for a study on its own storage",
    ),
    (
        "zero parallelism",
        _with("workers", {"parallelism": 0}),
        "workers.parallelism must be at least 1",
    ),
    (
        "a metric name with a newline",
        _with("metricNames", ["loss\ntouch /tmp/pwned"]),
        "metricNames[0]",
    ),
    (
        "minParallelism not below parallelism",
        _with("workers", {"parallelism": 2, "minParallelism": 2}),
        "workers.minParallelism must be less than workers.parallelism",
    ),
    (
        "queue name not a DNS subdomain",
        _with("workers", {"queueName": "GPU_queue"}),
        "queueName",
    ),
    (
        "bad resource quantity",
        _with("workers", {"resources": {"limits": {"cpu": "lots"}}}),
        "limits",
    ),
    ("bad deletion policy", _with("deletionPolicy", "Purge"), 'Unsupported value: "Purge"'),
    ("bad study name", _with("studyName", "has space"), "studyName"),
]

# Moved from run time to apply time (issue 11): what the worker's factories, Optuna and the
# Job's pod validation would refuse or silently ignore, each with the reason it is refused.
# The enqueueTrials and grid-value cases are refused by the admission policy from deploy/
# (crd_installed applies it; admission.py says why they cannot be CRD rules), the rest by
# the CRD.
GPU = "nvidia.com/gpu"
MOVED: list[tuple[str, dict[str, Any], str]] = [
    # Optuna uses an enqueued parameter only if the objective suggests it, and an out-of-range
    # fixed value with nothing but a warning; a value outside the choices fails every trial.
    (
        "enqueued parameter not in the search space",
        _with("enqueueTrials", [{"opt": "sgd", "dropout": 0.1}]),
        "parameter(s) dropout are not declared in spec.objective.searchSpace",
    ),
    # The worker fills `{name}` only for declared parameters and leaves other braces alone
    # (awk, `${VAR}`), so a misspelt placeholder would reach the command as written.
    (
        "command placeholder naming no parameter",
        _with("objective.command", ["python", "train.py", "--lr={learning_rate}", "{opt}"]),
        "the placeholder learning_rate names no parameter of spec.objective.searchSpace",
    ),
    (
        "enqueued choice not a choice",
        _with("enqueueTrials", [{"opt": "rmsprop"}]),
        "the value of opt does not fit its parameter",
    ),
    (
        "enqueued float out of range",
        _with("enqueueTrials", [{"lr": 0.5}]),
        "the value of lr does not fit its parameter",
    ),
    (
        "enqueued int not an integer",
        _with("enqueueTrials", [{"layers": 2.5}]),
        "the value of layers does not fit its parameter",
    ),
    # GridSampler fails a trial whose parameter is missing from the grid, uses out-of-range
    # grid values with a warning, and the worker cannot enumerate a float without a step.
    (
        "grid missing a parameter",
        _with(
            "sampler",
            {"type": "Grid", "grid": {"searchSpace": {"opt": ["sgd"], "lr": [0.01]}}},
        ),
        "must list exactly the parameters of spec.objective.searchSpace",
    ),
    (
        "grid value outside the space",
        _with(
            "sampler",
            {
                "type": "Grid",
                "grid": {
                    "searchSpace": {
                        "opt": ["sgd"],
                        "lr": [0.01],
                        "momentum": [0.5],
                        "layers": [9],
                    }
                },
            },
        ),
        "a value of layers does not fit its parameter",
    ),
    (
        "grid over a float without step",
        _with("sampler", {"type": "Grid"}),
        "give each float parameter a step",
    ),
    (
        "brute force over a float without step",
        _with("sampler", {"type": "BruteForce"}),
        "give each float parameter a step",
    ),
    (
        "grid too large",
        _with(
            f"{SS}.1",
            {"name": "lr", "float": {"low": 0.0, "high": 1.0, "step": 0.00001}},
            f"{SS}.3.int",
            {"low": 1, "high": 4},
            "sampler",
            {"type": "Grid"},
        ),
        "has more than 10000 values",
    ),
    (
        "grid with an empty value list",
        _with(
            "objective", FUNCTION, "sampler", {"type": "Grid", "grid": {"searchSpace": {"x": []}}}
        ),
        "searchSpace.x",
    ),
    (
        "grid with a partly enqueued trial",
        _with(
            "objective",
            FUNCTION,
            "sampler",
            {"type": "Grid", "grid": {"searchSpace": {"x": [1, 2], "y": ["a"]}}},
            "enqueueTrials",
            [{"x": 1}],
        ),
        "every spec.enqueueTrials entry must set every grid parameter",
    ),
    # Optuna's sampler constructors raise ValueError on these (the worker exits 1).
    (
        "TPE group without multivariate",
        _with("sampler", {"type": "TPE", "tpe": {"group": True, "multivariate": False}}),
        "group needs sampler.tpe.multivariate",
    ),
    (
        "CMA-ES separable with margin",
        _with("sampler", {"type": "CMAES", "cmaes": {"useSeparableCma": True, "withMargin": True}}),
        "useSeparableCma and withMargin cannot be combined",
    ),
    (
        "CMA-ES lr adapt with margin",
        _with("sampler", {"type": "CMAES", "cmaes": {"lrAdapt": True, "withMargin": True}}),
        "lrAdapt cannot be combined",
    ),
    (
        "QMC latin hypercube",
        _with("sampler", {"type": "QMC", "qmc": {"qmcType": "lhs"}}),
        'Unsupported value: "lhs"',
    ),
    # numpy's RandomState refuses seeds of 2**32 and more; process_seed would wrap it.
    ("seed beyond 32 bits", _with("sampler", {"seed": 2**32}), "sampler.seed"),
    # CmaEsSampler samples categorical parameters with its independent (random) sampler.
    (
        "CMA-ES over categorical only",
        _with(
            SS,
            [{"name": "opt", "categorical": {"choices": ["sgd", "adam"]}}],
            "sampler",
            {"type": "CMAES"},
        ),
        "CMAES sampler needs a float or int parameter",
    ),
    (
        "successive halving bootstrap with auto",
        _with("pruner", {"type": "SuccessiveHalving", "successiveHalving": {"bootstrapCount": 2}}),
        "bootstrapCount > 0 needs an integer minResource",
    ),
    (
        "hyperband bootstrap with auto",
        _with("pruner", {"type": "Hyperband", "hyperband": {"bootstrapCount": 2}}),
        "bootstrapCount > 0 needs an integer maxResource",
    ),
    (
        "hyperband max below min",
        _with("pruner", {"type": "Hyperband", "hyperband": {"minResource": 10, "maxResource": 3}}),
        "maxResource must be at least minResource",
    ),
    # Job.activeDeadlineSeconds and the operator's deadline overflow beyond any real budget.
    ("timeout beyond ten years", _with("budget", {"timeoutSeconds": 10**12}), "timeoutSeconds"),
    # The API server's pod validation, which would refuse the worker Job (or pods) later.
    (
        "unqualified resource name",
        _with("workers", {"resources": {"limits": {"gpu": 1}}}),
        "names are cpu, memory, ephemeral-storage",
    ),
    (
        "negative quantity",
        _with("workers", {"resources": {"requests": {"memory": "-1Gi"}}}),
        "quantities cannot be negative",
    ),
    (
        "request above limit",
        _with("workers", {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}}),
        "a request cannot exceed the limit",
    ),
    (
        "fractional GPU",
        _with("workers", {"resources": {"limits": {GPU: "0.5"}}}),
        "take whole numbers",
    ),
    (
        "GPU request without limit",
        _with("workers", {"resources": {"requests": {GPU: 1}}}),
        "cannot be overcommitted",
    ),
    (
        "env overriding the storage URL",
        _with("workers", {"env": [{"name": "OPTUNA_STORAGE_URL", "value": "sqlite://"}]}),
        "are set by the operator and cannot be overridden",
    ),
    (
        "env name with =",
        _with("workers", {"env": [{"name": "A=B", "value": "1"}]}),
        "needs a name of printable characters without '='",
    ),
    (
        "env with value and valueFrom",
        _with(
            "workers",
            {
                "env": [
                    {
                        "name": "A",
                        "value": "1",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                    }
                ]
            },
        ),
        "takes value or valueFrom, not both",
    ),
    (
        "mount without a volume",
        _with("workers", {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
        "every mount must name a volume",
    ),
    (
        "mount over the operator's /tmp",
        _with(
            "workers",
            {
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
            },
        ),
        "are the operator's writable emptyDirs",
    ),
    (
        "volume named like the operator's",
        _with("workers", {"volumes": [{"name": "optuna-shm", "emptyDir": {}}]}),
        "are the operator's own volumes",
    ),
    (
        "volume name not a DNS label",
        _with("workers", {"volumes": [{"name": "Data_1", "emptyDir": {}}]}),
        "needs a name that is a DNS label",
    ),
    (
        "toleration with a bad effect",
        _with(
            "workers", {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "Never"}]}
        ),
        "effect NoSchedule, PreferNoSchedule or NoExecute",
    ),
    (
        "toleration Exists with a value",
        _with("workers", {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}),
        "operator Exists takes no value",
    ),
    (
        "pod label the operator sets",
        _with("workers", {"podLabels": {"app.kubernetes.io/component": "trainer"}}),
        "the operator's own labels",
    ),
    (
        "pod label value too long",
        _with("workers", {"podLabels": {"team": "x" * 64}}),
        "podLabels.team",
    ),
    (
        "node selector key invalid",
        _with("workers", {"nodeSelector": {"gpu type": "a100"}}),
        "nodeSelector: keys must be valid label keys",
    ),
    (
        "service account not a DNS name",
        _with("workers", {"serviceAccountName": "Trainer_SA"}),
        "serviceAccountName",
    ),
    (
        "image with whitespace",
        _with("workers", {"image": "trainer:1.0 "}),
        "workers.image",
    ),
    (
        "storage key with a slash",
        _with("storage", {"secretRef": {"name": "db", "key": "a/b"}}),
        "secretRef.key",
    ),
    # New fields of the worker pod (issue 11): refused where the pod would be.
    ("zero shm size", _with("workers", {"shmSize": "0"}), "shmSize must be a positive quantity"),
    ("root user", _with("workers", {"runAsUser": 0}), "runAsUser"),
]


def _pod_spec(**spec: Any) -> dict[str, Any]:
    return _with("workers", {"podTemplate": {"spec": spec}})


SIDECAR: dict[str, Any] = {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}
HOST_H = {"host": "h", "port": 1}
APPARMOR = "container.apparmor.security.beta.kubernetes.io"
HOST = "hostNetwork, hostPID, hostIPC and nodeName are not allowed"
# spec.workers.podTemplate (issue 23): what the overlay may not take, refused at apply.
OVERLAY: list[tuple[str, dict[str, Any], str]] = [
    ("overlay hostNetwork", _pod_spec(hostNetwork=True), HOST),
    ("overlay hostPID", _pod_spec(hostPID=True), HOST),
    ("overlay hostIPC", _pod_spec(hostIPC=True), HOST),
    ("overlay nodeName", _pod_spec(nodeName="node-1"), HOST),
    ("overlay service account", _pod_spec(serviceAccountName="x"), "workers.serviceAccountName"),
    (
        "overlay privileged sidecar",
        _pod_spec(initContainers=[{**SIDECAR, "securityContext": {"privileged": True}}]),
        "privileged containers are not allowed",
    ),
    (
        "overlay added capability",
        _pod_spec(
            initContainers=[{**SIDECAR, "securityContext": {"capabilities": {"add": ["NET_RAW"]}}}]
        ),
        "capabilities cannot be added",
    ),
    (
        "overlay privilege escalation",
        _pod_spec(
            initContainers=[{**SIDECAR, "securityContext": {"allowPrivilegeEscalation": True}}]
        ),
        "without privilege escalation",
    ),
    (
        "overlay hostPort",
        _pod_spec(initContainers=[{**SIDECAR, "ports": [{"containerPort": 80, "hostPort": 80}]}]),
        "hostPort is not allowed",
    ),
    (
        "overlay sidecar in containers",
        _pod_spec(containers=[{"name": "proxy", "image": "proxy:1"}]),
        "put sidecars in initContainers",
    ),
    (
        "overlay worker command",
        _pod_spec(containers=[{"name": "worker", "command": ["sh"]}]),
        "are the operator's",
    ),
    (
        "overlay worker image",
        _pod_spec(containers=[{"name": "worker", "image": "other:1"}]),
        "are the operator's",
    ),
    (
        "overlay worker env contract",
        _pod_spec(containers=[{"name": "worker", "env": [{"name": "OPTUNA_STORAGE_URL"}]}]),
        "are set by the operator",
    ),
    (
        "overlay worker mount on /tmp",
        _pod_spec(
            containers=[{"name": "worker", "volumeMounts": [{"name": "v", "mountPath": "/tmp"}]}]
        ),
        "the operator's writable emptyDirs",
    ),
    (
        "overlay init container without image",
        _pod_spec(initContainers=[{"name": "init"}]),
        "needs an image",
    ),
    (
        "overlay operator volume name",
        _pod_spec(volumes=[{"name": "optuna-tmp", "emptyDir": {}}]),
        "other than optuna-tmp",
    ),
    (
        "overlay mount of no volume",
        _pod_spec(initContainers=[{**SIDECAR, "volumeMounts": [{"name": "x", "mountPath": "/x"}]}]),
        "every volumeMount must name a volume",
    ),
    (
        "overlay probe host",
        _pod_spec(
            initContainers=[{**SIDECAR, "startupProbe": {"httpGet": {"host": "h", "port": 1}}}]
        ),
        "probes and lifecycle hooks cannot name a host",
    ),
    (
        "overlay hook host",
        _pod_spec(
            containers=[
                {
                    "name": "worker",
                    "lifecycle": {"preStop": {"tcpSocket": {"host": "h", "port": 1}}},
                }
            ]
        ),
        "probes and lifecycle hooks cannot name a host",
    ),
    (
        "overlay AppArmor annotation",
        _with(
            "workers",
            {"podTemplate": {"metadata": {"annotations": {f"{APPARMOR}/worker": "unconfined"}}}},
        ),
        "AppArmor and seccomp annotations cannot be set",
    ),
    (
        "workers AppArmor annotation",
        _with("workers", {"podAnnotations": {f"{APPARMOR}/worker": "unconfined"}}),
        "workers.podAnnotations: keys must be valid annotation keys ([prefix/]name), and AppArmor",
    ),
    ("overlay dnsPolicy None alone", _pod_spec(dnsPolicy="None"), "dnsPolicy None needs dnsConfig"),
    (
        "overlay operator label",
        _with(
            "workers", {"podTemplate": {"metadata": {"labels": {"optuna-operator.io/study": "x"}}}}
        ),
        "the operator's own labels",
    ),
]


OWN_STORAGE = {"secretRef": {"name": "db"}}


def _dashboard_overlay(**spec: Any) -> dict[str, Any]:
    """A study on its own storage whose dashboard.podTemplate.spec is `spec`."""
    dashboard = {"secretRef": {"name": "db-ro"}, "podTemplate": {"spec": spec}}
    return _with("storage", OWN_STORAGE, "dashboard", dashboard)


# spec.dashboard.podTemplate: the workers' rules, with messages naming dashboard.podTemplate.
DASHBOARD_OVERLAY: list[tuple[str, dict[str, Any], str]] = [
    (
        "dashboard overlay on the namespace's dashboard",
        _with("dashboard", {"podTemplate": {"metadata": {"labels": {"team": "a"}}}}),
        "dashboard.podTemplate is for a study's own dashboard (spec.storage)",
    ),
    (
        "dashboard overlay hostNetwork",
        _dashboard_overlay(hostNetwork=True),
        "dashboard.podTemplate.spec: hostNetwork, hostPID, hostIPC and nodeName are not allowed",
    ),
    (
        "dashboard overlay privileged sidecar",
        _dashboard_overlay(initContainers=[{**SIDECAR, "securityContext": {"privileged": True}}]),
        "dashboard.podTemplate: privileged containers are not allowed",
    ),
    (
        "dashboard overlay service account",
        _dashboard_overlay(serviceAccountName="admin"),
        "dashboard.podTemplate.spec.serviceAccountName",
    ),
    (
        "dashboard overlay dashboard command",
        _dashboard_overlay(containers=[{"name": "dashboard", "command": ["sh"]}]),
        "dashboard.podTemplate.spec.containers[dashboard]: image, command",
    ),
    (
        "dashboard overlay readiness probe",
        _dashboard_overlay(containers=[{"name": "dashboard", "readinessProbe": {}}]),
        "readinessProbe are the operator's",
    ),
    (
        "dashboard overlay password env",
        _dashboard_overlay(containers=[{"name": "dashboard", "env": [{"name": "PGPASSWORD"}]}]),
        "dashboard.podTemplate.spec.containers[dashboard].env",
    ),
    (
        "dashboard overlay mount of no volume",
        _dashboard_overlay(
            initContainers=[{**SIDECAR, "volumeMounts": [{"name": "x", "mountPath": "/x"}]}]
        ),
        "dashboard.podTemplate: every volumeMount must name a volume",
    ),
]


def _custom(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def _create(kube_api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _custom(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return result


def test_there_are_at_least_30_invalid_cases() -> None:
    assert len(INVALID) >= 30
    # Issue 11: at least 20 more, moved from run time; names stay unique.
    assert len(MOVED) >= 20
    cases = INVALID + MOVED + OVERLAY + DASHBOARD_OVERLAY
    assert len({c[0] for c in cases}) == len(cases)


@pytest.mark.parametrize(
    ("case", "body", "message"),
    INVALID + MOVED + OVERLAY + DASHBOARD_OVERLAY,
    ids=[c[0] for c in INVALID + MOVED + OVERLAY + DASHBOARD_OVERLAY],
)
def test_invalid_spec_is_rejected_with_an_actionable_message(
    kube_api: client.ApiClient, crd_installed: None, case: str, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(client.ApiException) as info:
        _create(kube_api, "default", body | {"metadata": {"name": "invalid"}})
    assert info.value.status == 422, info.value.body
    details = json.loads(info.value.body)["message"]
    assert message in details, f"{case}: {details}"


def test_the_valid_base_spec_is_accepted(
    kube_api: client.ApiClient, crd_installed: None, namespace: str
) -> None:
    created = _create(kube_api, namespace, VALID)
    assert created["spec"]["sampler"]["type"] == "TPE"


def test_braces_that_are_no_placeholder_are_accepted(
    kube_api: client.ApiClient, crd_installed: None, namespace: str
) -> None:
    command = ["sh", "-c", "awk '{print $1}' f; echo ${HOME} {{opt}} {opt} {layers}"]
    _create(kube_api, namespace, _with("objective.command", command))


POD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "a"}, "annotations": {"example.com/owner": "ml"}},
    "spec": {
        "initContainers": [
            {
                **SIDECAR,
                "args": ["--port", "5000"],
                "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": True},
                "startupProbe": {"tcpSocket": {"port": 5000}},
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            }
        ],
        "containers": [
            {
                "name": "worker",
                "env": [{"name": "PROXY", "value": "localhost:5000"}],
                "resources": {"requests": {"ephemeral-storage": "1Gi"}},
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}},
                "ports": [{"name": "metrics", "containerPort": 9090}],
                "volumeMounts": [{"name": "optuna-tmp", "mountPath": "/scratch"}],
            }
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "schedulingGates": [{"name": "example.com/gate"}],
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["10.0.0.10"]},
        "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["registry.local"]}],
        "runtimeClassName": "gvisor",
        "readinessGates": [{"conditionType": "example.com/ready"}],
    },
}


@pytest.mark.pod_security("restricted")
def test_a_pod_template_is_kept_as_written_and_its_worker_pod_is_restricted(
    kube_api: client.ApiClient, crd_installed: None, namespace: str
) -> None:
    """The API server stores the overlay as written; the worker Job built from it, and its
    pod, pass the API server's own validation and Pod Security admission (restricted)."""
    template = copy.deepcopy(POD_TEMPLATE)
    # The API server admits a pod only with a RuntimeClass that exists: one per test.
    template["spec"]["runtimeClassName"] = namespace
    stored = _create(kube_api, namespace, _with("workers", {"podTemplate": template}))
    assert stored["spec"]["workers"]["podTemplate"] == template
    study = TuningStudy.model_validate(stored)
    assert study.spec.workers.pod_template is not None
    assert study.spec.workers.pod_template.to_wire() == template
    ctx = manifests.ChildContext(
        storage_secret="db", storage_key="url", worker_image="w:1", dashboard_image="d:1"
    )
    job = manifests.worker_job(study, ctx)
    client.BatchV1Api(kube_api).create_namespaced_job(namespace, job, dry_run="All")
    pod = {"metadata": {"name": "worker", **job["spec"]["template"]["metadata"]}}
    pod["spec"] = job["spec"]["template"]["spec"]
    node = client.NodeV1Api(kube_api)
    node.create_runtime_class({"metadata": {"name": namespace}, "handler": "runsc"})
    try:
        core = client.CoreV1Api(kube_api)
        created = core.create_namespaced_pod(namespace, pod, dry_run="All")
        # The control: without the floor the operator adds, the sidecar is refused.
        bare = copy.deepcopy(pod)
        del bare["spec"]["initContainers"][0]["securityContext"]
        with pytest.raises(client.ApiException) as info:
            core.create_namespaced_pod(namespace, bare, dry_run="All")
        refusal = json.loads(info.value.body)["message"]
        assert 'violates PodSecurity "restricted' in refusal, refusal
        assert 'container "proxy" must set' in refusal, refusal
    finally:
        node.delete_runtime_class(namespace)
    (sidecar,) = created.spec.init_containers
    assert sidecar.restart_policy == "Always"
    assert sidecar.security_context.capabilities.drop == ["ALL"]
    assert created.spec.topology_spread_constraints[0].topology_key == "zone"


DASHBOARD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "a"}},
    "spec": {
        "initContainers": [
            {
                **SIDECAR,
                "securityContext": {"runAsUser": 1000},
                "volumeMounts": [{"name": "certs", "mountPath": "/certs"}],
            }
        ],
        "containers": [
            {
                "name": "dashboard",
                "env": [{"name": "TZ", "value": "UTC"}],
                "resources": {"limits": {"memory": "512Mi"}},
            }
        ],
        "volumes": [{"name": "certs", "emptyDir": {}}],
        "tolerations": [{"key": "infra", "operator": "Exists"}],
    },
}


@pytest.mark.pod_security("restricted")
def test_a_dashboard_pod_template_is_kept_and_its_dashboard_pod_is_restricted(
    kube_api: client.ApiClient, crd_installed: None, namespace: str
) -> None:
    """A study's own dashboard with spec.dashboard.podTemplate: stored as written, and the
    Deployment built from it passes the API server and Pod Security admission (restricted)."""
    body = _with(
        "storage",
        OWN_STORAGE,
        "dashboard",
        {"secretRef": {"name": "db-ro"}, "podTemplate": DASHBOARD_TEMPLATE},
    )
    stored = _create(kube_api, namespace, body)
    assert stored["spec"]["dashboard"]["podTemplate"] == DASHBOARD_TEMPLATE
    study = TuningStudy.model_validate(stored)
    ctx = manifests.ChildContext(
        storage_secret="db", storage_key="url", worker_image="w:1", dashboard_image="d:1"
    )
    deployment = manifests.study_dashboard(study, ctx)[0]
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, deployment, dry_run="All")
    pod = {"metadata": {"name": "dashboard", **deployment["spec"]["template"]["metadata"]}}
    pod["spec"] = deployment["spec"]["template"]["spec"]
    created = client.CoreV1Api(kube_api).create_namespaced_pod(namespace, pod, dry_run="All")
    (sidecar,) = created.spec.init_containers
    assert sidecar.security_context.capabilities.drop == ["ALL"]
    assert created.spec.containers[0].resources.limits == {"memory": "512Mi"}


def _kubectl_create_warnings(bed: Bed, namespace: str, body: dict[str, Any]) -> str:
    """What `kubectl create` prints on stderr: the API server's warnings."""
    kubectl = [str(bed.bin_dir / "kubectl"), "--kubeconfig", str(bed.kubeconfig)]
    result = subprocess.run(
        [*kubectl, "create", "--namespace", namespace, "-f", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stderr


def test_startup_trials_taking_half_the_budget_warn_at_apply(
    bed: Bed, crd_installed: None, namespace: str
) -> None:
    # VALID: the TPE sampler's 10 random startup trials against budget.trials 10.
    warned = _kubectl_create_warnings(bed, namespace, VALID)
    assert "the TPE sampler samples its first 10 trials at random" in warned, warned
    assert "budget.trials (10)" in warned and "BudgetAdvice" in warned, warned
    fits = _with("budget", {"trials": 100}) | {"metadata": {"name": "fits"}}
    assert "BudgetAdvice" not in _kubectl_create_warnings(bed, namespace, fits)
    few = _with("sampler", {"type": "TPE", "tpe": {"nStartupTrials": 3}})
    assert "BudgetAdvice" not in _kubectl_create_warnings(
        bed, namespace, few | {"metadata": {"name": "few"}}
    )


def test_long_names_are_rejected(kube_api: client.ApiClient, crd_installed: None) -> None:
    with pytest.raises(client.ApiException) as info:
        _create(kube_api, "default", VALID | {"metadata": {"name": "n" * 46}})
    assert "at most 45 characters" in info.value.body


def test_directions_and_study_name_are_immutable(
    kube_api: client.ApiClient, crd_installed: None, namespace: str
) -> None:
    _create(kube_api, namespace, VALID)
    for patch, message in [
        ({"spec": {"directions": ["maximize"]}}, "directions cannot change"),
        ({"spec": {"studyName": "other"}}, "studyName cannot change"),
    ]:
        with pytest.raises(client.ApiException) as info:
            _custom(kube_api).patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "v", patch
            )
        assert message in info.value.body


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted_and_defaults_filled(
    kube_api: client.ApiClient, crd_installed: None, namespace: str, path: Path
) -> None:
    body = yaml.safe_load(path.read_text())
    stored = _create(kube_api, namespace, body)
    study = TuningStudy.model_validate(stored)
    spec = stored["spec"]
    # Defaults come from the API server, not from the client.
    assert spec["deletionPolicy"] == "Retain"
    assert spec["workers"]["heartbeatIntervalSeconds"] == 30
    assert spec["budget"]["maxFailedTrials"] >= 0
    assert "type" in spec["sampler"] and "type" in spec["pruner"]
    assert study.spec.model_dump() == TuningStudy.model_validate(body).spec.model_dump()
