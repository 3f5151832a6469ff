"""The pod executor's settings, written by the bed and read by the executor process."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CAPACITY", "ExecutorConfig"]

# Roomy enough for dozens of worker pods and a few GPU requests, small enough that a test
# can ask for more than the node has and watch the scheduler say so.
DEFAULT_CAPACITY: dict[str, str] = {
    "cpu": "32",
    "memory": "128Gi",
    "pods": "110",
    "ephemeral-storage": "100Gi",
    "nvidia.com/gpu": "4",
}


@dataclass
class ExecutorConfig:
    kubeconfig: str
    # Pod logs go to <log_dir>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log,
    # the same layout as kubelet's /var/log/pods.
    log_dir: str
    # One file per live container process, so the bed can sweep them if the executor dies.
    pid_dir: str
    workdir: str
    path_prefix: list[str]
    pythonpath: list[str]
    kube_version: str
    node_name: str = "testbed-node"
    capacity: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    # Commands standing in for an image's entrypoint when a container sets no command.
    image_commands: dict[str, list[str]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    # kubelet starts at 10s and doubles to 5 minutes; tests want restarts within seconds.
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 10.0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ExecutorConfig:
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(**data)
