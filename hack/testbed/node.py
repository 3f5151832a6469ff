"""The Node object the executor plays: registration and kubelet-style heartbeats.

The node lifecycle controller marks a node NotReady (and taints it) when its Lease in
kube-node-lease is not renewed; the scheduler then stops placing pods. Renewing the Lease
and the Ready condition every few seconds keeps the node schedulable.
"""

from __future__ import annotations

import datetime
import logging
import threading

from testbed.executorconfig import ExecutorConfig
from testbed.kubeapi import JSON, STRATEGIC_MERGE_PATCH, ApiError, KubeApi, q
from testbed.podstatus import POD_IP, now

__all__ = ["NodeAgent"]

log = logging.getLogger("testbed.executor")
HEARTBEAT_S = 10.0
LEASE_DURATION_S = 40


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeAgent:
    def __init__(self, api: KubeApi, config: ExecutorConfig) -> None:
        self._api = api
        self._config = config
        self.name = config.node_name
        self._uid = ""
        self._transition = now()

    def _conditions(self) -> list[JSON]:
        beat = now()
        healthy = [
            (
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "testbed executor has sufficient memory",
            ),
            (
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "testbed executor has no disk pressure",
            ),
            (
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "testbed executor has sufficient PID available",
            ),
            ("Ready", "True", "KubeletReady", "testbed executor is posting ready status"),
        ]
        return [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": beat,
                "lastTransitionTime": self._transition,
            }
            for kind, status, reason, message in healthy
        ]

    def _status(self) -> JSON:
        capacity = dict(self._config.capacity)
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": self._conditions(),
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "testbed executor (local processes)",
                "containerRuntimeVersion": "testbed://0",
                "kubeletVersion": self._config.kube_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        body: JSON = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "testbed",
                },
            },
            "spec": {},
            "status": self._status(),
        }
        try:
            created = self._api.post("/api/v1/nodes", body)
            self._uid = created["metadata"]["uid"]
        except ApiError as err:
            if err.status != 409:
                raise
            self._uid = self._api.get(f"/api/v1/nodes/{q(self.name)}")["metadata"]["uid"]
        # Status on create is not guaranteed to stick; set it explicitly as kubelet does.
        self._patch_status()
        self._renew_lease()
        log.info("Registered node %s with capacity %s", self.name, self._config.capacity)

    def _patch_status(self) -> None:
        self._api.patch(
            f"/api/v1/nodes/{q(self.name)}/status",
            {"status": self._status()},
            STRATEGIC_MERGE_PATCH,
        )

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{q(self.name)}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": _micro_now(),
        }
        try:
            self._api.patch(path, {"spec": spec})
        except ApiError as err:
            if err.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._uid}
            self._api.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "ownerReferences": [owner]},
                    "spec": spec,
                },
            )

    def heartbeat_forever(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self._renew_lease()
                self._patch_status()
            except Exception as err:  # the API server may be restarting; try next beat
                log.warning("node heartbeat failed: %s", err)
