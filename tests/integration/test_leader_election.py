"""Two operator replicas and one coordination.k8s.io Lease on the real API server: the holder
acts; the standby serves its health endpoint, sends the API server no list or watch request
and writes nothing; it takes over when the holder is killed (after the lease duration), stops
cleanly (at once: the Lease is released) or freezes past its renew deadline (and the frozen
one exits non-zero on waking instead of acting beside the new leader).

Each replica authenticates as a ServiceAccount of its own, so the API server's audit log
tells which of them listed and watched what."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.integration.studies import OperatorProcess, Studies, study_body, wait_for

from testbed import Bed
from testbed.ports import free_port

pytestmark = pytest.mark.usefixtures("session_operator_stopped")
LEASE = "optuna-operator"
# What the operator's flags default to: the Lease's duration, and how often it is renewed.
LEASE_SECONDS, RETRY_SECONDS = 15, 2


@dataclass
class Replica:
    name: str  # POD_NAME: the Lease's holderIdentity is this, "_" and a random suffix
    user: str  # the ServiceAccount it authenticates as
    health_port: int
    process: OperatorProcess

    def health(self) -> Any:
        """The health endpoint's JSON: {"leader": false} from a standby, kopf's from a leader."""
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as rsp:
                return json.loads(rsp.read()) if rsp.status == 200 else None
        except OSError:
            return None

    def holds(self, holder: str | None) -> bool:
        return bool(holder) and str(holder).startswith(f"{self.name}_")

    def log(self) -> str:
        return self.process.log()

    def send(self, sig: signal.Signals) -> None:
        assert self.process.proc is not None
        os.killpg(self.process.proc.pid, sig)

    def exit_code(self) -> int | None:
        assert self.process.proc is not None
        return self.process.proc.poll()


Start = Callable[..., tuple[Replica, Replica]]


def token_kubeconfig(
    bed: Bed, kube_api: client.ApiClient, namespace: str, sa: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `sa` (cluster-admin for this test)."""
    token = client.CoreV1Api(kube_api).create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    admin = yaml.safe_load(bed.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "bed", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token.status.token}}],
        "contexts": [{"name": sa, "context": {"cluster": "bed", "user": sa}}],
        "current-context": sa,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
def start_replicas(
    bed: Bed, kube_api: client.ApiClient, namespace: str, crd_installed: None, tmp_path: Path
) -> Iterator[Start]:
    """start(*flags) runs replica-a and replica-b with leader election on, the Lease in the
    test's namespace (their POD_NAMESPACE), and waits until one of them holds it."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    started: list[Replica] = []
    bindings: list[str] = []

    def start(*flags: str) -> tuple[Replica, Replica]:
        for name in ("replica-a", "replica-b"):
            core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
            binding = f"{namespace}-{name}"
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": binding},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
                }
            )
            bindings.append(binding)
            port = free_port()
            process = OperatorProcess(
                token_kubeconfig(bed, kube_api, namespace, name, tmp_path / f"{name}.kubeconfig"),
                tmp_path / f"{name}.log",
                extra_args=[f"--liveness=http://127.0.0.1:{port}/healthz", *flags],
                leader_elect=True,
                env={"POD_NAME": name, "POD_NAMESPACE": namespace},
            )
            user = f"system:serviceaccount:{namespace}:{name}"
            started.append(Replica(name, user, port, process))
        a, b = started[-2:]
        a.process.start()
        b.process.start()
        holder = wait_for(lambda: lease_holder(kube_api, namespace), 60, "a replica to lead")
        leader, standby = (a, b) if a.holds(holder) else (b, a)
        assert leader.holds(holder), holder
        wait_for(lambda: leader.health() not in (None, {"leader": False}), 60, "kopf's health")
        wait_for(lambda: standby.health() == {"leader": False}, 30, "the standby's health")
        return leader, standby

    try:
        yield start
    finally:
        for replica in started:
            if replica.process.alive():
                replica.send(signal.SIGCONT)
            replica.process.stop(kill=True)
        for binding in bindings:
            rbac.delete_cluster_role_binding(binding)


def lease(kube_api: client.ApiClient, namespace: str) -> Any:
    try:
        return client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def lease_holder(kube_api: client.ApiClient, namespace: str) -> str | None:
    found = lease(kube_api, namespace)
    return found.spec.holder_identity if found is not None else None


def listed_and_watched(bed: Bed, user: str) -> set[tuple[str, str]]:
    """(verb, resource) of every list and watch the API server logged for `user`."""
    found = set()
    for line in bed.audit_log.read_text().splitlines():
        event = json.loads(line)
        if (event.get("user") or {}).get("username") == user:
            found.add((str(event.get("verb")), str((event.get("objectRef") or {}).get("resource"))))
    return found


def took_over(
    kube_api: client.ApiClient, namespace: str, replica: Replica, timeout: float
) -> float:
    """Seconds until `replica` holds the Lease, from now."""
    started = time.monotonic()
    wait_for(
        lambda: replica.holds(lease_holder(kube_api, namespace)),
        timeout,
        f"{replica.name} to take the Lease over",
        interval=0.1,
    )
    return time.monotonic() - started


def test_only_the_holder_acts_and_the_standby_takes_over_when_it_is_killed(
    start_replicas: Start, kube_api: client.ApiClient, bed: Bed, namespace: str
) -> None:
    leader, standby = start_replicas()
    first = lease(kube_api, namespace)
    assert first.spec.lease_duration_seconds == LEASE_SECONDS
    # The holder renews: the record moves on while it leads.
    wait_for(
        lambda: (
            lease(kube_api, namespace).metadata.resource_version != first.metadata.resource_version
        ),
        5 * RETRY_SECONDS,
        "a renewal",
    )
    assert f"Standing by: Lease {LEASE} is held by {leader.name}_" in standby.log()

    studies = Studies(kube_api, namespace)
    studies.create(study_body("shared", budget={"trials": 8}))
    studies.wait_phase("shared", "Succeeded")
    events = studies.events("shared")
    assert len([e for e in events if e.startswith("CreatedJob")]) == 1, events
    assert len([e for e in events if e.startswith("StudyCreated")]) == 1, events
    assert "Created Job" in leader.log()
    assert "Created Job" not in standby.log(), standby.log()[-3000:]
    # The API server's word: the leader listed and watched studies; the standby listed and
    # watched nothing at all (its controller never started).
    assert {("list", "tuningstudies"), ("watch", "tuningstudies")} <= listed_and_watched(
        bed, leader.user
    )
    assert listed_and_watched(bed, standby.user) == set()

    # SIGKILL: no release. The standby waits out the lease duration, by its own clock, from
    # the last renewal it saw (at most a retry period before the kill).
    leader.send(signal.SIGKILL)
    took = took_over(kube_api, namespace, standby, 4 * LEASE_SECONDS)
    print(
        f"\ntakeover after SIGKILL of the leader: {took:.1f} s (lease duration {LEASE_SECONDS} s)"
    )
    # Not before the Lease ran out (a loaded machine may have renewed late: half of it).
    assert took > LEASE_SECONDS / 2, "the standby did not wait for the Lease to run out"
    assert lease(kube_api, namespace).spec.lease_transitions == first.spec.lease_transitions + 1
    studies.create(study_body("after-failover", budget={"trials": 5}))
    studies.wait_phase("after-failover", "Succeeded", timeout=300)
    assert "Created Job" in standby.log()
    assert ("watch", "tuningstudies") in listed_and_watched(bed, standby.user)


def test_a_clean_stop_releases_the_lease_and_the_standby_takes_over_at_once(
    start_replicas: Start, kube_api: client.ApiClient, namespace: str
) -> None:
    leader, standby = start_replicas()
    leader.send(signal.SIGTERM)
    took = took_over(kube_api, namespace, standby, 4 * LEASE_SECONDS)
    print(
        f"\ntakeover after SIGTERM of the leader: {took:.1f} s (lease duration {LEASE_SECONDS} s)"
    )
    # Without the release it would take the lease duration, less at most a retry period.
    assert took < LEASE_SECONDS - RETRY_SECONDS - 1, "the Lease was not released"
    wait_for(lambda: leader.exit_code() is not None, 30, "the old leader to exit")
    assert leader.exit_code() == 0, leader.log()[-3000:]
    assert f"Released Lease {LEASE}" in leader.log()
    wait_for(lambda: standby.health() not in (None, {"leader": False}), 60, "kopf's health")


def test_a_leader_frozen_past_its_renew_deadline_exits_when_it_wakes(
    start_replicas: Start, kube_api: client.ApiClient, namespace: str
) -> None:
    """SIGSTOP stands in for a long pause (a stalled node, a stuck process): the standby
    takes over; the old leader, woken, must not act: it exits with 1 (its Deployment would
    restart it as a standby)."""
    timings = ["--leader-elect-lease-duration=6s", "--leader-elect-renew-deadline=4s"]
    leader, standby = start_replicas(*timings, "--leader-elect-retry-period=1s")
    leader.send(signal.SIGSTOP)
    took = took_over(kube_api, namespace, standby, 60)
    print(f"\ntakeover from a frozen leader: {took:.1f} s (lease duration 6 s)")
    holder = lease_holder(kube_api, namespace)
    leader.send(signal.SIGCONT)
    wait_for(lambda: leader.exit_code() is not None, 20, "the woken leader to exit")
    assert leader.exit_code() == 1, leader.log()[-3000:]
    assert "Leader election lost" in leader.log()
    assert "Released Lease" not in leader.log()
    assert lease_holder(kube_api, namespace) == holder
    assert standby.process.alive()
