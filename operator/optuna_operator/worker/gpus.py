"""Which GPUs each trial process of a pod may use."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["assign_gpus", "visible_gpus"]

_DEVICE = re.compile(r"^nvidia(\d+)$")


def visible_gpus(env: Mapping[str, str] = os.environ, dev: Path = Path("/dev")) -> list[str]:
    """GPU ids this container can address with CUDA_VISIBLE_DEVICES.

    An explicit CUDA_VISIBLE_DEVICES wins. Otherwise the NVIDIA device plugin names the pod's
    GPUs in NVIDIA_VISIBLE_DEVICES and the container runtime renumbers them 0..n-1, so only
    their count matters; with "all" we count the /dev/nvidiaN device nodes.
    """
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return [d.strip() for d in cuda.split(",") if d.strip() and d.strip() != "-1"]
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if nvidia in ("", "none", "void"):
        return []
    if nvidia == "all":
        try:
            count = sum(1 for p in dev.iterdir() if _DEVICE.match(p.name))
        except OSError:
            count = 0
        return [str(i) for i in range(count)]
    return [str(i) for i in range(len([d for d in nvidia.split(",") if d.strip()]))]


def assign_gpus(gpus: list[str], process_index: int, processes: int) -> str | None:
    """CUDA_VISIBLE_DEVICES for one process; None leaves the environment alone.

    One process keeps every GPU. Several processes split them round-robin (4 GPUs, 2
    processes: "0,2" and "1,3"); with fewer GPUs than processes, processes share one.
    """
    if not gpus or processes <= 1:
        return None
    if len(gpus) < processes:
        return gpus[process_index % len(gpus)]
    return ",".join(gpus[process_index::processes])
