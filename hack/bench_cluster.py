"""What the benchmarks that run the operator on a fresh bed share: the CRD, the operator's
namespace with its default storage Secret, and the operator itself as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kubernetes import client, config

from testbed import Bed

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "tuning.optuna-operator.io", "v1alpha1", "tuningstudies"
OPERATOR_NAMESPACE = "optuna-system"


class BenchCluster:
    """A bed with the CRD installed and one operator running against it."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.api = config.new_client_from_config(config_file=str(bed.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.operator: subprocess.Popen[bytes] | None = None
        self.log = bed.directory / "operator.log"

    def kubectl(self, *args: str) -> str:
        """Run the bed's kubectl; its stderr becomes the error."""
        command = [str(self.bed.bin_dir / "kubectl"), "--kubeconfig", str(self.bed.kubeconfig)]
        result = subprocess.run([*command, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start_operator(
        self, namespaces: list[str], interval: float | None = None, storage_url: str = ""
    ) -> None:
        """Install the CRD, create `namespaces`, and start the operator with `storage_url`
        (the bed's PostgreSQL by default) as its default storage."""
        self.kubectl("apply", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}")
        for ns in (OPERATOR_NAMESPACE, *namespaces):
            self.core.create_namespace({"metadata": {"name": ns}})
        default_storage = {"url": storage_url or self.bed.storage_url}
        self.core.create_namespaced_secret(
            OPERATOR_NAMESPACE, {"metadata": {"name": "optuna-db"}, "stringData": default_storage}
        )
        command = [sys.executable, "-m", "optuna_operator.cli", "run", "--leader-elect=false"]
        command += ["--default-storage-secret", f"{OPERATOR_NAMESPACE}/optuna-db"]
        if interval is not None:
            command += ["--status-interval", str(interval)]
        self.operator = subprocess.Popen(
            command,
            env={**os.environ, "KUBECONFIG": str(self.bed.kubeconfig)},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def stop(self) -> None:
        """Stop the operator (the bed is stopped by its owner)."""
        if self.operator is not None:
            self.operator.terminate()
            self.operator.wait(timeout=30)
