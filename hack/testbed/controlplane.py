"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler on free loopback ports.

Flags follow controller-runtime's envtest for the API server, plus what a controller-manager
needs to sign service-account tokens and run the Job, garbage-collector, namespace and
service-account controllers. Admission is left at the 1.34 defaults, which include
PodSecurity and ServiceAccount, so restricted namespaces really reject pods.
"""

from __future__ import annotations

import json
import signal
import ssl
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from testbed.audit import AUDIT_LOG, AUDIT_POLICY
from testbed.certs import Pki, generate_pki
from testbed.kubeapi import ApiError, KubeApi
from testbed.kubeconfig import Credentials, write_kubeconfig
from testbed.ports import free_port
from testbed.procs import ProcessRecord
from testbed.supervisor import Supervisor

__all__ = ["ControlPlane", "start_control_plane"]

SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# When the process that owns the bed dies, nothing is worth shutting down gracefully, and a
# SIGTERMed kube-apiserver whose etcd is also going away hangs in its shutdown for minutes.
ORPHANED = signal.SIGKILL


@dataclass(frozen=True)
class ControlPlane:
    server: str
    admin_kubeconfig: Path
    admin: Credentials
    pki: Pki
    # Every list and watch request (testbed.audit reads it).
    audit_log: Path


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def _https_healthz(port: int) -> bool:
    # kube-controller-manager and kube-scheduler serve with a self-signed certificate;
    # /healthz is on their always-allowed list, so no client credentials are needed.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(
        f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx
    ) as resp:
        return bool(resp.status == 200)


def _etcd_healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
        return bool(json.loads(resp.read()).get("health") == "true")


@dataclass(frozen=True)
class _Launch:
    """Where and how the components start: shared by every step below."""

    sup: Supervisor
    directory: Path
    logs: Path
    bin_dir: Path
    timeout_s: float

    def spawn(self, name: str, args: list[str]) -> ProcessRecord:
        argv = [str(self.bin_dir / name), *args]
        log = self.logs / f"{name}.log"
        return self.sup.spawn(name, argv, log, death_signal=ORPHANED)


def _start_etcd(launch: _Launch) -> tuple[ProcessRecord, str]:
    etcd_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    etcd = launch.spawn(
        "etcd",
        [
            "--name=testbed",
            f"--data-dir={launch.directory / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}",
            # Data is thrown away with the bed; fsync only slows tests down.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
    )
    port = int(etcd_url.rsplit(":", 1)[1])
    launch.sup.wait_until(lambda: _etcd_healthy(port), "etcd /health", launch.timeout_s, [etcd])
    return etcd, etcd_url


def _apiserver_args(launch: _Launch, pki: Pki, etcd_url: str, port: int) -> list[str]:
    """kube-apiserver's flags; the audit log records every list and watch (audit.py)."""
    audit_policy = launch.directory / "audit-policy.json"
    audit_policy.write_text(json.dumps(AUDIT_POLICY))
    return [
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={launch.directory / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving.cert}",
        f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--allow-privileged=true",
        f"--requestheader-client-ca-file={pki.ca_cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy.cert}",
        f"--proxy-client-key-file={pki.front_proxy.key}",
        "--profiling=false",
        f"--audit-policy-file={audit_policy}",
        f"--audit-log-path={launch.logs / AUDIT_LOG}",
        "--audit-log-format=json",
    ]


def _kubeconfig(launch: _Launch, server: str, pki: Pki, client: str, user: str) -> Path:
    """A kubeconfig for one component, authenticated by its client certificate."""
    cert = getattr(pki, client)
    path = launch.directory / f"{client.replace('_', '-')}.kubeconfig"
    write_kubeconfig(path, Credentials(server, pki.ca_cert, cert.cert, cert.key), user)
    return path


def _start_controller_manager(
    launch: _Launch, kubeconfig: Path, pki: Pki
) -> tuple[ProcessRecord, int]:
    port = free_port()
    kcm = launch.spawn(
        "kube-controller-manager",
        [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={launch.directory / 'controller-manager-certs'}",
            "--leader-elect=false",
            # The default set: job, garbagecollector, namespace, serviceaccount(-token),
            # replicaset, deployment, endpoint(slice), podgc, nodelifecycle and the rest.
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ],
    )
    return kcm, port


def _start_scheduler(launch: _Launch, kubeconfig: Path) -> tuple[ProcessRecord, int]:
    port = free_port()
    scheduler = launch.spawn(
        "kube-scheduler",
        [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={launch.directory / 'scheduler-certs'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    return scheduler, port


def _ready(api: KubeApi) -> bool:
    return api.get_text("/readyz")[0] == 200


def _default_sa_exists(api: KubeApi) -> bool:
    try:
        api.get("/api/v1/namespaces/default/serviceaccounts/default")
    except ApiError as err:
        if err.status == 404:
            return False
        raise
    return True


def start_control_plane(
    sup: Supervisor,
    directory: Path,
    logs: Path,
    bin_dir: Path,
    timeout_s: float = 180.0,
    extra_apiserver_args: Sequence[str] = (),
) -> ControlPlane:
    """etcd, then the API server on it, then the controller-manager and the scheduler;
    returns once pods can be created in `default`."""
    directory.mkdir(parents=True, exist_ok=True)
    launch = _Launch(sup, directory, logs, bin_dir, timeout_s)
    pki = generate_pki(directory / "pki")
    etcd, etcd_url = _start_etcd(launch)
    api_port = free_port()
    server = f"https://127.0.0.1:{api_port}"
    args = [*_apiserver_args(launch, pki, etcd_url, api_port), *extra_apiserver_args]
    apiserver = launch.spawn("kube-apiserver", args)
    admin = Credentials(server, pki.ca_cert, pki.admin.cert, pki.admin.key)
    api = KubeApi(admin, timeout_s=10)
    sup.wait_until(partial(_ready, api), "kube-apiserver /readyz", timeout_s, [etcd, apiserver])

    admin_kubeconfig = directory / "admin.kubeconfig"
    write_kubeconfig(admin_kubeconfig, admin, "testbed-admin")
    kcm_config = _kubeconfig(
        launch, server, pki, "controller_manager", "system:kube-controller-manager"
    )
    kcm, kcm_port = _start_controller_manager(launch, kcm_config, pki)
    scheduler_config = _kubeconfig(launch, server, pki, "scheduler", "system:kube-scheduler")
    scheduler, scheduler_port = _start_scheduler(launch, scheduler_config)
    everything = [etcd, apiserver, kcm, scheduler]
    for port, what in ((kcm_port, "kube-controller-manager"), (scheduler_port, "kube-scheduler")):
        sup.wait_until(partial(_https_healthz, port), f"{what} /healthz", timeout_s, everything)
    # Pods cannot be created in a namespace until its default ServiceAccount exists.
    sup.wait_until(
        lambda: _default_sa_exists(api), "the default ServiceAccount", timeout_s, everything
    )
    api.close()
    return ControlPlane(server, admin_kubeconfig, admin, pki, logs / AUDIT_LOG)
