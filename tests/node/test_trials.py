"""Every trial through the Kubernetes API, with no database credential: `optuna-operator
trials NAME` and StudyClient.trials() as a user bound to `view` in the study's namespace, read
from the namespace's read-only dashboard pod through the API server's service proxy, and a
user of another namespace refused.

Real everything: the chart's operator runs the study's worker pods in containers, the chart's
dashboard pod reads the database through the namespace's read-only role, the API server
authorizes each user's own ServiceAccount token (a kubeconfig of its own) with the chart's
ClusterRole aggregated into `view`, and reaches the pod through its egress (as through
konnectivity) past the dashboard's NetworkPolicy.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from tests.node.conftest import EXAMPLES_IMAGE, STUDY_NS, Kube
from tests.token_users import token_user

from optuna_operator.client import StudyClient
from optuna_operator.trials import fetch_trials

STUDY = "node-trials"
TRIALS = 8
DASHBOARD = "optuna-dashboard"
PROXY = f"services/{DASHBOARD}:8080"
FINISHED = re.compile(r"Trial (\d+) finished with value (\S+) and parameters")


def study_manifest() -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: tuning.optuna-operator.io/v1alpha1
        kind: TuningStudy
        metadata:
          name: {STUDY}
        spec:
          directions: [minimize]
          metricNames: [loss]
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
          budget: {{trials: {TRIALS}}}
          sampler: {{type: TPE, seed: 3}}
          workers:
            parallelism: 2
            image: {EXAMPLES_IMAGE}
            env:
              - {{name: EPOCH_SECONDS, value: "0.1"}}
        """
    )


@dataclass(frozen=True)
class Users:
    reader: Path  # view in STUDY_NS
    outsider: Path  # view in other_ns only
    other_ns: str


def as_user(kube: Kube, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with the user's own kubeconfig (not the bed's admin)."""
    return subprocess.run(
        [str(kube.bed.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def can_i(kube: Kube, kubeconfig: Path, namespace: str, verb: str, resource: str) -> bool:
    sub = ["--subresource=proxy"] if resource.startswith("services/") else []
    out = as_user(kube, kubeconfig, "auth", "can-i", verb, resource, "-n", namespace, *sub)
    assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
    return out.stdout.strip() == "yes"


def trials_cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`optuna-operator trials` in a process of its own, as the user runs it."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "optuna_operator.cli", "trials", STUDY, "-n", STUDY_NS),
            *("--kubeconfig", str(kubeconfig), *args),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def finished(kube: Kube, chart: str) -> dict[str, Any]:
    """The study run by the chart's operator in worker pods to Succeeded, and the
    namespace's dashboard pod Ready (kubelet's readiness probe)."""
    kube.kubectl("apply", "-n", STUDY_NS, "-f", "-", stdin=study_manifest())

    def done() -> dict[str, Any] | None:
        status = kube.get("ts", STUDY, "-n", STUDY_NS).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status: dict[str, Any] = kube.wait_for(done, f"study {STUDY} to finish", 600)
    assert status["phase"] == "Succeeded", status.get("conditions")
    kube.wait_for(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for p in kube.get(
                "pods", "-n", STUDY_NS, "-l", "app.kubernetes.io/component=dashboard"
            )["items"]
            for c in p.get("status", {}).get("conditions", [])
        ),
        "the dashboard pod to be Ready",
        180,
    )
    return status


@pytest.fixture(scope="module")
def users(kube: Kube, chart: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    directory = tmp_path_factory.mktemp("users")
    admin = config.new_client_from_config(config_file=str(kube.bed.kubeconfig))
    try:
        other = kube.namespace()
        reader = token_user(admin, kube.bed.kubeconfig, STUDY_NS, "trials-reader", directory)
        outsider = token_user(admin, kube.bed.kubeconfig, other, "outsider", directory)
        yield Users(reader, outsider, other)
    finally:
        admin.close()


def worker_logged(kube: Kube) -> dict[int, float]:
    """Trial number -> value, as the study's worker pods logged them (kubectl logs)."""
    pods = kube.get(
        "pods",
        "-n",
        STUDY_NS,
        "-l",
        f"optuna-operator.io/study={STUDY},app.kubernetes.io/component=worker",
    )["items"]
    assert pods, "the study's worker pods are gone"
    logged: dict[int, float] = {}
    for pod in pods:
        text = kube.kubectl("logs", "-n", STUDY_NS, pod["metadata"]["name"], check=False)
        logged.update({int(n): float(v) for n, v in FINISHED.findall(text)})
    return logged


def test_a_viewer_lists_every_trial_the_workers_ran(
    kube: Kube, finished: dict[str, Any], users: Users
) -> None:
    # What view now allows (and still does not) in the study's namespace.
    assert can_i(kube, users.reader, STUDY_NS, "get", PROXY)
    assert not can_i(kube, users.reader, STUDY_NS, "get", "secrets")
    assert not can_i(kube, users.reader, STUDY_NS, "create", PROXY)
    assert not can_i(kube, users.reader, STUDY_NS, "create", "pods/portforward")

    def listed() -> dict[str, Any] | None:
        out = trials_cli(users.reader, "-o", "json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    doc: dict[str, Any] = kube.wait_for(listed, "trials through the service proxy", 120)
    trials = doc["trials"]
    assert doc["study"] == f"{STUDY_NS}.{STUDY}" and doc["metricNames"] == ["loss"]
    counts = finished["trials"]
    assert len(trials) == counts["complete"] + counts["pruned"] + counts["failed"] >= TRIALS
    assert [t["number"] for t in trials] == list(range(len(trials)))
    complete = [t for t in trials if t["state"] == "Complete"]
    assert len(complete) == counts["complete"] and complete
    for trial in trials:
        assert trial["state"] in ("Complete", "Pruned", "Failed"), trial
        params = trial["params"]
        assert (
            {"optimizer", "lr", "layers"}
            <= set(params)
            <= {"optimizer", "lr", "layers", "momentum"}
        )
        assert ("momentum" in params) == (params["optimizer"] == "sgd"), params
        assert isinstance(params["layers"], int) and isinstance(params["lr"], float)
        assert trial["start"] and trial["complete"] and trial["durationSeconds"] >= 0
    # The trials are the workers': each value a worker pod logged is the one listed.
    logged = worker_logged(kube)
    assert logged, "no worker logged a finished trial"
    by_number = {t["number"]: t for t in trials}
    for number, value in logged.items():
        assert math.isclose(by_number[number]["values"]["loss"], value, rel_tol=1e-9), number
    best = min(complete, key=lambda t: t["values"]["loss"])
    assert finished["bestTrial"]["number"] == best["number"]

    # The table, and the SDK with the same kubeconfig.
    table = trials_cli(users.reader, "--sort-by", "value", "--limit", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TRIAL", "STATE", "loss"]
    assert lines[1].split()[:2] == [str(best["number"]), "Complete"]
    assert f"{len(trials) - 3} more trials not shown" in table.stderr
    with StudyClient.from_kubeconfig(str(users.reader), namespace=STUDY_NS) as studies:
        assert [t.number for t in studies.trials(STUDY, states=["complete"])] == [
            t["number"] for t in complete
        ]


def test_a_user_of_another_namespace_is_refused(
    kube: Kube, finished: dict[str, Any], users: Users
) -> None:
    assert not can_i(kube, users.outsider, STUDY_NS, "get", PROXY)
    assert can_i(kube, users.outsider, users.other_ns, "get", PROXY)  # where they do view
    out = trials_cli(users.outsider)
    assert out.returncode == 1 and "answered 403" in out.stderr, out
    assert "Traceback" not in out.stderr
    # Refused at the dashboard itself too, not only at the TuningStudy.
    api = config.new_client_from_config(config_file=str(users.outsider))
    try:
        with pytest.raises(client.ApiException) as refused:
            fetch_trials(api, STUDY_NS, DASHBOARD, 8080, f"{STUDY_NS}.{STUDY}")
    finally:
        api.close()
    assert refused.value.status == 403
    assert 'cannot get resource \\"services/proxy\\"' in str(refused.value.body)
    raw = as_user(
        kube,
        users.outsider,
        "get",
        "--raw",
        f"/api/v1/namespaces/{STUDY_NS}/{PROXY}/proxy/api/studies",
    )
    assert raw.returncode != 0 and "Forbidden" in raw.stderr, raw
