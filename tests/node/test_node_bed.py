"""What only a real node can show: images, containers, users, read-only root filesystems,
kill signals inside containers, pod networking, Services, NetworkPolicy and kubelet's
streaming API.

The study below runs once for the module (one chart install, one TuningStudy); each test
checks one thing about it. A command objective keeps trials short on a 2-core machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import urllib.request
from typing import Any

import pytest
from tests.node import netcheck
from tests.node.conftest import (
    BUSYBOX_IMAGE,
    DASHBOARD_PEER,
    EXAMPLES_IMAGE,
    PGBOUNCER_IMAGE,
    STUDY_NS,
    Kube,
)

STUDY = "node-shell"
TRIALS = 16


def study_manifest() -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: tuning.optuna-operator.io/v1alpha1
        kind: TuningStudy
        metadata:
          name: {STUDY}
        spec:
          directions: [minimize]
          objective:
            command: [bash, examples/command/objective.sh, "--optimizer", "{{optimizer}}",
                      "--lr", "{{lr}}"]
            searchSpace:
              - name: optimizer
                categorical: {{choices: [sgd, adam]}}
              - name: lr
                float: {{low: 1.0e-4, high: 1.0, log: true}}
              - name: momentum
                float: {{low: 0.0, high: 0.99}}
                when: {{param: optimizer, in: [sgd]}}
              - name: layers
                int: {{low: 1, high: 8}}
            trialTimeoutSeconds: 60
          budget: {{trials: {TRIALS}, maxFailedTrials: 5}}
          sampler: {{type: TPE, seed: 1}}
          workers:
            parallelism: 2
            image: {EXAMPLES_IMAGE}
            env:
              - {{name: EPOCH_SECONDS, value: "0.3"}}
          dashboard:
            enabled: true
        """
    )


def status(kube: Kube, ns: str) -> dict[str, Any]:
    return dict(kube.get("ts", STUDY, "-n", ns).get("status") or {})


def worker_pods(kube: Kube, ns: str) -> list[dict[str, Any]]:
    items = kube.get("pods", "-n", ns, "-l", "app.kubernetes.io/component=worker")["items"]
    return list(items)


def running_worker(kube: Kube, ns: str) -> dict[str, Any] | None:
    for pod in worker_pods(kube, ns):
        for cs in pod.get("status", {}).get("containerStatuses", []):
            if "running" in cs.get("state", {}):
                return pod
    return None


@pytest.fixture(scope="module")
def study_ns(kube: Kube, chart: str) -> str:
    """The namespace the chart's operator serves (restricted), with the study in it."""
    kube.kubectl("apply", "-n", STUDY_NS, "-f", "-", stdin=study_manifest())
    return STUDY_NS


@pytest.fixture(scope="module")
def killed(kube: Kube, study_ns: str) -> dict[str, Any]:
    """SIGKILL a worker's main process inside its container while it runs trials."""
    pod = kube.wait_for(lambda: running_worker(kube, study_ns), "a running worker", 240)
    kube.wait_for(
        lambda: (status(kube, study_ns).get("trials") or {}).get("complete", 0) >= 2,
        "two complete trials",
        240,
    )
    cid = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    kube.ctr("tasks", "kill", "--signal", "SIGKILL", cid)
    name = pod["metadata"]["name"]

    def reported() -> dict[str, Any] | None:
        # Read now: once the other workers leave (live trials hold every slot), the Job is
        # complete and its replacement for the killed worker's retry takes the old pods.
        current = {p["metadata"]["name"]: p for p in worker_pods(kube, study_ns)}.get(name)
        statuses = ((current or {}).get("status") or {}).get("containerStatuses") or []
        if not statuses:
            return None
        cs = statuses[0]
        term = (cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get(
            "terminated"
        )
        return current if term else None

    return dict(kube.wait_for(reported, "kubelet to report the killed worker", 120))


@pytest.fixture(scope="module")
def finished(kube: Kube, study_ns: str, killed: dict[str, Any]) -> dict[str, Any]:
    return dict(
        kube.wait_for(
            lambda: (s := status(kube, study_ns)).get("phase") in ("Succeeded", "Failed") and s,
            f"study {STUDY} to finish",
            600,
        )
    )


def test_plain_pod_runs_in_a_container(kube: Kube) -> None:
    ns = kube.namespace(restricted=False)
    kube.kubectl(
        "run",
        "hello",
        "-n",
        ns,
        f"--image={BUSYBOX_IMAGE}",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        # $$ is Kubernetes' escape for a literal $ in command and args.
        "echo pid $$$$ on $(hostname)",
    )
    kube.wait_for(
        lambda: kube.get("pod", "hello", "-n", ns)["status"].get("phase") == "Succeeded",
        "pod hello to succeed",
        120,
    )
    # Its own PID namespace (pid 1) and UTS namespace (hostname = pod name); logs through
    # the API server from kubelet.
    assert kube.kubectl("logs", "-n", ns, "hello").strip() == "pid 1 on hello"
    assert kube.bed.pod_log(ns, "hello") == "pid 1 on hello\n"


def test_chart_operator_runs_in_cluster_as_its_user_with_a_read_only_root(
    kube: Kube, chart: str
) -> None:
    pod = kube.get("pods", "-n", chart, "-l", "app.kubernetes.io/component=operator")["items"][0]
    name = pod["metadata"]["name"]
    probe = (
        "import os, pathlib\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n"
        "    pathlib.Path('/probe').write_text('x')\n"
        "except OSError as e:\n"
        "    print(e.strerror)\n"
        "print(pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount/token').exists())\n"
    )
    out = kube.kubectl("exec", "-n", chart, name, "--", "python", "-c", probe).split("\n")
    assert out[0] == "65532 65532"
    assert out[1] == "Read-only file system"
    assert out[2] == "True"  # in-cluster config from the mounted ServiceAccount token


def test_study_succeeds_in_real_containers_despite_a_sigkilled_worker(
    kube: Kube, study_ns: str, killed: dict[str, Any], finished: dict[str, Any]
) -> None:
    assert finished["phase"] == "Succeeded", finished.get("conditions")
    trials = finished["trials"]
    assert trials["complete"] + trials.get("pruned", 0) >= TRIALS
    # The killed container really died of SIGKILL (137) and kubelet reported it.
    cs = killed["status"]["containerStatuses"][0]
    term = cs.get("lastState", {}).get("terminated") or cs["state"].get("terminated")
    assert term is not None and term["exitCode"] == 137, cs


def test_worker_runs_as_the_image_user_and_logs_stream_from_kubelet(
    kube: Kube, study_ns: str, finished: dict[str, Any]
) -> None:
    pods = worker_pods(kube, study_ns)
    assert pods
    ctx = pods[0]["spec"]["securityContext"]
    assert ctx["runAsUser"] == 65532 and ctx["runAsNonRoot"] is True
    logs = "".join(
        kube.kubectl("logs", "-n", study_ns, p["metadata"]["name"], check=False) for p in pods
    )
    assert "trial" in logs, logs[-2000:]


def test_dashboard_answers_only_the_allowed_namespaces(
    kube: Kube, study_ns: str, finished: dict[str, Any]
) -> None:
    """The namespace's one dashboard (Deployment, Service and NetworkPolicy
    `optuna-dashboard`) lists the study to a pod of a namespace the chart's
    dashboard.allowedFrom names (DASHBOARD_PEER), by pod IP and through its Service, and
    refuses pods of any other namespace, the study's own included (its workers)."""
    kube.get("networkpolicy", "optuna-dashboard", "-n", study_ns)
    kube.wait_for(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for p in kube.get(
                "pods", "-n", study_ns, "-l", "app.kubernetes.io/component=dashboard"
            )["items"]
            for c in p.get("status", {}).get("conditions", [])
        ),
        "the dashboard pod to be Ready (its readiness probe, run by kubelet)",
        180,
    )
    [pod] = kube.get("pods", "-n", study_ns, "-l", "app.kubernetes.io/component=dashboard")["items"]
    svc = kube.get("svc", "optuna-dashboard", "-n", study_ns)
    urls = {
        "pod IP": f"http://{pod['status']['podIP']}:8080/api/studies",
        "ClusterIP": f"http://{svc['spec']['clusterIP']}:8080/api/studies",
    }
    netcheck.client(kube, study_ns, "dash-neighbour")
    netcheck.wait_ready(kube, study_ns, "dash-neighbour")
    allowed = netcheck.check_admits_only_labelled_namespaces(
        kube,
        urls,
        DASHBOARD_PEER,
        expect=STUDY,
        also_denied=((study_ns, "dash-neighbour"),),
    )
    body = netcheck.until_answer(kube, allowed, "client", urls["ClusterIP"], STUDY).text
    names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
    assert any(STUDY in n for n in names), names


def test_port_forward_is_the_way_in_and_lists_only_its_namespaces_studies(
    kube: Kube, study_ns: str, finished: dict[str, Any]
) -> None:
    """With the NetworkPolicy enforced, `kubectl port-forward` (through the API server and
    the kubelet, never the pod network) still reaches the namespace's dashboard, and it lists
    this namespace's studies only, from its read-only role."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    forward = subprocess.Popen(
        [
            str(kube.bed.bin_dir / "kubectl"),
            "--kubeconfig",
            str(kube.bed.kubeconfig),
            "port-forward",
            "-n",
            study_ns,
            "svc/optuna-dashboard",
            f"{port}:8080",
            "--address=127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def listed() -> list[str] | None:
        try:
            url = f"http://127.0.0.1:{port}/api/studies"
            with urllib.request.urlopen(url, timeout=5) as response:
                studies = json.loads(response.read())["study_summaries"]
        except OSError:
            return None
        return [str(s["study_name"]) for s in studies]

    try:
        names = kube.wait_for(listed, "the dashboard through kubectl port-forward", 120)
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    assert names and all(name.startswith(f"{study_ns}.") for name in names), names
    assert any(STUDY in name for name in names), names
    # The dashboard holds no read-write credential: its only Secret is the read-only password.
    deployment = kube.get("deployment", "optuna-dashboard", "-n", study_ns)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    refs = [e["valueFrom"]["secretKeyRef"]["key"] for e in container.get("env", [])]
    assert refs == ["readonly-password"], refs


def test_workers_reach_postgresql_through_the_projects_pgbouncer_image(
    kube: Kube, chart: str, study_ns: str, finished: dict[str, Any]
) -> None:
    """The chart's PgBouncer runs the project's image in a real container, and the study's
    workers (one of them SIGKILLed) finished it through PgBouncer as their namespace's role."""
    assert finished["phase"] == "Succeeded", finished
    [pod] = kube.get("pods", "-n", chart, "-l", "app.kubernetes.io/component=pgbouncer")["items"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == PGBOUNCER_IMAGE
    assert all(cs["ready"] for cs in pod["status"]["containerStatuses"]), pod["status"]
    for worker in worker_pods(kube, study_ns):
        [storage] = [
            env
            for env in worker["spec"]["containers"][0]["env"]
            if env["name"] == "OPTUNA_STORAGE_URL"
        ]
        assert storage["valueFrom"]["secretKeyRef"]["key"] == "pooled-url", storage
    role = "optuna_rw_t_" + study_ns.replace("-", "_")
    logs = kube.kubectl("logs", "-n", chart, pod["metadata"]["name"])
    assert f"login attempt: db=optuna user={role}" in logs, logs[-3000:]
