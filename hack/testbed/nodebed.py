"""The node bed: the bed's control plane and PostgreSQL with a real node instead of the pod
executor: kubelet, containerd + runc, CNI (bridge, host-local, portmap), kube-proxy and
kube-router's NetworkPolicy controller.

The node lives in network and mount namespaces of its own, held by one `sleep` process:

- network: the CNI bridge `cni0` (10.244.0.1/24, pods get 10.244.0.0/24), kube-proxy's
  iptables rules, kube-router's NetworkPolicy rules and ipsets, kubelet's port. No route
  leaves it; nothing on the host's network changes.
  `testbed.forward` links it to the host's loopback: the API server and PostgreSQL appear
  inside at their host port numbers (pods use 10.244.0.1:<port>), and the API server
  reaches kubelet, pods and Services through a CONNECT proxy (its egress selector);
- mount: kubelet's volume mounts, containerd's snapshots and the pods' network namespaces
  vanish with it. Kernel settings kubelet would change host-wide (vm.overcommit_memory,
  kernel.panic, kernel.panic_on_oops) are shown to it with the values it wants instead,
  so a shared machine keeps its own.

Pods run in cgroups under /optuna-bed-<id> (cgroupfs driver; tried on cgroup v1), so
several beds coexist and stop() finds every container of this one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from testbed import procs
from testbed.bed import Bed, BedOptions
from testbed.controlplane import SERVICE_CIDR
from testbed.errors import BedError
from testbed.kubeapi import ApiError, KubeApi
from testbed.kubeconfig import Credentials, read_kubeconfig, write_kubeconfig
from testbed.nodecerts import KeyPair, issue_client_cert, new_ca
from testbed.paths import HACK_DIR, REPO_ROOT

__all__ = ["NODE_GATEWAY", "NodeBed", "NodeBedOptions", "image_archives"]

POD_CIDR = "10.244.0.0/24"
# The bridge's address inside the node namespace: the node's InternalIP, the pods' gateway,
# and where pods find the bed's PostgreSQL and API server.
NODE_GATEWAY = "10.244.0.1"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
RUNC = "/usr/sbin/runc"
# kube-router's health endpoint inside the node namespace (its default port).
KUBE_ROUTER_HEALTH_PORT = 20244
# What kube-router's NetworkPolicy controller reads (its documented ClusterRole, less what
# only its router, service proxy and load-balancer allocator use).
_KUBE_ROUTER_RULES = [
    {
        "apiGroups": [""],
        "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
]

# What kubelet would write host-wide when protectKernelDefaults is false
# (pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables).
_KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


def image_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("OPTUNA_OPERATOR_CACHE", cache / "optuna-operator")) / "images"


def image_archives(*names: str) -> list[Path]:
    """Archives under the image cache (pause.tar, busybox.tar, operator.tar, ...)."""
    return [image_dir() / f"{n}.tar" for n in names]


@dataclass
class NodeBedOptions(BedOptions):
    # docker-archive tarballs imported into containerd's k8s.io namespace at start.
    images: list[Path] = field(default_factory=lambda: image_archives("pause", "busybox"))


@dataclass(frozen=True)
class _NodeState:
    run_dir: str
    cgroup_root: str
    netns_inode: int

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> _NodeState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None


def _kube_router() -> Path:
    """kube-router from its versioned cache, built first when missing (minutes when cold)."""
    script = HACK_DIR / "nodebed" / "build-kube-router.sh"
    out = subprocess.run([str(script), "--print"], capture_output=True, text=True, check=False)
    binary = Path(out.stdout.strip()) / "kube-router"
    if out.returncode == 0 and binary.is_file():
        return binary
    result = subprocess.run([str(script)], stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0 or not binary.is_file():
        raise BedError(f"{script} failed (exit {result.returncode}); {binary} is missing")
    return binary


def _node_binaries(bin_dir: Path) -> Path:
    """Checks (and builds) what the node runs; returns kube-router's path."""
    missing = [b for b in ("kubelet", "kube-proxy") if not (bin_dir / b).is_file()]
    if missing:
        script = HACK_DIR / "build-binaries.sh"
        result = subprocess.run([str(script), "--node"], stdout=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            raise BedError(f"{script} --node failed (exit {result.returncode}); missing {missing}")
    kube_router = _kube_router()
    tools = {
        "containerd": shutil.which("containerd"),
        "ctr": shutil.which("ctr"),
        "runc": RUNC if os.access(RUNC, os.X_OK) else None,
        "iptables": shutil.which("iptables"),
        "ipset": shutil.which("ipset"),
        "nsenter": shutil.which("nsenter"),
        "unshare": shutil.which("unshare"),
        "cni bridge": next((d for d in CNI_BIN_DIRS if Path(d, "bridge").exists()), None),
    }
    absent = [name for name, path in tools.items() if path is None]
    if absent:
        raise BedError(
            f"the node bed needs {', '.join(absent)}: run hack/nodebed/install-packages.sh "
            "(Debian's containerd, runc, containernetworking-plugins, iptables, conntrack, ipset)"
        )
    if os.geteuid() != 0:
        raise BedError("the node bed runs kubelet and containerd, which need root")
    return kube_router


def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def _cgroup_mounts() -> list[Path]:
    """Every cgroup hierarchy's mount point (v1 controllers, or the one v2 mount)."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] in ("cgroup", "cgroup2"):
            out.append(Path(parts[1]))
    return out


class NodeBed(Bed):
    """A Bed whose node is a real kubelet with containerd, CNI and kube-proxy."""

    options: NodeBedOptions

    def __init__(
        self, directory: Path, options: NodeBedOptions | None = None, detached: bool = False
    ) -> None:
        super().__init__(directory, options or NodeBedOptions(), detached)
        ident = hashlib.sha256(str(self.directory).encode()).hexdigest()[:10]
        # Unix socket paths are limited to 108 bytes: pytest's temp dirs are too long.
        self.run_dir = Path("/run") / f"optuna-bed-{ident}"
        self.cgroup_root = f"/optuna-bed-{ident}"
        self.node_dir = self.directory / "node"
        self.containerd_socket = self.run_dir / "containerd.sock"
        self._netns_holder: procs.ProcessRecord | None = None
        self._kube_router_bin = Path()
        self._node_kubeconfigs: dict[str, Path] = {}

    @property
    def pod_logs_dir(self) -> Path:
        """kubelet's /var/log/pods for this node: <ns>_<pod>_<uid>/<container>/<n>.log."""
        return self.node_dir / "pod-logs"

    @property
    def storage_url_for_pods(self) -> str:
        """The bed's PostgreSQL as pods reach it (through the node namespace's gateway)."""
        return self.storage_url.replace("@127.0.0.1:", f"@{NODE_GATEWAY}:")

    # --- start ------------------------------------------------------------------------
    def start(self) -> NodeBed:
        self._stop_node()  # leftovers of an earlier bed in the same directory
        shutil.rmtree(self.node_dir, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for d in (self.node_dir / "pki", self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        pki = self.node_dir / "pki"
        # kubelet trusts this CA for client certificates; the API server presents one.
        kubelet_ca = new_ca(pki, "kubelet-client-ca")
        apiserver_client = issue_client_cert(
            pki, "apiserver-kubelet-client", kubelet_ca, "kube-apiserver-kubelet-client"
        )
        egress = self.node_dir / "egress-selector.yaml"
        egress.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apiserver.k8s.io/v1beta1",
                    "kind": "EgressSelectorConfiguration",
                    "egressSelections": [
                        {
                            "name": "cluster",
                            "connection": {
                                "proxyProtocol": "HTTPConnect",
                                "transport": {
                                    "uds": {"udsName": str(self.run_dir / "egress.sock")}
                                },
                            },
                        }
                    ],
                }
            )
        )
        self._kubelet_ca = kubelet_ca
        self.options.apiserver_args = [
            *self.options.apiserver_args,
            f"--egress-selector-config-file={egress}",
            f"--kubelet-client-certificate={apiserver_client.cert}",
            f"--kubelet-client-key={apiserver_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            # The `kubernetes` Service's endpoint: the gateway inside the node namespace,
            # where the forwarder listens on the API server's port.
            f"--advertise-address={NODE_GATEWAY}",
        ]
        super().start()
        return self

    def _start_executor(self) -> None:
        """Instead of the pod executor: the node."""
        if self.bin_dir == Path():
            raise BedError("binaries not resolved")
        self._kube_router_bin = _node_binaries(self.bin_dir)
        timeout = self.options.start_timeout_s
        api_port = int(self.server.rsplit(":", 1)[1])
        pg_port = int(self.storage_url.rsplit("@", 1)[1].split("/")[0].rsplit(":", 1)[1])
        kubelet_port = 10250

        self._start_namespaces()
        self._start_forwarder(api_port, pg_port)
        creds = self._node_credentials()
        self._node_kubeconfigs = creds
        self._start_containerd(timeout)
        self._import_images(self.options.images)
        self._start_kubelet(creds["kubelet"], kubelet_port)
        self._start_kube_proxy(creds["kube-proxy"])

    def _wait_node_ready(self, timeout_s: float) -> None:
        """kube-router once the Node has its InternalIP (it reads both at start), then Ready.

        NetworkPolicy is enforced before the node takes its first pod.
        """
        self._start_kube_router(self._node_kubeconfigs["kube-router"], timeout_s)
        super()._wait_node_ready(timeout_s)

    def _ns(self, *argv: str) -> list[str]:
        """argv run inside the node's network and mount namespaces."""
        if self._netns_holder is None:
            raise BedError("node namespaces not started")
        pid = self._netns_holder.pid
        return ["nsenter", f"--net=/proc/{pid}/ns/net", f"--mount=/proc/{pid}/ns/mnt", "--", *argv]

    def _start_namespaces(self) -> None:
        sysctl_dir = self.node_dir / "sysctl"
        sysctl_dir.mkdir(parents=True, exist_ok=True)
        masks = []
        for key, want in _KUBELET_SYSCTLS.items():
            host = Path("/proc/sys", key)
            if host.read_text().strip() != want:
                fake = sysctl_dir / key.replace("/", ".")
                fake.write_text(want + "\n")
                masks.append(f"mount --bind -o ro {fake} {host}")
        # Private propagation first (unshare's default), then shared inside: kubelet and
        # containerd need rshared mounts, and nothing propagates back to the host.
        script = " && ".join(
            [
                "mount --make-rshared /",
                *masks,
                "ip link set lo up",
                "ip link add cni0 type bridge",
                f"ip addr add {NODE_GATEWAY}/24 dev cni0",
                "ip link set cni0 up",
                "sysctl -qw net.ipv4.ip_forward=1",
                # ClusterIP replies between pods on the bridge must pass iptables (un-DNAT).
                "sysctl -qw net.bridge.bridge-nf-call-iptables=1",
                "touch " + str(self.node_dir / "netns.ready"),
                "exec sleep 2147483647",
            ]
        )
        self._netns_holder = self._sup.spawn(
            "node-namespaces",
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            self.logs_dir / "node-namespaces.log",
            death_signal=signal.SIGKILL,
        )
        holder = self._netns_holder
        self._sup.wait_until(
            lambda: (self.node_dir / "netns.ready").exists(),
            "the node's namespaces",
            30,
            [holder],
        )
        inode = os.stat(f"/proc/{holder.pid}/ns/net").st_ino
        _NodeState(str(self.run_dir), self.cgroup_root, inode).save(self.node_dir / "state.json")

    def _start_forwarder(self, api_port: int, pg_port: int) -> None:
        assert self._netns_holder is not None
        ready = self.node_dir / "forward.ready"
        config = {
            "netns": f"/proc/{self._netns_holder.pid}/ns/net",
            "listen_in_node": [
                {"listen": f"0.0.0.0:{api_port}", "target": f"127.0.0.1:{api_port}"},
                {"listen": f"{NODE_GATEWAY}:{pg_port}", "target": f"127.0.0.1:{pg_port}"},
            ],
            "connect_proxy": str(self.run_dir / "egress.sock"),
            "ready_file": str(ready),
        }
        path = self.node_dir / "forward.json"
        path.write_text(json.dumps(config, indent=2))
        rec = self._sup.spawn(
            "forward",
            [sys.executable, "-m", "testbed.forward", str(path)],
            self.logs_dir / "forward.log",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(HACK_DIR)},
            cwd=REPO_ROOT,
        )
        self._sup.wait_until(ready.exists, "the node forwarder", 30, [rec])

    def _node_credentials(self) -> dict[str, Path]:
        pki_dir = self.node_dir / "pki"
        cp_pki = self.directory / "controlplane" / "pki"
        bed_ca = KeyPair(cp_pki / "ca.crt", cp_pki / "ca.key")
        name = self.options.node_name
        users = {
            "kubelet": (f"system:node:{name}", "system:nodes"),
            # The built-in binding system:node-proxier names this user.
            "kube-proxy": ("system:kube-proxy", None),
            "kube-router": ("testbed:kube-router", None),
        }
        out = {}
        for stem, (cn, org) in users.items():
            pair = issue_client_cert(pki_dir, stem, bed_ca, cn, org)
            kubeconfig = self.node_dir / f"{stem}.kubeconfig"
            write_kubeconfig(
                kubeconfig, Credentials(self.server, bed_ca.cert, pair.cert, pair.key), cn
            )
            out[stem] = kubeconfig
        api = KubeApi(read_kubeconfig(self.kubeconfig), timeout_s=10)
        try:
            with contextlib.suppress(ApiError):
                api.post(
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "ClusterRole",
                        "metadata": {"name": "testbed:kube-router"},
                        "rules": _KUBE_ROUTER_RULES,
                    },
                )
            # Authorization is RBAC only (no Node authorizer): bind the node's role to its
            # user, and let the API server's kubelet client use kubelet's API (as kubeadm does).
            for binding, role, user in (
                ("testbed:kube-router", "testbed:kube-router", "testbed:kube-router"),
                ("testbed:node", "system:node", f"system:node:{name}"),
                (
                    "testbed:kubelet-api",
                    "system:kubelet-api-admin",
                    "kube-apiserver-kubelet-client",
                ),
            ):
                body = {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                    ],
                }
                with contextlib.suppress(ApiError):
                    api.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body)
        finally:
            api.close()
        return out

    def _start_containerd(self, timeout_s: float) -> None:
        cdir = self.node_dir / "containerd"
        cni_conf = self.node_dir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        cni_bin = next(d for d in CNI_BIN_DIRS if Path(d, "bridge").exists())
        (cni_conf / "10-testbed.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "testbed",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            # No masquerade: nothing is routed beyond the node namespace.
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.node_dir / "cni" / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{cdir / "root"}"
state = "{self.run_dir / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.run_dir / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{cdir / "opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which some machines (VM sandboxes)
  # withhold even from root; pods then keep at least containerd's own score.
  restrict_oom_score_adj = {str(not _has_cap_sys_resource()).lower()}
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{RUNC}"
[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
"""
        cdir.mkdir(parents=True, exist_ok=True)
        path = cdir / "config.toml"
        path.write_text(config)
        rec = self._sup.spawn(
            "containerd",
            self._ns("containerd", "--config", str(path)),
            self.logs_dir / "containerd.log",
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            death_signal=signal.SIGKILL,
        )

        def answers() -> bool:
            return self._ctr("version").returncode == 0

        self._sup.wait_until(answers, "containerd", timeout_s, [rec])

    def _ctr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _import_images(self, archives: list[Path]) -> None:
        basics = image_archives("pause", "busybox")
        if any(a in basics and not a.is_file() for a in archives):
            # The pause and busybox images take seconds: build them rather than fail.
            script = HACK_DIR / "nodebed" / "build-base.sh"
            subprocess.run([str(script), "--no-base"], check=False, stdout=subprocess.DEVNULL)
        for archive in archives:
            if not archive.is_file():
                raise BedError(
                    f"image archive {archive} is missing: run `make images` "
                    "(hack/nodebed/build-images.sh)"
                )
            # Kubelet never pulls here (no registry): images stay pinned by never collecting.
            res = self._ctr("images", "import", str(archive))
            if res.returncode != 0:
                raise BedError(f"ctr images import {archive} failed: {res.stderr.strip()}")

    def import_image(self, archive: Path) -> None:
        """Import another image archive into the running node's containerd."""
        self._import_images([archive])

    def _start_kubelet(self, kubeconfig: Path, port: int) -> None:
        kdir = self.node_dir / "kubelet"
        kdir.mkdir(parents=True, exist_ok=True)
        self.pod_logs_dir.mkdir(parents=True, exist_ok=True)
        for mount in _cgroup_mounts():
            cg = mount / self.cgroup_root.lstrip("/")
            with contextlib.suppress(FileExistsError):
                cg.mkdir()
            # cgroup v1 cpuset: a new group has no CPUs or memory nodes until given some.
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (mount / f).exists() and not (cg / f).read_text().strip():
                    (cg / f).write_text((mount / f).read_text())
        resolv = self.node_dir / "resolv.conf"
        # No cluster DNS and no route out: pods get an empty resolver configuration.
        resolv.write_text("")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_GATEWAY,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self._kubelet_ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageServiceEndpoint": f"unix://{self.containerd_socket}",
            # No registry: an image collected could never come back; pause above all.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "resolvConf": str(resolv),
            "podLogsDir": str(self.pod_logs_dir),
            "serializeImagePulls": False,
            "maxPods": 110,
            "nodeStatusUpdateFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "protectKernelDefaults": False,
            "failCgroupV1": False,
            "localStorageCapacityIsolation": True,
        }
        path = kdir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        rec = self._sup.spawn(
            "kubelet",
            self._ns(
                str(self.bin_dir / "kubelet"),
                f"--config={path}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={self.options.node_name}",
                f"--node-ip={NODE_GATEWAY}",
                f"--root-dir={kdir / 'root'}",
                f"--cert-dir={kdir / 'pki'}",
                "--v=1",
            ),
            self.logs_dir / "kubelet.log",
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            death_signal=signal.SIGKILL,
        )
        self._sup.check_alive([rec])

    def _start_kube_proxy(self, kubeconfig: Path) -> None:
        pdir = self.node_dir / "kube-proxy"
        pdir.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.options.node_name,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # A network namespace may not write the host-wide conntrack table sizes.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }
        path = pdir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        rec = self._sup.spawn(
            "kube-proxy",
            self._ns(str(self.bin_dir / "kube-proxy"), f"--config={path}", "--v=1"),
            self.logs_dir / "kube-proxy.log",
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            death_signal=signal.SIGKILL,
        )
        self._sup.check_alive([rec])

    def _start_kube_router(self, kubeconfig: Path, timeout_s: float) -> None:
        """kube-router's NetworkPolicy controller only: iptables rules and ipsets in the node
        namespace that admit a pod's traffic only as the NetworkPolicies selecting it say.
        It reads the Node (its InternalIP tells it which pods are local) when it starts."""
        api = KubeApi(read_kubeconfig(self.kubeconfig), timeout_s=10)
        name = self.options.node_name

        def node_has_ip() -> bool:
            node = api.get_or_none(f"/api/v1/nodes/{name}")
            if node is None:
                return False
            addresses = node.get("status", {}).get("addresses", [])
            return any(a.get("type") == "InternalIP" for a in addresses)

        try:
            self._sup.wait_until(
                node_has_ip, f"node {name} to register its InternalIP", timeout_s, self._sup.records
            )
        finally:
            api.close()
        rec = self._sup.spawn(
            "kube-router",
            self._ns(
                str(self._kube_router_bin),
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={name}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--health-port={KUBE_ROUTER_HEALTH_PORT}",
                "--metrics-port=0",
                "--v=1",
            ),
            self.logs_dir / "kube-router.log",
            env={
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "NODE_NAME": name,
            },
            death_signal=signal.SIGKILL,
        )

        def default_chain() -> bool:
            # The chain every pod without a policy passes; made before the first full sync.
            res = subprocess.run(
                self._ns("iptables", "-w", "5", "-S", "KUBE-NWPLCY-DEFAULT"),
                capture_output=True,
                check=False,
            )
            return res.returncode == 0

        self._sup.wait_until(default_chain, "kube-router's NetworkPolicy chains", timeout_s, [rec])

    def iptables_save(self) -> str:
        """The node namespace's filter table (kube-proxy's and kube-router's rules)."""
        res = subprocess.run(
            self._ns("iptables-save", "-t", "filter"), capture_output=True, text=True, check=False
        )
        return res.stdout + res.stderr

    # --- stop -------------------------------------------------------------------------
    def stop(self) -> None:
        self._kill_containers()
        super().stop()
        self._stop_node()

    def _cgroup_pids(self, root: str) -> set[int]:
        pids: set[int] = set()
        for mount in _cgroup_mounts():
            top = mount / root.lstrip("/")
            if not top.is_dir():
                continue
            for dirpath, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError):
                        text = Path(dirpath, "cgroup.procs").read_text()
                        pids.update(int(p) for p in text.split())
        return pids

    def _netns_pids(self, inode: int) -> set[int]:
        """Processes in the node's network namespace: containerd's shims outlive it."""
        pids = set()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry.name}/ns/net").st_ino == inode:
                        pids.add(int(entry.name))
        return pids

    def _kill_containers(self) -> None:
        state = _NodeState.load(self.node_dir / "state.json")
        if state is None:
            return
        for _ in range(20):
            pids = self._cgroup_pids(state.cgroup_root) | self._netns_pids(state.netns_inode)
            pids.discard(os.getpid())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.25)

    def _stop_node(self) -> None:
        """Everything of a node that outlives its processes: cgroups, the run dir."""
        state = _NodeState.load(self.node_dir / "state.json")
        if state is None:
            return
        self._kill_containers()
        for mount in _cgroup_mounts():
            top = mount / state.cgroup_root.lstrip("/")
            if not top.is_dir():
                continue
            # Children before parents; cgroupfs directories are removed with rmdir.
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        shutil.rmtree(state.run_dir, ignore_errors=True)
        if not self._netns_pids(state.netns_inode):
            # Unpacked images and pod volumes: gigabytes per bed. The mounts on them lived
            # in the node's mount namespace, gone with its last process.
            for heavy in ("containerd", "kubelet"):
                shutil.rmtree(self.node_dir / heavy, ignore_errors=True)
        (self.node_dir / "state.json").unlink(missing_ok=True)

    # --- what tests use -----------------------------------------------------------------
    def pod_log(
        self, namespace: str, pod: str, container: str | None = None, previous: bool = False
    ) -> str:
        """A container's log from kubelet's files (CRI format, the message part only).

        container defaults to the only (or first alphabetical) one; `kubectl logs` reads the
        same files through the API server.
        """
        dirs = sorted(
            self.pod_logs_dir.glob(f"{namespace}_{pod}_*"), key=lambda d: d.stat().st_mtime
        )
        if not dirs:
            raise FileNotFoundError(f"no logs for pod {namespace}/{pod} on this node")
        names = sorted(d.name for d in dirs[-1].iterdir() if d.is_dir())
        name = container or names[0]
        attempts = sorted(int(p.stem) for p in (dirs[-1] / name).glob("*.log"))
        if previous:
            attempts = attempts[:-1]
        if not attempts:
            return ""
        lines = (dirs[-1] / name / f"{attempts[-1]}.log").read_text(errors="replace").splitlines()
        # <time> <stream> <P|F> <message>: P marks a line kubelet split.
        out = []
        for line in lines:
            parts = line.split(" ", 3)
            if len(parts) == 4:
                out.append(parts[3] + ("" if parts[2] == "P" else "\n"))
        return "".join(out)

    def env(self) -> dict[str, str]:
        out = super().env()
        out["STORAGE_URL_FOR_PODS"] = self.storage_url_for_pods
        return out
