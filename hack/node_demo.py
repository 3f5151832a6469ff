"""`make node-demo`: the chart installed as a user installs it, on a real node.

Starts the node bed (kubelet, containerd, CNI, kube-proxy; hack/testbed/nodebed.py) with the
project's images imported (`make images-buildah`), `helm install`s the chart with the bed's
PostgreSQL as the default storage (a Secret whose URL points at the node's gateway), applies
the XGBoost example with `kubectl apply` in a namespace that enforces the restricted Pod
Security Standard, waits for Succeeded, then shows `kubectl logs` of a worker and the
operator and fetches the dashboard through `kubectl port-forward`.
DEMO_KEEP=1 leaves it running (the command to stop it is printed).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from demo import progress  # one progress line for both demos
from optuna_operator import __version__
from testbed.nodebed import NodeBed, NodeBedOptions, image_archives

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".dev"
EXAMPLE = ROOT / "examples" / "xgboost-regression.yaml"
NAMESPACE = "demo"
RELEASE_NAMESPACE = "optuna-system"
TAG = os.environ.get("IMAGE_TAG", __version__)
EXAMPLES_IMAGE = os.environ.get("EXAMPLES_IMAGE", f"ghcr.io/optuna-operator/worker-examples:{TAG}")
DASHBOARD_REPO = "ghcr.io/optuna-operator/dashboard"
TIMEOUT_S = int(os.environ.get("NODE_DEMO_TIMEOUT_S", "900"))


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


class Cli:
    def __init__(self, bed: NodeBed) -> None:
        self.bed = bed
        self.env = {**os.environ, **bed.env()}

    def run(self, tool: str, *args: str, stdin: str | None = None) -> str:
        command = [str(self.bed.bin_dir / tool), *args]
        res = subprocess.run(
            command, env=self.env, input=stdin, capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise SystemExit(f"{tool} {shlex.join(args)} failed:\n{res.stdout}{res.stderr}")
        return res.stdout

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.run("kubectl", *args, stdin=stdin)

    def status(self, name: str) -> dict[str, Any]:
        out = self.kubectl("get", "ts", name, "-n", NAMESPACE, "-o", "json")
        return dict(json.loads(out).get("status") or {})


def install_chart(cli: Cli, bed: NodeBed) -> None:
    cli.kubectl("create", "namespace", RELEASE_NAMESPACE)
    # The bed's PostgreSQL as pods reach it: the node namespace's gateway forwards to it.
    cli.kubectl(
        "create",
        "secret",
        "generic",
        "optuna-db",
        "-n",
        RELEASE_NAMESPACE,
        f"--from-literal=url={bed.storage_url_for_pods}",
    )
    args = [
        "install",
        "optuna-operator",
        str(ROOT / "charts" / "optuna-operator"),
        "-n",
        RELEASE_NAMESPACE,
        "--set",
        "storage.existingSecret.name=optuna-db",
        "--set",
        f"dashboardImage.repository={DASHBOARD_REPO}",
        "--set",
        f"dashboardImage.tag={TAG}",
        "--set",
        "statusInterval=3",
        "--wait",
        "--timeout",
        "5m",
    ]
    say("helm " + " ".join(args[:5]) + " --set storage.existingSecret.name=optuna-db ...")
    t0 = time.monotonic()
    try:
        cli.run("helm", *args)
    except SystemExit:
        print(cli.kubectl("get", "pods", "-A", "-o", "wide"))
        print(cli.kubectl("logs", "-n", RELEASE_NAMESPACE, "deploy/optuna-operator", "--tail=20"))
        raise
    say(f"Operator Deployment available in {time.monotonic() - t0:.0f}s")
    print(cli.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide"))


def apply_study(cli: Cli) -> str:
    body = yaml.safe_load(EXAMPLE.read_text())
    # The example's objective lives in the worker-examples image (scikit-learn, XGBoost).
    body["spec"]["workers"]["image"] = EXAMPLES_IMAGE
    cli.kubectl("create", "namespace", NAMESPACE)
    cli.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    say(
        f"kubectl apply -n {NAMESPACE} -f {EXAMPLE.relative_to(ROOT)} "
        f"(spec.workers.image: {EXAMPLES_IMAGE}; namespace enforces restricted)"
    )
    cli.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(body))
    return str(body["metadata"]["name"])


def wait_done(cli: Cli, name: str, t0: float) -> dict[str, Any]:
    last = ""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        status = cli.status(name)
        line = progress(status)
        if line != last:
            print(f"   [{time.monotonic() - t0:5.0f}s] {line}", flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(3)
    raise SystemExit(f"the study did not finish in {TIMEOUT_S}s")


def show_logs(cli: Cli) -> None:
    pods = json.loads(
        cli.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=worker", "-o", "json"
        )
    )["items"]
    if pods:
        pod = pods[0]["metadata"]["name"]
        say(f"kubectl logs -n {NAMESPACE} {pod} --tail=5 (a worker, in its container)")
        print(cli.kubectl("logs", "-n", NAMESPACE, pod, "--tail=5"))
    say(f"kubectl logs -n {RELEASE_NAMESPACE} deploy/optuna-operator --tail=3")
    print(cli.kubectl("logs", "-n", RELEASE_NAMESPACE, "deploy/optuna-operator", "--tail=3"))


def port_forward_dashboard(cli: Cli, service: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        str(cli.bed.bin_dir / "kubectl"),
        "port-forward",
        "-n",
        NAMESPACE,
        f"svc/{service}",
        f"{port}:8080",
        "--address=127.0.0.1",
    ]
    say(f"kubectl port-forward -n {NAMESPACE} svc/{service} {port}:8080")
    proc = subprocess.Popen(command, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/studies"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    studies = json.loads(resp.read())["study_summaries"]
                names = [s.get("study_name") for s in studies]
                say(f"GET {url} through the port-forward: studies {names}")
                return
            except OSError as err:
                if time.monotonic() > deadline:
                    msg = f"the dashboard did not answer through port-forward: {err}"
                    raise SystemExit(msg) from err
                time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    t0 = time.monotonic()
    DEV.mkdir(exist_ok=True)
    images = image_archives("pause", "busybox", "operator", "worker", "examples", "dashboard")
    say("Starting the node bed: control plane, PostgreSQL, kubelet + containerd + CNI + kube-proxy")
    keep = bool(os.environ.get("DEMO_KEEP"))
    bed = NodeBed(DEV / "node-demo-bed", NodeBedOptions(images=images), detached=keep)
    try:
        bed.start()
        say(f"Node bed up in {bed.startup_s:.0f}s (images imported into containerd)")
        cli = Cli(bed)
        print(cli.kubectl("get", "nodes", "-o", "wide"))
        install_chart(cli, bed)
        name = apply_study(cli)
        status = wait_done(cli, name, t0)
        print()
        print(cli.kubectl("get", "ts", "-n", NAMESPACE, "-o", "wide"))
        if status["phase"] != "Succeeded":
            failed = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
            raise SystemExit(f"the study failed: {failed}")
        best = status["bestTrial"]
        say(f"Best trial #{best['number']}: neg_mse = {best['values'][0]:.2f}")
        for key, value in sorted(best["params"].items()):
            print(f"      {key:<14} {value}")
        show_logs(cli)
        dashboard = status.get("dashboard") or {}
        if dashboard.get("service"):
            port_forward_dashboard(cli, str(dashboard["service"]))
        say(f"Done in {time.monotonic() - t0:.0f}s, every pod in a real container.")
        if keep:
            (DEV / "env").write_text(
                f"export KUBECONFIG={shlex.quote(str(bed.kubeconfig))}\n"
                f'export PATH={shlex.quote(str(bed.bin_dir))}:"$PATH"\n'
            )
            say(
                "DEMO_KEEP=1: left running; `. .dev/env; kubectl get pods -A`; stop with "
                f"`PYTHONPATH=hack .venv/bin/python -m testbed down --node --dir {bed.directory}`"
            )
    finally:
        if not keep:
            bed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
