"""Fixtures of the node-bed tests (`make test-node`): a real kubelet, containerd, CNI and
kube-proxy running the project's own images, the chart installed with helm.

One node bed per session. It needs root, Debian's containerd/runc/CNI plugins and the image
archives from `make images-buildah`; without them the tests fail saying so, never skip.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from optuna_operator import __version__
from testbed import BedError
from testbed.nodebed import NodeBed, NodeBedOptions, image_archives

CHART = Path(__file__).resolve().parents[2] / "charts" / "optuna-operator"
IMAGES = ("pause", "busybox", "operator", "worker", "examples", "dashboard", "pgbouncer")
TAG = __version__  # what hack/nodebed/build-images.sh tags (pyproject.toml)
EXAMPLES_IMAGE = f"ghcr.io/optuna-operator/worker-examples:{TAG}"
BUSYBOX_IMAGE = "localhost/optuna-operator/busybox:1.35"
PGBOUNCER_IMAGE = f"ghcr.io/optuna-operator/pgbouncer:{TAG}"
RELEASE_NS = "optuna-system"
RELEASE = "optuna-operator"
# The one namespace the chart's operator serves (watchNamespaces, the chart's default mode:
# a Role there and nothing elsewhere); restricted Pod Security. The studies run here.
STUDY_NS = "t-node-studies"
# The chart's NetworkPolicy peers in these tests: namespaces labelled so may reach the
# dashboards (dashboard.allowedFrom) and the operator's metrics port
# (metrics.networkPolicy.allowedFrom, a Prometheus namespace); nothing else may.
DASHBOARD_PEER = {"optuna-operator.test/peer": "dashboard"}
MONITORING_PEER = {"optuna-operator.test/peer": "monitoring"}


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    res = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, check=False, timeout=600
    )
    if check and res.returncode != 0:
        command = " ".join([Path(argv[0]).name, *argv[1:]])
        raise AssertionError(f"{command} failed:\n{res.stdout}{res.stderr}")
    return res.stdout + ("" if check else res.stderr)


@dataclass
class Kube:
    """kubectl and helm against the node bed, as a user runs them."""

    bed: NodeBed

    def run(self, tool: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
        argv = [str(self.bed.bin_dir / tool), "--kubeconfig", str(self.bed.kubeconfig), *args]
        return _run(argv, stdin, check)

    def ctr(self, *args: str) -> str:
        """containerd's ctr on the node, in kubelet's namespace (k8s.io)."""
        return _run(["ctr", "--address", str(self.bed.containerd_socket), "-n", "k8s.io", *args])

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run("kubectl", *args, stdin=stdin, check=check)

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json")))

    def wait_for(self, check: Callable[[], Any], what: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}: {last!r}")

    def namespace(self, restricted: bool = True) -> str:
        name = f"t-node-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        if restricted:
            self.kubectl(
                "label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted"
            )
        return name


# The node beds this session started and has not stopped yet.
_SESSION_BEDS: list[NodeBed] = []


@contextlib.contextmanager
def running_node_bed(
    tmp_path_factory: pytest.TempPathFactory, archives: list[Path], remedy: str
) -> Iterator[NodeBed]:
    """A node bed whose containerd holds `archives`, stopped on exit. One per session: a
    session's beds all stay up until it ends. Fails, saying `remedy`, when an archive is
    missing."""
    missing = [str(a) for a in archives if not a.is_file()]
    if missing:
        pytest.fail(f"image archives missing ({', '.join(missing)}): {remedy}")
    if _SESSION_BEDS:
        pytest.fail("one node bed per pytest session: run tests/node and tests/release apart")
    bed = NodeBed(tmp_path_factory.mktemp("node-bed"), NodeBedOptions(images=archives))
    _SESSION_BEDS.append(bed)
    try:
        bed.start()
    except BedError as err:
        pytest.fail(f"the node bed could not start:\n{err}")
    try:
        yield bed
    finally:
        bed.stop()
        _SESSION_BEDS.remove(bed)


@pytest.fixture(scope="session")
def node_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeBed]:
    with running_node_bed(
        tmp_path_factory, image_archives(*IMAGES), "run `make images-buildah`"
    ) as bed:
        yield bed


@pytest.fixture(scope="session")
def kube(node_bed: NodeBed) -> Kube:
    return Kube(node_bed)


@pytest.fixture(scope="session")
def chart(kube: Kube) -> str:
    """The chart from charts/, installed as `install_chart` says."""
    return install_chart(kube, CHART)


def install_chart(kube: Kube, chart: Path) -> str:
    """`chart` (charts/'s directory or a packaged .tgz) installed by helm into optuna-system,
    the bed's PostgreSQL as default storage and the project's PgBouncer image between the
    worker pods and it, set up as the chart README says; dashboards admit DASHBOARD_PEER
    namespaces and the metrics port MONITORING_PEER ones; the operator's and PgBouncer's pods
    are Ready. Returns the release namespace. STUDY_NS exists (the chart puts a Role into it)
    and is the one it serves."""
    kube.kubectl("create", "namespace", RELEASE_NS)
    kube.kubectl("create", "namespace", STUDY_NS)
    kube.kubectl("label", "namespace", STUDY_NS, "pod-security.kubernetes.io/enforce=restricted")
    kube.kubectl(
        "create",
        "secret",
        "generic",
        "optuna-db",
        "-n",
        RELEASE_NS,
        f"--from-literal=url={kube.bed.storage_url_for_pods}",
    )
    auth_password = secrets.token_hex(24)
    kube.bed.install_pgbouncer_auth(auth_password)
    kube.kubectl(
        "create",
        "secret",
        "generic",
        "optuna-pgbouncer",
        "-n",
        RELEASE_NS,
        f"--from-literal=password={auth_password}",
    )
    database = make_url(kube.bed.storage_url_for_pods)
    values = [
        f"watchNamespaces={{{STUDY_NS}}}",
        "storage.existingSecret.name=optuna-db",
        "statusInterval=3",
        "pgbouncer.enabled=true",
        "pgbouncer.auth.existingSecret=optuna-pgbouncer",
        f"pgbouncer.database.host={database.host}",
        f"pgbouncer.database.port={database.port}",
    ]
    peers = {
        "dashboard.allowedFrom": DASHBOARD_PEER,
        "metrics.networkPolicy.allowedFrom": MONITORING_PEER,
    }
    helm_args = ["-n", RELEASE_NS, "--wait", "--timeout", "5m"]
    sets = [arg for value in values for arg in ("--set", value)]
    for key, labels in peers.items():
        peer = [{"namespaceSelector": {"matchLabels": labels}}]
        sets += ["--set-json", f"{key}={json.dumps(peer)}"]
    kube.run("helm", "install", RELEASE, str(chart), *sets, *helm_args)
    # The bed has no cluster DNS: the workers reach PgBouncer at its Service's IP.
    service = kube.get("svc", "optuna-operator-pgbouncer", "-n", RELEASE_NS)["spec"]
    address = f"pgbouncer.workerAddress={service['clusterIP']}:{service['ports'][0]['port']}"
    kube.run("helm", "upgrade", RELEASE, str(chart), *sets, "--set", address, *helm_args)
    return RELEASE_NS
