"""Kueue as one more process of a running bed, for the tests that opt into it.

Kueue (sigs.k8s.io/kueue, pinned in hack/versions.env) is built from the Go module proxy by
hack/build-kueue.sh. Its CRDs and webhook configurations are read from the same module's
`config/components` in the Go module cache, and rewritten for a bed where nothing runs in
a pod: every webhook (admission and CRD conversion) gets a `url` on loopback and the bed's
CA as its bundle, instead of Kueue's in-cluster Service and self-rotated certificate.

Only the admission webhooks for batch Jobs and Kueue's own kinds are installed: Kueue is
configured with the `batch/job` integration alone, and the pod, Deployment and StatefulSet
webhooks would put every pod of the bed (the operator's dashboards too) behind Kueue.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.bed import Bed
from testbed.certs import issue_serving_cert
from testbed.errors import BedError
from testbed.kubeapi import ApiError, KubeApi
from testbed.kubeconfig import read_kubeconfig
from testbed.paths import HACK_DIR, versions
from testbed.ports import free_port
from testbed.supervisor import log_tail

__all__ = ["Kueue", "ensure_kueue", "start_kueue"]

APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "testbed"
NAMESPACE = "kueue-system"
# Admission webhooks of these API groups are installed; see the module docstring.
WEBHOOK_GROUPS = {"batch", "kueue.x-k8s.io"}
MUTATING = "kueue-mutating-webhook-configuration"
VALIDATING = "kueue-validating-webhook-configuration"


@dataclass(frozen=True)
class Kueue:
    """A running Kueue: its version, webhook port, log and the process id the bed stops."""

    version: str
    pid: int
    webhook_port: int
    log: Path
    startup_s: float


def _script(*args: str) -> str:
    out = subprocess.run(
        [str(HACK_DIR / "build-kueue.sh"), *args],
        stdout=subprocess.PIPE,
        check=False,
        text=True,
    )
    if out.returncode != 0:
        raise BedError(
            f"hack/build-kueue.sh {' '.join(args)} failed (exit {out.returncode}); run it "
            "by hand to see the Go output"
        )
    return out.stdout.strip().splitlines()[-1]


def ensure_kueue() -> tuple[Path, Path]:
    """The Kueue binary (built when missing: minutes) and its module source directory."""
    binary = Path(_script()) / "kueue"
    if not binary.is_file():
        raise BedError(f"hack/build-kueue.sh ran but {binary} does not exist")
    return binary, Path(_script("--source"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _loopback(client_config: dict[str, Any], port: int, ca_bundle: str) -> dict[str, Any]:
    """A webhook clientConfig that points at Kueue on loopback instead of its Service."""
    path = (client_config.get("service") or {}).get("path", "/")
    return {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}


def crds(source: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs, with conversion webhooks where Kueue's kustomization enables them."""
    base = source / "config" / "components" / "crd"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    converted = set()
    for patch in kustomization.get("patches") or []:
        for doc in _documents(base / patch["path"]):
            if (doc.get("spec") or {}).get("conversion", {}).get("strategy") == "Webhook":
                converted.add(doc["metadata"]["name"])
    out = []
    for resource in kustomization["resources"]:
        for crd in _documents(base / resource):
            if crd["metadata"]["name"] in converted:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": _loopback(
                            {"service": {"path": "/convert"}}, port, ca_bundle
                        ),
                        "conversionReviewVersions": ["v1"],
                    },
                }
            out.append(crd)
    return out


def webhook_configurations(source: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's mutating and validating webhook configurations for Jobs and Kueue's kinds."""
    names = {
        "MutatingWebhookConfiguration": MUTATING,
        "ValidatingWebhookConfiguration": VALIDATING,
    }
    out = []
    for doc in _documents(source / "config" / "components" / "webhook" / "manifests.yaml"):
        hooks = []
        for hook in doc.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if groups and groups <= WEBHOOK_GROUPS:
                hooks.append(
                    {**hook, "clientConfig": _loopback(hook["clientConfig"], port, ca_bundle)}
                )
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": doc["kind"],
                "metadata": {"name": names[doc["kind"]]},
                "webhooks": hooks,
            }
        )
    return out


def _config(directory: Path, webhook_port: int, health_port: int, cert_dir: Path) -> Path:
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        # "0" turns the metrics server off: one port fewer to collide with other beds.
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        # The certificate comes from the bed's CA; Kueue's rotator would want a Service.
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
        "clientConnection": {"qps": 50, "burst": 100},
    }
    path = directory / "kueue-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _apply(api: KubeApi, path: str, obj: dict[str, Any]) -> None:
    api.request(
        "PATCH",
        f"{path}/{obj['metadata']['name']}",
        obj,
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        content_type=APPLY,
    )


def _wait_served(api: KubeApi, kinds: list[dict[str, Any]], timeout_s: float) -> None:
    wanted = {
        (c["spec"]["group"], v["name"], c["spec"]["names"]["plural"])
        for c in kinds
        for v in c["spec"]["versions"]
        if v.get("served")
    }
    deadline = time.monotonic() + timeout_s
    missing = wanted
    while time.monotonic() < deadline:
        missing = set()
        for group, version in {(g, v) for g, v, _ in wanted}:
            try:
                served = {
                    r["name"] for r in api.get(f"/apis/{group}/{version}").get("resources", [])
                }
            except ApiError:
                served = set()
            missing |= {w for w in wanted if w[:2] == (group, version) and w[2] not in served}
        if not missing:
            return
        time.sleep(0.5)
    raise BedError(f"Kueue's CRDs were not served after {timeout_s:.0f}s: {sorted(missing)}")


def _healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
        return bool(resp.status == 200)


def _webhook_suspends(api: KubeApi) -> bool:
    """Whether the API server reaches Kueue's Job webhook: a dry-run Job with a queue label
    comes back suspended."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "kueue-webhook-probe",
            "labels": {"kueue.x-k8s.io/queue-name": "probe"},
        },
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "probe", "command": ["true"]}],
                }
            }
        },
    }
    created = api.request(
        "POST", "/apis/batch/v1/namespaces/default/jobs", job, params={"dryRun": "All"}
    )
    return bool(created["spec"].get("suspend"))


def start_kueue(bed: Bed, timeout_s: float = 120.0) -> Kueue:
    """Build (if needed), configure and start Kueue as a process of `bed`; it is stopped
    with the bed. Returns once its webhooks answer through the API server."""
    t0 = time.monotonic()
    binary, source = ensure_kueue()
    directory = bed.directory / "kueue"
    directory.mkdir(parents=True, exist_ok=True)
    pki = bed.directory / "controlplane" / "pki"
    cert_dir = directory / "certs"
    # controller-runtime's webhook server reads tls.crt and tls.key from certDir.
    issue_serving_cert(pki / "ca.crt", pki / "ca.key", cert_dir, "tls", "kueue-webhook")
    # Without internal certificate management Kueue 0.17 insists on a metrics certificate at
    # the fixed path /etc/kueue/metrics/certs (cmd/kueue/main.go), even with metrics off. It
    # gets one in a private mount namespace whose /etc is this directory, so nothing is
    # written to the machine's /etc (a static Go binary reading IPs needs nothing else there).
    etc = directory / "etc"
    issue_serving_cert(
        pki / "ca.crt", pki / "ca.key", etc / "kueue" / "metrics" / "certs", "tls", "kueue-metrics"
    )
    ca_bundle = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    webhook_port, health_port = free_port(), free_port()

    api = KubeApi(read_kubeconfig(bed.kubeconfig), timeout_s=30)
    try:
        try:
            api.post("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        except ApiError as err:
            if err.status != 409:
                raise
        crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        kinds = crds(source, webhook_port, ca_bundle)
        for crd in kinds:
            _apply(api, crd_path, crd)
        # Kueue's REST mapper reads discovery once at start-up: a kind not yet served then
        # is "no matches for kind" and the manager exits.
        _wait_served(api, kinds, timeout_s)
        log = bed.logs_dir / "kueue.log"
        pid = bed.spawn(
            "kueue",
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount --bind "$0" /etc && exec "$@"',
                str(etc),
                str(binary),
                f"--config={_config(directory, webhook_port, health_port, cert_dir)}",
                # On by default; it would serve an aggregated API on a fixed port.
                "--feature-gates=VisibilityOnDemand=false",
                "--zap-log-level=2",
            ],
            log,
            env={
                "KUBECONFIG": str(bed.kubeconfig),
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                # client-go wants a home (a CGO-less build cannot look the user up).
                "HOME": str(directory),
                "USER": "kueue",
            },
        )

        def wait(check: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + timeout_s
            last: Exception | None = None
            while time.monotonic() < deadline:
                if not bed.alive(pid):
                    raise BedError(
                        f"kueue exited while {what}; last lines of {log}:\n{log_tail(log)}"
                    )
                try:
                    if check():
                        return
                except Exception as exc:  # not up yet; keep the reason for the message
                    last = exc
                time.sleep(0.5)
            raise BedError(
                f"timed out after {timeout_s:.0f}s waiting for {what}: {last}\n{log_tail(log)}"
            )

        wait(lambda: _healthy(health_port), "Kueue's /readyz")
        for config in webhook_configurations(source, webhook_port, ca_bundle):
            plural = config["kind"].lower() + "s"
            _apply(api, f"/apis/admissionregistration.k8s.io/v1/{plural}", config)
        wait(lambda: _webhook_suspends(api), "the API server to call Kueue's Job webhook")
    finally:
        api.close()
    return Kueue(versions()["KUEUE_VERSION"], pid, webhook_port, log, time.monotonic() - t0)
