"""`make demo`: the main job end to end on this machine.

Starts the local test bed (real API server, controller-manager, scheduler, PostgreSQL and
the pod executor), installs the CRD, runs the operator, applies the XGBoost example from
the seed use case, shows progress, and prints the best trial and where the dashboard is.
Set DEMO_KEEP=1 to leave everything running afterwards (stop it with `make dev-cluster-down`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from testbed import Bed

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".dev"
EXAMPLE = ROOT / "examples" / "xgboost-regression.yaml"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "optuna-system"
GROUP, VERSION, PLURAL = "tuning.optuna-operator.io", "v1alpha1", "tuningstudies"
TIMEOUT_S = 540


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def kubectl(bed: Bed, *args: str) -> str:
    command = [str(bed.bin_dir / "kubectl"), "--kubeconfig", str(bed.kubeconfig), *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def start_operator(bed: Bed) -> subprocess.Popen[bytes]:
    log = (DEV / "demo-operator.log").open("wb")
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
        "--peering",
        "none",
    ]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


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
    say("Starting the local test bed (first run builds Kubernetes from source: minutes)")
    bed = Bed(DEV / "demo-bed").start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        say(
            f"Test bed up in {bed.startup_s:.0f}s: kube-apiserver, controller-manager, "
            "scheduler, PostgreSQL, pod executor"
        )
        kubectl(bed, "apply", "-f", str(ROOT / "crds"))
        kubectl(
            bed,
            "wait",
            "--for=condition=Established",
            "crd/tuningstudies.tuning.optuna-operator.io",
        )
        api = config.new_client_from_config(config_file=str(bed.kubeconfig))
        core = client.CoreV1Api(api)
        for ns in (OPERATOR_NAMESPACE, NAMESPACE):
            core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_secret(
            OPERATOR_NAMESPACE,
            {"metadata": {"name": "optuna-db"}, "stringData": {"url": bed.storage_url}},
        )
        say("Starting the operator (log: .dev/demo-operator.log)")
        operator = start_operator(bed)
        body = yaml.safe_load(EXAMPLE.read_text())
        say(f"kubectl apply -f {EXAMPLE.relative_to(ROOT)} -n {NAMESPACE}")
        kubectl(bed, "apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
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
            if operator.poll() is not None:
                raise SystemExit("the operator exited: see .dev/demo-operator.log")
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
        dashboard = status.get("dashboard") or {}
        say(
            f"Dashboard: Service {dashboard.get('service')} ({dashboard.get('url')}); on this "
            "test bed its process listens on http://127.0.0.1:8080 directly; on a real cluster: "
            f"kubectl port-forward -n {NAMESPACE} svc/{dashboard.get('service')} 8080"
        )
        say(f"Done in {time.monotonic() - t0:.0f}s.")
        if os.environ.get("DEMO_KEEP"):
            env_file = DEV / "env"
            env_file.write_text(
                f"export KUBECONFIG={shlex.quote(str(bed.kubeconfig))}\n"
                f'export PATH={shlex.quote(str(bed.bin_dir))}:"$PATH"\n'
            )
            say(
                "DEMO_KEEP=1: left running. `. .dev/env; kubectl get ts -A`; stop with "
                f"`kill {operator.pid}` and `PYTHONPATH=hack .venv/bin/python -m testbed down "
                f"--dir {DEV / 'demo-bed'}`"
            )
            operator = None
            return 0
    finally:
        if operator is not None and not os.environ.get("DEMO_KEEP"):
            operator.terminate()
            operator.wait(timeout=30)
        if not os.environ.get("DEMO_KEEP"):
            bed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
