"""`make demo`: the main job end to end on this machine.

Starts the local test bed (real API server, controller-manager, scheduler, PostgreSQL and
the pod executor), installs the CRD, runs the operator, applies the XGBoost example from
the seed use case, shows progress, and prints the best trial and where the dashboard is.
Set DEMO_KEEP=1 to leave the bed, the operator and the dashboard running afterwards (stop them
with `make demo-down`); DEMO_TRIALS=N shortens the study (tests use it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from testbed import Bed

ROOT = Path(__file__).resolve().parents[1]
# DEMO_DIR: where the bed, its env file and logs go (tests point it at a temp dir).
DEV = Path(os.environ.get("DEMO_DIR") or ROOT / ".dev").resolve()
BED_DIR = DEV / "demo-bed"
EXAMPLE = ROOT / "examples" / "xgboost-regression.yaml"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "optuna-system"
GROUP, VERSION, PLURAL = "tuning.optuna-operator.io", "v1alpha1", "tuningstudies"
TIMEOUT_S = 540
# On the bed every pod listens on this machine; the dashboard Deployment's port.
DASHBOARD_URL = "http://127.0.0.1:8080"
DASHBOARD_DEADLINE_S = 90


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def kubectl(bed: Bed, *args: str, stdin: str | None = None) -> str:
    command = [str(bed.bin_dir / "kubectl"), "--kubeconfig", str(bed.kubeconfig), *args]
    done = subprocess.run(command, capture_output=True, text=True, input=stdin, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def start_operator(bed: Bed) -> int:
    """The operator as one of the bed's processes: stopped with it, and, under DEMO_KEEP,
    left running with it (a process of its own would die with this script or be orphaned)."""
    env = {**os.environ, "KUBECONFIG": str(bed.kubeconfig)}
    command = [
        sys.executable,
        "-m",
        "optuna_operator.cli",
        "run",
        "--default-storage-secret",
        f"{OPERATOR_NAMESPACE}/optuna-db",
        "--status-interval",
        "3",
        "--leader-elect=false",
    ]
    return bed.spawn("operator", command, DEV / "demo-operator.log", env=env)


def wait_established(api: client.ApiClient, crd: str, timeout_s: float = 60) -> None:
    """Poll the CRD's Established condition. (`kubectl wait` right after the apply fails
    with "accessor error" while the CRD has no conditions yet.)"""
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conditions = ext.read_custom_resource_definition(crd).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.5)
    raise SystemExit(f"CRD {crd} was not Established after {timeout_s:.0f}s")


def stop_previous_demo() -> None:
    """A bed a previous DEMO_KEEP run left: stop it, or the new one would reuse its files."""
    previous = Bed.load(BED_DIR)
    if previous.describe_processes():
        say(f"Stopping the test bed a previous DEMO_KEEP=1 run left in {BED_DIR}")
        previous.stop()


def progress(status: dict[str, Any]) -> str:
    trials = status.get("trials") or {}
    best = (status.get("bestTrial") or {}).get("values", [None])[0]
    best_text = f"{best:.2f}" if isinstance(best, float) else "-"
    return (
        f"{status.get('phase', 'Pending'):<9} trials {status.get('progress', '0'):>6}  "
        f"running {trials.get('running', 0)}  pruned {trials.get('pruned', 0)}  "
        f"failed {trials.get('failed', 0)}  best neg_mse {best_text}"
    )


def main() -> int:
    t0 = time.monotonic()
    DEV.mkdir(exist_ok=True)
    keep = bool(os.environ.get("DEMO_KEEP"))
    stop_previous_demo()
    say("Starting the local test bed (first run builds Kubernetes from source: minutes)")
    # Detached: its processes outlive this script, which DEMO_KEEP promises.
    bed = Bed(BED_DIR, detached=keep).start()
    kept = False
    try:
        say(
            f"Test bed up in {bed.startup_s:.0f}s: kube-apiserver, controller-manager, "
            "scheduler, PostgreSQL, pod executor"
        )
        kubectl(bed, "apply", "-f", str(ROOT / "crds"))
        api = config.new_client_from_config(config_file=str(bed.kubeconfig))
        wait_established(api, f"{PLURAL}.{GROUP}")
        core = client.CoreV1Api(api)
        for ns in (OPERATOR_NAMESPACE, NAMESPACE):
            core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_secret(
            OPERATOR_NAMESPACE,
            {"metadata": {"name": "optuna-db"}, "stringData": {"url": bed.storage_url}},
        )
        say(f"Starting the operator (log: {shown(DEV / 'demo-operator.log')})")
        operator = start_operator(bed)
        body = yaml.safe_load(EXAMPLE.read_text())
        say(f"kubectl apply -f {EXAMPLE.relative_to(ROOT)} -n {NAMESPACE}")
        trials = os.environ.get("DEMO_TRIALS")
        if trials:
            body["spec"]["budget"]["trials"] = int(trials)
            say(f"DEMO_TRIALS={trials}: budget.trials set to {trials}")
        kubectl(bed, "apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump(body))
        custom = client.CustomObjectsApi(api)
        name = body["metadata"]["name"]
        last = ""
        deadline = time.monotonic() + TIMEOUT_S
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = (
                custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name).get(
                    "status"
                )
                or {}
            )
            line = progress(status)
            if line != last:
                print(f"   [{time.monotonic() - t0:5.0f}s] {line}", flush=True)
                last = line
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            if not bed.alive(operator):
                raise SystemExit(f"the operator exited: see {shown(DEV / 'demo-operator.log')}")
            time.sleep(2)
        else:
            raise SystemExit(f"the study did not finish in {TIMEOUT_S}s")

        print()
        print(kubectl(bed, "get", "ts", "-n", NAMESPACE, "-o", "wide"))
        if status["phase"] != "Succeeded":
            failed = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
            raise SystemExit(f"the study failed: {failed}")
        best = status["bestTrial"]
        say(f"Best trial #{best['number']}: neg_mse = {best['values'][0]:.2f}")
        for key, value in sorted(best["params"].items()):
            print(f"      {key:<14} {value}")
        importances = status.get("paramImportances") or {}
        if importances:
            ranked = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(importances.items(), key=lambda kv: -kv[1])
            )
            say(f"Parameter importances: {ranked}")
        say(f"Done in {time.monotonic() - t0:.0f}s.")
        if keep:
            leave_running(bed, name, status)
            kept = True
    finally:
        # A failed demo leaves nothing behind, DEMO_KEEP or not: there is nothing to look at.
        if not kept:
            bed.stop()
    return 0


def dashboard_answers(timeout_s: float) -> bool:
    """True once optuna-dashboard answers HTTP (its pod may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{DASHBOARD_URL}/api/meta", timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1)
    return False


def leave_running(bed: Bed, name: str, status: dict[str, Any]) -> None:
    """Write .dev/env and print, as commands that work, how to reach what is left running."""
    env_file = DEV / "env"
    bed.write_env(env_file, "`DEMO_KEEP=1 make demo`")
    service = (status.get("dashboard") or {}).get("service") or f"{name}-dashboard"
    if not dashboard_answers(DASHBOARD_DEADLINE_S):
        raise SystemExit(f"the dashboard did not answer on {DASHBOARD_URL}")
    # The bed has no pod network: the dashboard pod's process listens on this machine.
    say("DEMO_KEEP=1: the test bed, the operator and the dashboard keep running.")
    print(f"      dashboard: {DASHBOARD_URL}  (Service {NAMESPACE}/{service})", flush=True)
    print(f"      use it:    . {shown(env_file)} && kubectl get ts -A", flush=True)
    print(f"      logs:      {shown(DEV / 'demo-operator.log')}", flush=True)
    stop = (
        "make demo-down"
        if BED_DIR == ROOT / ".dev" / "demo-bed"
        else f"PYTHONPATH=hack {shown(Path(sys.executable))} -m testbed down --dir {BED_DIR}"
    )
    print(f"      stop it:   {stop}", flush=True)


def shown(path: Path) -> str:
    """path relative to the repository when it is inside it (commands run from there)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
