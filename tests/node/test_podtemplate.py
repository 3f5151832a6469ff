"""spec.workers.podTemplate in real containers: a sidecar (an init container with
restartPolicy Always) and a topology spread constraint reach the worker pods, kubelet runs the
sidecar beside every worker and the study succeeds; a hostPath volume in the overlay is
refused at apply by the chart's admission policy.

The integration bed proves the refusals of the API and the policy in detail
(tests/integration/test_api_validation.py, test_admission_guard.py::
test_host_volumes_are_refused_even_for_editors); here they meet the chart as installed.
"""

from __future__ import annotations

import json
from typing import Any

from tests.node.conftest import BUSYBOX_IMAGE, STUDY_NS, Kube

STUDY = "node-overlay"
TRIALS = 4
STUDY_LABEL = "optuna-operator.io/study"
# The sidecar writes into the worker's /tmp volume, then says it is up; its startup probe
# holds the worker container back until the file exists (kubelet starts the containers after
# a sidecar only once it has started), so a trial that reads the file proves the sidecar ran
# in that pod first. TERM ends it at once when the worker is done (sh as pid 1 ignores TERM).
SIDECAR = {
    "name": "sidecar",
    "image": BUSYBOX_IMAGE,
    "restartPolicy": "Always",
    "command": [
        "sh",
        "-c",
        "echo up in $(hostname) > /tmp/sidecar-up && echo sidecar up in $(hostname) && "
        "trap 'exit 0' TERM && while true; do sleep 1; done",
    ],
    "startupProbe": {"exec": {"command": ["test", "-f", "/tmp/sidecar-up"]}, "periodSeconds": 1},
    "volumeMounts": [{"name": "optuna-tmp", "mountPath": "/tmp"}],
}
SPREAD = {
    "maxSkew": 1,
    "topologyKey": "kubernetes.io/hostname",
    "whenUnsatisfiable": "DoNotSchedule",
    "labelSelector": {"matchLabels": {STUDY_LABEL: STUDY}},
}
# Each trial prints what the sidecar wrote: without the file it fails, and the study with it.
OBJECTIVE = (
    "import pathlib; print('read:', pathlib.Path('/tmp/sidecar-up').read_text().strip()); "
    "print('optuna:result', ({x} - 1) ** 2)"
)


def study(name: str, pod_spec: dict[str, Any]) -> str:
    body = {
        "apiVersion": "tuning.optuna-operator.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": {
            "directions": ["minimize"],
            "objective": {
                "command": ["python", "-c", OBJECTIVE],
                "searchSpace": [{"name": "x", "float": {"low": -2.0, "high": 2.0}}],
            },
            "budget": {"trials": TRIALS, "maxFailedTrials": 1},
            "sampler": {"type": "TPE", "seed": 3},
            "workers": {"parallelism": 2, "podTemplate": {"spec": pod_spec}},
            "dashboard": {"enabled": False},
        },
    }
    return json.dumps(body)


def sidecar_up(kube: Kube) -> tuple[dict[str, Any], str] | None:
    """A worker pod whose sidecar kubelet reports started, and that sidecar's log."""
    pods = kube.get("pods", "-n", STUDY_NS, "-l", f"{STUDY_LABEL}={STUDY}")["items"]
    for pod in pods:
        statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
        if any(s["name"] == "sidecar" and s.get("started") for s in statuses):
            name = pod["metadata"]["name"]
            log = kube.kubectl("logs", "-n", STUDY_NS, name, "-c", "sidecar")
            return (pod, log) if log else None
    return None


def test_a_sidecar_and_topology_spread_run_with_the_workers(kube: Kube, chart: str) -> None:
    pod_spec = {"initContainers": [SIDECAR], "topologySpreadConstraints": [SPREAD]}
    kube.kubectl("apply", "-n", STUDY_NS, "-f", "-", stdin=study(STUDY, pod_spec))

    pod, log = kube.wait_for(lambda: sidecar_up(kube), "a worker pod's sidecar to start", 300)
    name = pod["metadata"]["name"]
    assert log == f"sidecar up in {name}\n"
    spec = pod["spec"]
    assert spec["topologySpreadConstraints"] == [SPREAD]
    (sidecar,) = spec["initContainers"]
    assert sidecar["image"] == BUSYBOX_IMAGE and sidecar["restartPolicy"] == "Always"
    # The restricted floor reaches the overlay's container too.
    assert sidecar["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["nodeName"]  # the scheduler placed it under the constraint

    def finished() -> dict[str, Any] | None:
        status = kube.get("ts", STUDY, "-n", STUDY_NS).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = kube.wait_for(finished, f"study {STUDY} to finish", 600)
    assert status["phase"] == "Succeeded", status.get("conditions")
    assert status["trials"]["complete"] == TRIALS, status["trials"]
    assert status["trials"].get("failed", 0) == 0, status["trials"]


def test_a_hostpath_volume_in_the_overlay_is_refused_at_apply(kube: Kube, chart: str) -> None:
    volume = {"name": "host", "hostPath": {"path": "/var/run"}}
    mounted = {**SIDECAR, "volumeMounts": [{"name": "host", "mountPath": "/host"}]}
    body = study("node-hostpath", {"initContainers": [mounted], "volumes": [volume]})

    def refusal() -> str | None:
        out = kube.kubectl(
            "apply", "--dry-run=server", "-n", STUDY_NS, "-f", "-", stdin=body, check=False
        )
        return out if "denied" in out or "is not allowed" in out else None

    message = kube.wait_for(refusal, "the admission policy to refuse a hostPath volume", 60)
    assert "volume host (hostPath) is not allowed" in message, message
    assert kube.kubectl("get", "ts", "-n", STUDY_NS, "-o", "name").count("node-hostpath") == 0
