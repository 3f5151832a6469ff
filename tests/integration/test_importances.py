"""Parameter importances are computed off the operator's heap, against real PostgreSQL: the
operator's memory does not grow from a 1k to a 20k trial study, and a study too large for
the child's memory limit costs the child, not the operator."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import optuna
import pytest
from sqlalchemy import create_engine, text

from optuna_operator.storage.importances import ImportanceError, param_importances
from testbed import Bed


def _study_with_trials(url: str, name: str, trials: int) -> None:
    """A study whose value depends on x only; all but the first trial written in bulk."""
    study = optuna.create_study(study_name=name, storage=url)
    first = study.ask()
    x, y = first.suggest_float("x", -10, 10), first.suggest_float("y", -10, 10)
    study.tell(first, x**2 + 0 * y)
    engine = create_engine(url)
    with engine.begin() as conn:
        ids = {"sid": study._study_id, "first": first._trial_id, "n": trials - 1}
        conn.execute(
            text(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                "SELECT g, :sid, 'COMPLETE', now(), now() FROM generate_series(1, :n) g"
            ),
            ids,
        )
        conn.execute(
            text(
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                "SELECT t.trial_id, p.param_name, random() * 20 - 10, p.distribution_json "
                "FROM trials t CROSS JOIN (SELECT param_name, distribution_json FROM "
                "trial_params WHERE trial_id = :first) p WHERE t.study_id = :sid "
                "AND t.trial_id <> :first"
            ),
            ids,
        )
        conn.execute(
            text(
                "INSERT INTO trial_values (trial_id, objective, value, value_type) "
                "SELECT p.trial_id, 0, p.param_value ^ 2, 'FINITE' FROM trial_params p "
                "JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = :sid "
                "AND p.param_name = 'x' AND t.trial_id <> :first"
            ),
            ids,
        )
        count = conn.execute(
            text("SELECT count(*) FROM trials WHERE study_id = :sid"), ids
        ).scalar()
    engine.dispose()
    assert count == trials


@pytest.fixture(scope="module")
def importance_db(bed: Bed) -> str:
    return bed.create_database(f"importances_{secrets.token_hex(4)}")


# What the operator runs: import optuna (as the operator does), compute the importances,
# report its own peak memory.
CALLER = """
import json, resource, sys
import optuna
from optuna_operator.storage.importances import param_importances
result = param_importances(sys.stdin.read(), sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mib": peak, "importances": result}))
"""


def _as_the_operator(url: str, name: str) -> tuple[float, dict[str, float]]:
    done = subprocess.run(
        [sys.executable, "-c", CALLER, name],
        input=url,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    out = json.loads(done.stdout)
    return float(out["peak_mib"]), out["importances"]


def test_the_operators_memory_stays_flat_from_1k_to_20k_trials(importance_db: str) -> None:
    _study_with_trials(importance_db, "small", 1_000)
    _study_with_trials(importance_db, "large", 20_000)
    small_peak, small = _as_the_operator(importance_db, "small")
    large_peak, large = _as_the_operator(importance_db, "large")
    for result in (small, large):
        assert set(result) == {"x", "y"}
        assert result["x"] > 0.9 > result["y"]  # the value depends on x alone
    # The 20k-trial study was read and fitted by the child: the caller did not grow.
    print(f"caller peak RSS: 1k trials {small_peak:.1f} MiB, 20k trials {large_peak:.1f} MiB")
    assert large_peak - small_peak < 10, (small_peak, large_peak)


def test_a_study_too_large_for_the_limit_costs_the_child_only(importance_db: str) -> None:
    _study_with_trials(importance_db, "capped", 1_000)
    with pytest.raises(ImportanceError):
        param_importances(importance_db, "capped", memory_limit=64 * 1024**2)
    # The operator's process goes on and the next computation works.
    assert set(param_importances(importance_db, "capped")) == {"x", "y"}
