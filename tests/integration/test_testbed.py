"""The test bed itself, proven against the real control plane, PostgreSQL and executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from kubernetes import client

from testbed import Bed, wait_for
from testbed.paths import versions
from testbed.ports import free_port

pytestmark = pytest.mark.integration

PINS = versions()


def run(bed: Bed, *argv: str) -> str:
    done = subprocess.run(
        argv, env={**os.environ, **bed.env()}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def python_pod(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A single-container pod running `python -c code`; spec keys override the pod spec."""
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.11-slim",
        "command": ["python", "-c", code],
    }
    container.update(spec.pop("container", {}))
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    pod_spec.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phases: set[str]) -> Any:
    def finished() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_for(finished, f"pod {namespace}/{name} to reach {sorted(phases)}", 60)


def test_kubectl_reports_pinned_server_version(bed: Bed) -> None:
    out = json.loads(run(bed, "kubectl", "version", "--output=json"))
    assert out["serverVersion"]["gitVersion"] == PINS["K8S_VERSION"]
    # The pinned kubectl comes first on the bed's PATH, not the machine's own.
    assert out["clientVersion"]["gitVersion"] == PINS["K8S_VERSION"]


def test_helm_reports_pinned_version(bed: Bed) -> None:
    assert run(bed, "helm", "version", "--template={{.Version}}").strip() == PINS["HELM_VERSION"]


def test_node_is_ready_with_gpu_capacity(kube_api: client.ApiClient, bed: Bed) -> None:
    node = client.CoreV1Api(kube_api).read_node(bed.options.node_name)
    assert node.status.allocatable["nvidia.com/gpu"] == bed.options.capacity["nvidia.com/gpu"]
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"


def test_job_with_parallelism_three_completes_and_is_garbage_collected(
    kube_api: client.ApiClient, namespace: str, bed: Bed
) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    code = "import os, time; time.sleep(2); print('done', os.environ['POD_NAME'])"
    pod_name = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    template = python_pod("unused", code, container={"env": [pod_name]})
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "trio"},
        "spec": {
            "parallelism": 3,
            "completions": 3,
            "backoffLimit": 0,
            "template": {"spec": template["spec"]},
        },
    }
    batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        conditions = batch.read_namespaced_job("trio", namespace).status.conditions or []
        failed = [c for c in conditions if c.type == "Failed" and c.status == "True"]
        assert not failed, f"Job failed: {failed}"
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    wait_for(complete, "Job trio to complete", 90)
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=trio").items
    assert len(pods) == 3
    assert {p.status.phase for p in pods} == {"Succeeded"}
    for pod in pods:
        assert bed.pod_log(namespace, pod.metadata.name).strip() == f"done {pod.metadata.name}"
    # parallelism 3: every pod started before any finished.
    states = [p.status.container_statuses[0].state.terminated for p in pods]
    assert max(s.started_at for s in states) < min(s.finished_at for s in states)

    batch.delete_namespaced_job("trio", namespace, propagation_policy="Background")
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector="job-name=trio").items,
        "the garbage collector to delete Job trio's pods",
        60,
    )


@pytest.mark.pod_security("restricted")
def test_restricted_namespace_rejects_noncompliant_pod(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    with pytest.raises(client.ApiException) as rejected:
        core.create_namespaced_pod(namespace, python_pod("loose", "print('hi')"))
    assert rejected.value.status == 403
    assert "violates PodSecurity" in rejected.value.body

    compliant = python_pod(
        "strict",
        "print('hi')",
        securityContext={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        container={
            "securityContext": {
                "runAsUser": 1000,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }
        },
    )
    core.create_namespaced_pod(namespace, compliant)
    assert (
        wait_phase(core, namespace, "strict", {"Succeeded", "Failed"}).status.phase == "Succeeded"
    )


def test_optuna_study_on_postgres_loads_from_second_process(storage_url: str) -> None:
    name = f"bed-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage_url, direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -10, 10) - 2) ** 2, n_trials=5)
    code = (
        "import json, sys, optuna\n"
        "s = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])\n"
        "print(json.dumps({'n': len(s.trials), 'best': s.best_value}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, name, storage_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"n": 5, "best": study.best_value}


def test_env_from_secret_config_map_and_fields_reaches_process(
    kube_api: client.ApiClient, namespace: str, bed: Bed
) -> None:
    core = client.CoreV1Api(kube_api)
    token = uuid.uuid4().hex
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"url": f"postgres://{token}"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"LEVEL": "debug"}}
    )
    code = (
        "import os, sys; print(*(os.environ[k] for k in ('STORAGE', 'LEVEL', 'NS')), *sys.argv[1:])"
    )
    pod = python_pod(
        "envy",
        code,
        container={
            "args": ["$(NS)-suffix", "$$(NS)"],
            "env": [
                {"name": "STORAGE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "url"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}}],
        },
    )
    core.create_namespaced_pod(namespace, pod)
    assert wait_phase(core, namespace, "envy", {"Succeeded", "Failed"}).status.phase == "Succeeded"
    expected = f"postgres://{token} debug {namespace} {namespace}-suffix $(NS)"
    assert bed.pod_log(namespace, "envy").strip() == expected


def test_failing_container_reports_stderr_tail_as_termination_message(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    code = "import sys\nfor i in range(200): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    pod = python_pod("crash", code, container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    core.create_namespaced_pod(namespace, pod)
    failed = wait_phase(core, namespace, "crash", {"Succeeded", "Failed"})
    assert failed.status.phase == "Failed"
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    # kubelet keeps the last 80 lines: 120..199.
    assert terminated.message.endswith("line 199\n")
    assert "line 120\n" in terminated.message
    assert "line 119\n" not in terminated.message


def test_active_deadline_kills_pod(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    pod = python_pod(
        "slow",
        "import time; time.sleep(600)",
        activeDeadlineSeconds=2,
        terminationGracePeriodSeconds=1,
    )
    core.create_namespaced_pod(namespace, pod)
    failed = wait_phase(core, namespace, "slow", {"Succeeded", "Failed"})
    assert (failed.status.phase, failed.status.reason) == ("Failed", "DeadlineExceeded")


def test_deleting_pod_sends_sigterm_and_removes_it(
    kube_api: client.ApiClient, namespace: str, bed: Bed
) -> None:
    core = client.CoreV1Api(kube_api)
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM'), sys.exit(0)))\n"
        "print('waiting')\n"
        "time.sleep(600)\n"
    )
    core.create_namespaced_pod(namespace, python_pod("sleeper", code))
    wait_phase(core, namespace, "sleeper", {"Running"})
    wait_for(lambda: "waiting" in bed.pod_log(namespace, "sleeper"), "sleeper's first output", 30)
    running = core.read_namespaced_pod("sleeper", namespace)
    pid = int(running.status.container_statuses[0].container_id.removeprefix("testbed://"))
    core.delete_namespaced_pod("sleeper", namespace, grace_period_seconds=10)

    def deleted() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(deleted, "pod sleeper to be deleted", 30)
    assert "got SIGTERM" in bed.pod_log(namespace, "sleeper")
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_on_failure_restarts_container_in_place(
    kube_api: client.ApiClient, namespace: str, bed: Bed, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_api)
    marker = tmp_path / "second-attempt"
    code = (
        "import pathlib, sys\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n"
        "    m.touch(); print('first attempt fails'); sys.exit(1)\n"
        "print('second attempt succeeds')\n"
    )
    core.create_namespaced_pod(namespace, python_pod("flaky", code, restartPolicy="OnFailure"))
    done = wait_phase(core, namespace, "flaky", {"Succeeded", "Failed"})
    status = done.status.container_statuses[0]
    assert (done.status.phase, status.restart_count) == ("Succeeded", 1)
    assert status.last_state.terminated.exit_code == 1
    assert "second attempt succeeds" in bed.pod_log(namespace, "flaky")
    assert "first attempt fails" in bed.pod_log(namespace, "flaky", previous=True)


def test_gpu_requests_are_scheduled_within_capacity(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    core.create_namespaced_pod(namespace, python_pod("one-gpu", "print('ok')", container=gpu))
    assert (
        wait_phase(core, namespace, "one-gpu", {"Succeeded", "Failed"}).status.phase == "Succeeded"
    )

    too_many = {"resources": {"limits": {"nvidia.com/gpu": "99"}}}
    core.create_namespaced_pod(namespace, python_pod("greedy", "print('no')", container=too_many))

    def unschedulable() -> bool:
        conditions = core.read_namespaced_pod("greedy", namespace).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    wait_for(unschedulable, "the scheduler to refuse a 99-GPU pod", 30)


def test_deployment_becomes_available_through_http_readiness_probe(
    kube_api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube_api)
    port = free_port()
    container = {
        "name": "web",
        "image": "python:3.11-slim",
        "command": ["python", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 2},
            },
        },
    }
    started = time.monotonic()
    apps.create_namespaced_deployment(namespace, deployment)
    wait_for(
        lambda: (
            (apps.read_namespaced_deployment("web", namespace).status.available_replicas or 0) == 1
        ),
        "Deployment web to become available",
        60,
    )
    assert time.monotonic() - started < 60


def test_init_containers_run_first_in_order(
    kube_api: client.ApiClient, namespace: str, bed: Bed, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_api)
    trail = tmp_path / "trail"
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2])"
    init = [
        {"name": n, "image": "busybox", "command": ["python", "-c", append, str(trail), n]}
        for n in ("one", "two")
    ]
    code = f"print(open({str(trail)!r}).read())"
    core.create_namespaced_pod(namespace, python_pod("ordered", code, initContainers=init))
    done = wait_phase(core, namespace, "ordered", {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded"
    assert [s.state.terminated.reason for s in done.status.init_container_statuses] == [
        "Completed",
        "Completed",
    ]
    assert bed.pod_log(namespace, "ordered").strip() == "onetwo"
