"""Pure builders for the pod status the executor reports, shaped like kubelet's."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

__all__ = ["POD_IP", "Conditions", "ContainerView", "now", "pod_status"]

JSON = dict[str, Any]
# Every pod "runs" on this machine's loopback; there is no pod network.
POD_IP = "127.0.0.1"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerView:
    """What the API should say about one container."""

    name: str
    image: str
    restart_count: int = 0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str | None = None
    started_at: str | None = None
    terminated: JSON | None = None
    last_terminated: JSON | None = None
    ready: bool = False
    container_id: str | None = None

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.terminated is None

    def state(self) -> JSON:
        if self.terminated is not None:
            return {"terminated": self.terminated}
        if self.started_at is not None:
            return {"running": {"startedAt": self.started_at}}
        waiting: JSON = {"reason": self.waiting_reason}
        if self.waiting_message:
            waiting["message"] = self.waiting_message
        return {"waiting": waiting}

    def to_json(self) -> JSON:
        status: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": self.state(),
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


@dataclass
class Conditions:
    """Pod conditions whose lastTransitionTime changes only when their status flips."""

    _items: dict[str, JSON] = field(default_factory=dict)

    def set(
        self, kind: str, status: bool, reason: str | None = None, message: str | None = None
    ) -> None:
        value = "True" if status else "False"
        old = self._items.get(kind)
        item: JSON = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": old["lastTransitionTime"]
            if old and old["status"] == value
            else now(),
        }
        # Explicit nulls: status goes out as a strategic merge patch, which merges
        # conditions by type and would otherwise keep a stale reason or message.
        item["reason"] = reason
        item["message"] = message
        self._items[kind] = item

    def to_json(self) -> list[JSON]:
        return list(self._items.values())


def pod_status(
    phase: str,
    conditions: Conditions,
    start_time: str,
    init: list[ContainerView],
    main: list[ContainerView],
    reason: str | None = None,
    message: str | None = None,
) -> JSON:
    status: JSON = {
        "phase": phase,
        "conditions": conditions.to_json(),
        "hostIP": POD_IP,
        "hostIPs": [{"ip": POD_IP}],
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "startTime": start_time,
        "containerStatuses": [c.to_json() for c in main],
    }
    if init:
        status["initContainerStatuses"] = [c.to_json() for c in init]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status
