"""Cold start against a warm worker: what a fresh process per trial costs on a GPU.

A Job-per-trial design starts a process for every trial: Python, Optuna, PyTorch and a CUDA
context, then one trial. The operator's worker pays that once and runs trial after trial.
Both modes here run the same grid of configurations of `examples/pytorch_tuning.py` (a
GridSampler over fixed values, no pruner), so they do the same GPU work; rounds alternate
the order to cancel drift. Run by worker_image/gpu_check.sh with OPTUNA_STORAGE_URL set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import optuna

# Fixed values per parameter; the grid's size is the number of trials per mode and round.
_LAYERS = [1, 2, 3, 4]
_WIDTHS = [32, 128, 256]


def _grid(trials: int) -> dict[str, Sequence[object]]:
    """A grid of exactly `trials` points (at most 12) over the example's parameters."""
    points = [(layers, width) for width in _WIDTHS for layers in _LAYERS][:trials]
    return {
        "layers": sorted({p[0] for p in points}),
        "width": sorted({p[1] for p in points}),
        "lr": [1e-3],
        "optimizer": ["adam"],
        "dropout": [0.1],
    }


def _grid_size(grid: dict[str, Sequence[object]]) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size


# One trial in a new process, as a Job per trial would run it.
_FRESH = """
import json, os, sys, optuna
from examples.pytorch_tuning import objective
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(
    study_name=sys.argv[1], storage=os.environ["OPTUNA_STORAGE_URL"],
    sampler=optuna.samplers.GridSampler(json.loads(sys.argv[2]), seed=1),
    pruner=optuna.pruners.NopPruner())
study.optimize(objective, n_trials=1)
"""


def fresh_processes(study_name: str, grid: dict[str, Sequence[object]], trials: int) -> float:
    """Seconds for `trials` trials, each in a new Python process (imports, CUDA, one trial)."""
    start = time.perf_counter()
    for _ in range(trials):
        subprocess.run([sys.executable, "-c", _FRESH, study_name, json.dumps(grid)], check=True)
    return time.perf_counter() - start


def warm_worker(study_name: str, grid: dict[str, Sequence[object]], trials: int) -> float:
    """Seconds for `trials` trials in one `optuna-operator worker` process, start-up included."""
    config = {
        "studyName": study_name,
        "directions": ["minimize"],
        "objective": {"function": "examples.pytorch_tuning:objective"},
        "budget": {"trials": trials},
        "sampler": {"type": "Grid", "seed": 1, "grid": {"searchSpace": grid}},
        "pruner": {"type": "None"},
        "heartbeatIntervalSeconds": 10,
    }
    env = dict(os.environ, OPTUNA_OPERATOR_WORKER_CONFIG=json.dumps(config), POD_NAME="warm-0")
    env["OPTUNA_OPERATOR_WORKER_INDEX"] = "0"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "optuna_operator.worker"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _trial_seconds(study_name: str) -> tuple[int, float]:
    """Complete trials and their median in-process duration (the objective's own time)."""
    study = optuna.load_study(study_name=study_name, storage=os.environ["OPTUNA_STORAGE_URL"])
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_complete and t.datetime_start
    ]
    return len(done), statistics.median(durations)


def main() -> int:
    """Alternate fresh and warm rounds; print per-trial seconds and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8, help="trials per mode and round (<= 12)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    grid = _grid(args.trials)
    trials = _grid_size(grid)
    storage = os.environ["OPTUNA_STORAGE_URL"]
    per_trial: dict[str, list[float]] = {"fresh": [], "warm": []}
    inside: dict[str, list[float]] = {"fresh": [], "warm": []}
    for round_ in range(args.rounds):
        order = ["fresh", "warm"] if round_ % 2 == 0 else ["warm", "fresh"]
        for mode in order:
            name = f"coldstart-{mode}-{round_}"
            optuna.create_study(study_name=name, storage=storage, direction="minimize")
            run = fresh_processes if mode == "fresh" else warm_worker
            seconds = run(name, grid, trials)
            complete, median_inside = _trial_seconds(name)
            if complete != trials:
                print(f"coldstart: {mode} round {round_} completed {complete} of {trials} trials")
                return 1
            per_trial[mode].append(seconds / trials)
            inside[mode].append(median_inside)
            print(
                f"round {round_} {mode:5}: {trials} trials in {seconds:6.1f} s, "
                f"{seconds / trials:5.2f} s/trial, objective median {median_inside:5.2f} s"
            )
    fresh = statistics.median(per_trial["fresh"])
    warm = statistics.median(per_trial["warm"])
    print()
    print("| mode | s/trial (median of rounds) | objective's own time (median) |")
    print("| --- | --- | --- |")
    print(f"| fresh process per trial | {fresh:.2f} | {statistics.median(inside['fresh']):.2f} |")
    print(f"| warm worker | {warm:.2f} | {statistics.median(inside['warm']):.2f} |")
    print(f"cold start per trial: {fresh - warm:.2f} s; warm worker is {fresh / warm:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
