"""Connections between pods on the node bed, for the NetworkPolicy tests.

A client is a long-running busybox pod; each probe is `wget` run in it through `kubectl
exec`, so a probe starts from that pod's own IP and network namespace, as a real client's
connection would. kube-router applies a policy, a new pod or a label change a moment after
the API server has it, so every expectation is polled until it holds, then held: a denied
client must stay denied on the probes that follow, or the test fails.

A refusal is what kube-router's rules give (REJECT: "Connection refused"); a timeout counts
as no answer too. Any other failure (the exec itself failed) is neither, and never passes as
a denial.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from tests.node.conftest import BUSYBOX_IMAGE, Kube

# Restricted Pod Security: the test namespaces enforce it.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# How long a probe waits for an answer inside the client (busybox timeout around wget).
PROBE_TIMEOUT_S = 5
# Probes that must agree once a denial was seen: kube-router's sync must not flap.
CONFIRMATIONS = 3


@dataclass(frozen=True)
class Reply:
    """One probe: an answer (body), a refusal, a timeout, or an error of the probe itself."""

    outcome: str  # "answer", "refused", "timeout" or "error"
    text: str

    @property
    def denied(self) -> bool:
        return self.outcome in ("refused", "timeout")


def busybox_pod(
    name: str,
    command: list[str],
    labels: dict[str, str] | None = None,
    port: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": BUSYBOX_IMAGE,
        "command": command,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port}]
        # kubelet probes from the node itself, which NetworkPolicy never blocks.
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 2}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "securityContext": POD_SECURITY,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [container],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }


def http_server(kube: Kube, ns: str, name: str, labels: dict[str, str], port: int) -> None:
    """busybox httpd answering `<name> in <ns>` on port, and a ClusterIP Service of it."""
    body = f"{name} in {ns}"
    script = f"echo '{body}' > /scratch/index.html && exec httpd -f -p {port} -h /scratch"
    pod = busybox_pod(name, ["sh", "-c", script], labels, port)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"port": port, "targetPort": "http"}]},
    }
    items = {"apiVersion": "v1", "kind": "List", "items": [pod, service]}
    kube.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(items))


def client(kube: Kube, ns: str, name: str, labels: dict[str, str] | None = None) -> None:
    """A pod that only waits, for probes to be run in it."""
    pod = busybox_pod(name, ["sleep", "86400"], labels)
    kube.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))


def wait_ready(kube: Kube, ns: str, *names: str) -> dict[str, dict[str, Any]]:
    """Every named pod Ready (has an IP); returns them by name."""

    def ready() -> dict[str, dict[str, Any]] | None:
        pods = {}
        for name in names:
            pod = kube.get("pod", name, "-n", ns)
            conditions = pod.get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return None
            pods[name] = pod
        return pods

    return dict(kube.wait_for(ready, f"pods {', '.join(names)} in {ns} to be Ready", 180))


def probe(kube: Kube, ns: str, pod: str, url: str) -> Reply:
    res = subprocess.run(
        [
            str(kube.bed.bin_dir / "kubectl"),
            "--kubeconfig",
            str(kube.bed.kubeconfig),
            "exec",
            "-n",
            ns,
            pod,
            "--",
            # Not wget's -T: Debian's static busybox 1.35 segfaults with it.
            "timeout",
            str(PROBE_TIMEOUT_S),
            "wget",
            "-qO-",
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if res.returncode == 0:
        return Reply("answer", res.stdout)
    err = res.stderr.strip()
    if "Connection refused" in err:
        return Reply("refused", err)
    if res.returncode == 143:  # busybox timeout's SIGTERM: no answer in PROBE_TIMEOUT_S
        return Reply("timeout", err or f"no answer in {PROBE_TIMEOUT_S}s")
    return Reply("error", err or f"exit {res.returncode}")


def until_answer(
    kube: Kube, ns: str, pod: str, url: str, expect: str = "", timeout_s: float = 90
) -> Reply:
    """Poll until the client gets an answer (containing expect)."""
    last: list[Reply] = []

    def answered() -> bool:
        reply = probe(kube, ns, pod, url)
        last[:] = [reply]
        return reply.outcome == "answer" and expect in reply.text

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answered():
            return last[0]
        time.sleep(1)
    raise AssertionError(f"{ns}/{pod} got no answer from {url} in {timeout_s:.0f}s: {last}")


def until_denied(kube: Kube, ns: str, pod: str, url: str, timeout_s: float = 90) -> Reply:
    """Poll until the client's connection is refused or times out, then require the next
    CONFIRMATIONS probes to be denied too (an enforcer that flaps fails here)."""
    deadline = time.monotonic() + timeout_s
    reply = probe(kube, ns, pod, url)
    while not reply.denied:
        if time.monotonic() > deadline:
            raise AssertionError(f"{ns}/{pod} still reaches {url} after {timeout_s:.0f}s: {reply}")
        time.sleep(1)
        reply = probe(kube, ns, pod, url)
    for _ in range(CONFIRMATIONS):
        again = probe(kube, ns, pod, url)
        assert again.denied, f"{ns}/{pod} was denied {url} ({reply}), then not: {again}"
    return reply


def namespace_with_client(kube: Kube, labels: dict[str, str] | None = None) -> str:
    """A fresh namespace (restricted) with the given labels and a Ready `client` pod in it."""
    ns = kube.namespace(restricted=True)
    if labels:
        kube.kubectl("label", "namespace", ns, *(f"{k}={v}" for k, v in labels.items()))
    client(kube, ns, "client")
    wait_ready(kube, ns, "client")
    return ns


def check_admits_only_labelled_namespaces(
    kube: Kube,
    urls: dict[str, str],
    peer_label: dict[str, str],
    expect: str,
    also_denied: tuple[tuple[str, str], ...] = (),
) -> str:
    """The policy in front of urls admits pods of namespaces with peer_label and no other:

    - a client in a namespace with the label gets an answer (containing expect);
    - a client in a namespace without it is refused, and so is each (ns, pod) of also_denied;
    - labelling that namespace admits the same client (so its refusal was the policy's, not
      a broken route), and removing the label refuses it again.

    Returns the labelled namespace (its pod `client` is admitted).
    """
    allowed = namespace_with_client(kube, peer_label)
    other = namespace_with_client(kube)
    for url in urls.values():
        until_answer(kube, allowed, "client", url, expect)
        until_denied(kube, other, "client", url)
        for ns, pod in also_denied:
            until_denied(kube, ns, pod, url)
    kube.kubectl("label", "namespace", other, *(f"{k}={v}" for k, v in peer_label.items()))
    for url in urls.values():
        until_answer(kube, other, "client", url, expect)
    kube.kubectl("label", "namespace", other, *(f"{k}-" for k in peer_label))
    for url in urls.values():
        until_denied(kube, other, "client", url)
    return allowed
