"""Parameter importances, computed off the operator's heap.

fANOVA over a whole study holds every trial and a forest in memory: in the operator process a
large study could push it out of memory, and every study would pay for the one that did. So
the operator runs `python -m optuna_operator.storage.importances` as a child process with an address
space limit, a time limit and a window of the most recent complete trials; the child reads the
storage URL from its standard input (never from its arguments, which `ps` shows) and prints
the importances as JSON. The operator's memory does not grow with the study.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from typing import Any

__all__ = [
    "MAX_TRIALS",
    "MEMORY_LIMIT_BYTES",
    "TIMEOUT_SECONDS",
    "ImportanceError",
    "param_importances",
]

log = logging.getLogger(__name__)

# The most recent complete trials the importances are computed over: fANOVA's cost grows
# with the trials, and the last ones describe the region the sampler settled in.
MAX_TRIALS = 2_000
MEMORY_LIMIT_BYTES = 2 * 1024**3
TIMEOUT_SECONDS = 120.0
# A statement that runs longer than this in the child is cancelled by the server.
STATEMENT_TIMEOUT_MS = 60_000


class ImportanceError(Exception):
    """The child could not compute importances (memory, time, storage); a short reason."""


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def param_importances(
    url: str,
    study_name: str,
    max_trials: int = MAX_TRIALS,
    memory_limit: int = MEMORY_LIMIT_BYTES,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, float]:
    """The study's parameter importances from a bounded child process."""
    env = {
        **os.environ,
        # One thread each: BLAS thread pools reserve address space the limit would count.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "optuna_operator.storage.importances",
                study_name,
                str(max_trials),
            ],
            input=url,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            preexec_fn=lambda: _limit_memory(memory_limit),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ImportanceError(f"took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        # The child prints only its exception's type: its message could quote the URL.
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImportanceError(f"exit code {done.returncode}: {last[:200]}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _compute(url: str, study_name: str, max_trials: int) -> dict[str, float]:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    from optuna_operator.storage.pools import engine_kwargs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = RDBStorage(
        url,
        engine_kwargs=engine_kwargs(
            url, "optuna-operator-importances", None, statement_timeout_ms=STATEMENT_TIMEOUT_MS
        ),
        skip_compatibility_check=True,
        skip_table_creation=True,
    )
    try:
        study_id = storage.get_study_id_from_name(study_name)
        directions = storage.get_study_directions(study_id)
        trials = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
    finally:
        storage.engine.dispose()
    window = optuna.create_study(directions=directions)
    window.add_trials(trials[-max_trials:])
    del trials
    importances = optuna.importance.get_param_importances(window)
    return {name: round(float(value), 4) for name, value in importances.items()}


def main(argv: list[str]) -> int:
    """The child: URL on stdin, study name and window in argv, JSON on stdout."""
    study_name, max_trials = argv[0], int(argv[1])
    try:
        result = _compute(sys.stdin.read().strip(), study_name, max_trials)
    except MemoryError:
        print("MemoryError: the study is too large for the importances' memory limit")
        return 3
    except Exception as exc:
        print(type(exc).__name__, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    return 0


def _entry() -> Any:
    return main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(_entry())
