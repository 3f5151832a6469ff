"""Helpers for operator tests: apply TuningStudies, wait on their status, run the operator."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from kubernetes import client

from optuna_operator.api import GROUP, PLURAL, VERSION

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "optuna-system"
DEFAULT_SECRET = "optuna-db"
# The namespace's own credentials, made by the operator (optuna_operator.storage.tenancy).
TENANT_SECRET = "optuna-storage"


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def study_body(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "directions": ["maximize"],
        "objective": {"function": "tests.integration.objectives:quadratic"},
        "budget": {"trials": 12},
        "sampler": {"type": "TPE", "seed": 1},
        "workers": {"parallelism": 1},
        "dashboard": {"enabled": False},
    }
    base.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TuningStudy",
        "metadata": {"name": name},
        "spec": base,
    }


def secret_value(api: client.ApiClient, namespace: str, name: str, key: str) -> str | None:
    """A Secret's decoded value, None when the Secret or the key is missing."""
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    raw = (secret.data or {}).get(key)
    return base64.b64decode(raw).decode() if raw is not None else None


def tenant_url(api: client.ApiClient, namespace: str, timeout: float = 60) -> str:
    """The URL of the namespace's own PostgreSQL role, as its workers get it."""
    return wait_for(
        lambda: secret_value(api, namespace, TENANT_SECRET, "url"),
        timeout,
        f"Secret {TENANT_SECRET} in {namespace}",
    )


class Studies:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    def storage_url(self) -> str:
        """The namespace's own credential: its studies live in its schema."""
        return tenant_url(self.core.api_client, self.namespace)

    def optuna_study(self, name: str, timeout: float = 60) -> optuna.Study:
        """TuningStudy `name`'s Optuna study as its namespace's role sees it, waiting for
        the operator to create it (the Secret appears a moment before the study).

        Read only once StorageReady is True: loading through a URL runs Optuna's
        `create_all`, which raced the operator's own creation of the namespace's tables
        (`type "studydirection" already exists`) when it came first."""

        def load() -> optuna.Study | None:
            ready = self.condition(name, "StorageReady")
            if ready is None or ready["status"] != "True":
                return None
            try:
                return optuna.load_study(
                    study_name=f"{self.namespace}.{name}", storage=self.storage_url()
                )
            except KeyError:
                return None

        return wait_for(load, timeout, f"the Optuna study of {name}")

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return result

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next(
            (c for c in self.status(name).get("conditions", []) if c["type"] == type_), None
        )

    def wait_phase(self, name: str, phase: str, timeout: float = 240) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            seen.update(status=self.status(name))
            return seen["status"] if seen["status"].get("phase") == phase else None

        try:
            return wait_for(check, timeout, f"{name} to reach phase {phase}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast status: {seen.get('status')}") from None

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 120
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            c = self.condition(name, type_)
            ok = c and c["status"] == status and (reason is None or c["reason"] == reason)
            return c if ok else None

        return wait_for(check, timeout, f"{name} condition {type_}={status} {reason or ''}")

    def jobs(self, name: str) -> list[client.V1Job]:
        selector = f"optuna-operator.io/study={name}"
        items: list[client.V1Job] = self.batch.list_namespaced_job(
            self.namespace, label_selector=selector
        ).items
        return [j for j in items if j.metadata.deletion_timestamp is None]

    def events(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [f"{e.reason}: {e.message}" for e in events]


class OperatorProcess:
    """The operator as it runs in production (`optuna-operator run`), as a real process."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        extra_args: list[str] | None = None,
        leader_elect: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args or []
        # Off unless a test runs replicas: one operator needs no Lease.
        self.leader_elect = leader_elect
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "optuna_operator.cli",
            "run",
            "--default-storage-secret",
            f"{OPERATOR_NAMESPACE}/{DEFAULT_SECRET}",
            "--status-interval",
            "2",
            f"--leader-elect={str(self.leader_elect).lower()}",
            *self.extra_args,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        log.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
