"""Per-process sampler seeds: distinct across workers, reproducible for one worker."""

from __future__ import annotations

import hashlib

__all__ = ["SEED_MODULUS", "process_seed"]

# numpy's RandomState takes seeds below 2**32.
SEED_MODULUS = 2**32


def process_seed(
    base: int | None,
    *,
    worker_index: int | None,
    process_index: int,
    processes_per_pod: int,
    pod_name: str,
) -> int | None:
    """The seed of one trial process.

    No base seed: None, every process draws its own entropy. With an indexed Job the offset is
    the global process number (worker i, process p -> i * processes + p), so worker 0 process 0
    gets exactly `base` and a one-worker study is reproducible. Without an index the pod name
    (unique per pod) is hashed: stable for that pod, different from its neighbours.
    """
    if base is None:
        return None
    if worker_index is not None:
        offset = worker_index * processes_per_pod + process_index
    else:
        digest = hashlib.sha256(f"{pod_name}/{process_index}".encode()).digest()
        offset = int.from_bytes(digest[:8], "big")
    return (base + offset) % SEED_MODULUS
