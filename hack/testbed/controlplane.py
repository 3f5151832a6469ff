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
from pathlib import Path

from testbed.audit import AUDIT_LOG, AUDIT_POLICY
from testbed.certs import Pki, generate_pki
from testbed.kubeapi import ApiError, KubeApi
from testbed.kubeconfig import Credentials, write_kubeconfig
from testbed.ports import free_port
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


def start_control_plane(
    sup: Supervisor,
    directory: Path,
    logs: Path,
    bin_dir: Path,
    timeout_s: float = 180.0,
    extra_apiserver_args: Sequence[str] = (),
) -> ControlPlane:
    directory.mkdir(parents=True, exist_ok=True)
    pki = generate_pki(directory / "pki")

    etcd_port, peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    etcd = sup.spawn(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=testbed",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}",
            # Data is thrown away with the bed; fsync only slows tests down.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        logs / "etcd.log",
        death_signal=ORPHANED,
    )
    sup.wait_until(lambda: _etcd_healthy(etcd_port), "etcd /health", timeout_s, [etcd])

    api_port = free_port()
    server = f"https://127.0.0.1:{api_port}"
    audit_policy, audit_log = directory / "audit-policy.json", logs / AUDIT_LOG
    audit_policy.write_text(json.dumps(AUDIT_POLICY))
    apiserver = sup.spawn(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={directory / 'apiserver-certs'}",
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
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            *extra_apiserver_args,
        ],
        logs / "kube-apiserver.log",
        death_signal=ORPHANED,
    )
    admin = Credentials(server, pki.ca_cert, pki.admin.cert, pki.admin.key)
    api = KubeApi(admin, timeout_s=10)
    sup.wait_until(
        lambda: api.get_text("/readyz")[0] == 200,
        "kube-apiserver /readyz",
        timeout_s,
        [etcd, apiserver],
    )

    admin_kubeconfig = directory / "admin.kubeconfig"
    write_kubeconfig(admin_kubeconfig, admin, "testbed-admin")
    kcm_kubeconfig = directory / "controller-manager.kubeconfig"
    write_kubeconfig(
        kcm_kubeconfig,
        Credentials(server, pki.ca_cert, pki.controller_manager.cert, pki.controller_manager.key),
        "system:kube-controller-manager",
    )
    scheduler_kubeconfig = directory / "scheduler.kubeconfig"
    write_kubeconfig(
        scheduler_kubeconfig,
        Credentials(server, pki.ca_cert, pki.scheduler.cert, pki.scheduler.key),
        "system:kube-scheduler",
    )

    kcm_port = free_port()
    kcm = sup.spawn(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--cert-dir={directory / 'controller-manager-certs'}",
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
        logs / "kube-controller-manager.log",
        death_signal=ORPHANED,
    )
    scheduler_port = free_port()
    scheduler = sup.spawn(
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={scheduler_kubeconfig}",
            f"--authentication-kubeconfig={scheduler_kubeconfig}",
            f"--authorization-kubeconfig={scheduler_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={scheduler_port}",
            f"--cert-dir={directory / 'scheduler-certs'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        logs / "kube-scheduler.log",
        death_signal=ORPHANED,
    )
    everything = [etcd, apiserver, kcm, scheduler]
    sup.wait_until(
        lambda: _https_healthz(kcm_port), "kube-controller-manager /healthz", timeout_s, everything
    )
    sup.wait_until(
        lambda: _https_healthz(scheduler_port), "kube-scheduler /healthz", timeout_s, everything
    )

    def default_sa_exists() -> bool:
        try:
            api.get("/api/v1/namespaces/default/serviceaccounts/default")
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    # Pods cannot be created in a namespace until its default ServiceAccount exists.
    sup.wait_until(default_sa_exists, "the default ServiceAccount", timeout_s, everything)
    api.close()
    return ControlPlane(server, admin_kubeconfig, admin, pki, audit_log)
