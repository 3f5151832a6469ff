"""Per-process seeds and GPU assignment (no database)."""

from __future__ import annotations

from pathlib import Path

from optuna_operator.worker.gpus import assign_gpus, visible_gpus
from optuna_operator.worker.seeding import SEED_MODULUS, process_seed


def test_no_base_seed_stays_random() -> None:
    assert (
        process_seed(None, worker_index=0, process_index=0, processes_per_pod=1, pod_name="a")
        is None
    )


def test_indexed_workers_get_consecutive_distinct_seeds() -> None:
    seeds = {
        process_seed(10, worker_index=w, process_index=p, processes_per_pod=2, pod_name="x")
        for w in range(4)
        for p in range(2)
    }
    assert seeds == set(range(10, 18))


def test_single_worker_is_reproducible_with_the_base_seed() -> None:
    seed = process_seed(42, worker_index=0, process_index=0, processes_per_pod=1, pod_name="p")
    assert seed == 42


def test_unindexed_pods_hash_their_name_stably() -> None:
    def seed(pod: str, process: int = 0) -> int | None:
        return process_seed(
            5, worker_index=None, process_index=process, processes_per_pod=2, pod_name=pod
        )

    assert seed("study-workers-abcde") == seed("study-workers-abcde")
    assert (
        len(
            {
                seed("study-workers-abcde"),
                seed("study-workers-fghij"),
                seed("study-workers-abcde", 1),
            }
        )
        == 3
    )
    assert all(0 <= (s or 0) < SEED_MODULUS for s in (seed("a"), seed("b")))


def test_seed_wraps_below_numpy_limit() -> None:
    seed = process_seed(
        SEED_MODULUS - 1, worker_index=3, process_index=0, processes_per_pod=1, pod_name=""
    )
    assert seed == 2


def test_visible_gpus_from_the_environment(tmp_path: Path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, tmp_path) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == []
    assert visible_gpus({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, tmp_path) == ["0", "1"]
    assert visible_gpus({"NVIDIA_VISIBLE_DEVICES": "void"}, tmp_path) == []
    assert visible_gpus({}, tmp_path) == []
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert visible_gpus({"NVIDIA_VISIBLE_DEVICES": "all"}, tmp_path) == ["0", "1"]


def test_gpus_are_split_round_robin() -> None:
    gpus = ["0", "1", "2", "3"]
    assert assign_gpus(gpus, 0, 1) is None  # one process keeps them all
    assert [assign_gpus(gpus, i, 2) for i in range(2)] == ["0,2", "1,3"]
    assert [assign_gpus(gpus, i, 4) for i in range(4)] == ["0", "1", "2", "3"]
    assert [assign_gpus(["0"], i, 3) for i in range(3)] == ["0", "0", "0"]
    assert assign_gpus([], 1, 2) is None
