"""NetworkPolicy is enforced on the node bed: kube-router's NetworkPolicy controller turns
policies into iptables rules and ipsets on the node, and a pod the policy does not admit
gets no connection, by pod IP or through its Service's ClusterIP.

Every claim is shown both ways: the same client gets an answer without the policy (or with
the label the policy asks for), so the denial is the policy's doing, not a broken network.
The chart's own policies are checked here too (the operator's metrics port) and in
test_node_bed.py (the namespace's dashboard).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from tests.node.conftest import MONITORING_PEER, RELEASE, Kube
from tests.node.netcheck import (
    check_admits_only_labelled_namespaces,
    client,
    http_server,
    until_answer,
    until_denied,
    wait_ready,
)

PORT = 8080
SERVER = "np-server"
POLICY = "np-server-ingress"


@dataclass(frozen=True)
class Setup:
    server_ns: str  # the server, its Service, and `neighbour` (role=client)
    other_ns: str  # `client` (role=client): a namespace the policy does not name
    allowed_ns: str  # `client` (role=client) and `stranger` (no role)
    urls: dict[str, str]  # by pod IP and by ClusterIP
    body: str

    def policy(self) -> dict[str, object]:
        """Ingress to the server only from role=client pods of allowed_ns, on PORT."""
        peer = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.allowed_ns}},
            "podSelector": {"matchLabels": {"role": "client"}},
        }
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "podSelector": {"matchLabels": {"app": SERVER}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [peer], "ports": [{"protocol": "TCP", "port": PORT}]}],
            },
        }


@pytest.fixture(scope="module")
def setup(kube: Kube) -> Setup:
    server_ns, other_ns, allowed_ns = (kube.namespace(restricted=True) for _ in range(3))
    http_server(kube, server_ns, SERVER, {"app": SERVER}, PORT)
    client(kube, server_ns, "neighbour", {"role": "client"})
    client(kube, other_ns, "client", {"role": "client"})
    client(kube, allowed_ns, "client", {"role": "client"})
    client(kube, allowed_ns, "stranger")
    server = wait_ready(kube, server_ns, SERVER, "neighbour")[SERVER]
    wait_ready(kube, other_ns, "client")
    wait_ready(kube, allowed_ns, "client", "stranger")
    service = kube.get("svc", SERVER, "-n", server_ns)
    urls = {
        "pod IP": f"http://{server['status']['podIP']}:{PORT}/",
        "ClusterIP": f"http://{service['spec']['clusterIP']}:{PORT}/",
    }
    return Setup(server_ns, other_ns, allowed_ns, urls, f"{SERVER} in {server_ns}")


def clients(s: Setup) -> dict[str, tuple[str, str]]:
    return {
        "other namespace": (s.other_ns, "client"),
        "allowed namespace, role=client": (s.allowed_ns, "client"),
        "allowed namespace, no role": (s.allowed_ns, "stranger"),
        "server's own namespace": (s.server_ns, "neighbour"),
    }


def remove_policy(kube: Kube, s: Setup) -> None:
    kube.kubectl("delete", "networkpolicy", POLICY, "-n", s.server_ns, "--ignore-not-found")


def test_without_a_policy_every_namespace_gets_an_answer(kube: Kube, setup: Setup) -> None:
    remove_policy(kube, setup)
    for ns, pod in clients(setup).values():
        for url in setup.urls.values():
            until_answer(kube, ns, pod, url, setup.body)


def test_policy_admits_only_the_selected_pods_of_the_selected_namespace(
    kube: Kube, setup: Setup
) -> None:
    kube.kubectl("apply", "-n", setup.server_ns, "-f", "-", stdin=json.dumps(setup.policy()))
    try:
        for url in setup.urls.values():
            # Enforced: a client of a namespace the policy does not select is refused ...
            until_denied(kube, setup.other_ns, "client", url)
            # ... while the one peer it selects still gets the answer ...
            until_answer(kube, setup.allowed_ns, "client", url, setup.body)
            # ... and neither the right namespace alone nor the right label alone is enough.
            until_denied(kube, setup.allowed_ns, "stranger", url)
            until_denied(kube, setup.server_ns, "neighbour", url)
    finally:
        remove_policy(kube, setup)
    # Without it, the refused client gets its answer again: the denial was the policy's.
    for url in setup.urls.values():
        until_answer(kube, setup.other_ns, "client", url, setup.body)


def test_a_label_change_admits_a_pod_and_revokes_it(kube: Kube, setup: Setup) -> None:
    """Peers are matched by label at connection time, not only when the policy is made."""
    kube.kubectl("apply", "-n", setup.server_ns, "-f", "-", stdin=json.dumps(setup.policy()))
    url = setup.urls["pod IP"]
    try:
        until_denied(kube, setup.allowed_ns, "stranger", url)
        kube.kubectl("label", "pod", "stranger", "-n", setup.allowed_ns, "role=client")
        until_answer(kube, setup.allowed_ns, "stranger", url, setup.body)
        kube.kubectl("label", "pod", "stranger", "-n", setup.allowed_ns, "role-")
        until_denied(kube, setup.allowed_ns, "stranger", url)
    finally:
        kube.kubectl("label", "pod", "stranger", "-n", setup.allowed_ns, "role-", check=False)
        remove_policy(kube, setup)


def test_chart_metrics_port_admits_only_the_prometheus_namespace(kube: Kube, chart: str) -> None:
    """The chart's NetworkPolicy on the operator pod (metrics.networkPolicy.allowedFrom, here
    namespaces labelled as MONITORING_PEER): the metrics port answers Prometheus's namespace
    and refuses any other, by pod IP and through the metrics Service."""
    service = kube.get("svc", f"{RELEASE}-metrics", "-n", chart)
    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())

    def one_operator_pod() -> dict[str, object] | None:
        # The chart fixture's helm upgrade rolls the Deployment: wait out the old pod.
        pods = kube.get("pods", "-n", chart, "-l", selector)["items"]
        return pods[0] if len(pods) == 1 and pods[0]["status"].get("podIP") else None

    pod = kube.wait_for(one_operator_pod, "one operator pod", 120)
    port = service["spec"]["ports"][0]["port"]
    urls = {
        "pod IP": f"http://{pod['status']['podIP']}:{port}/metrics",
        "ClusterIP": f"http://{service['spec']['clusterIP']}:{port}/metrics",
    }
    check_admits_only_labelled_namespaces(
        kube, urls, MONITORING_PEER, expect="optuna_operator_build_info"
    )
