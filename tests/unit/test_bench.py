"""The pure parts of `make bench`'s pool and worker sections: what they run in which order,
how they turn raw timings into the numbers they print, and the objective's trial log."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

import bench_objective
from bench_pool import JOBS, POOL, ROWS, Pair, Row, orders, parse_rows, run_name, table
from bench_worker import (
    OPTIMIZE,
    WORKER,
    ProcessLog,
    Run,
    Sample,
    Summary,
    balance,
    balance_table,
    loop_cpu_per_trial,
    order,
    worker_table,
)


def test_pool_rows_cover_1_10_and_60_second_trials_with_fewer_long_ones() -> None:
    assert [row.seconds for row in ROWS] == [1, 10, 60]
    assert ROWS[0].trials > ROWS[1].trials > ROWS[2].trials
    # The whole section (both ways, all pairs) stays well under 15 minutes of ideal time.
    assert sum(2 * row.pairs * row.ideal for row in ROWS) < 600


def test_pool_rows_parse_and_refuse_nonsense() -> None:
    assert parse_rows("1:40:2, 0.5:8:1") == (Row(1, 40, 2), Row(0.5, 8, 1))
    for bad in ("1:40", "0:4:1", "1:0:1", "1:4:0", "a:4:1"):
        with pytest.raises(ValueError):
            parse_rows(bad)


def test_rounds_and_ideal_time() -> None:
    assert (Row(1, 40, 1).rounds, Row(1, 40, 1).ideal) == (10, 10)
    assert (Row(60, 6, 1).rounds, Row(60, 6, 1).ideal) == (2, 120)


def test_consecutive_pairs_alternate_which_way_goes_first_across_rows() -> None:
    plan = orders([Row(1, 4, 2), Row(10, 4, 1), Row(60, 4, 2)])
    assert [(row.seconds, pair) for row, pair, _ in plan] == [
        (1, 0),
        (1, 1),
        (10, 0),
        (60, 0),
        (60, 1),
    ]
    assert [first for _, _, first in plan] == [
        (POOL, JOBS),
        (JOBS, POOL),
        (POOL, JOBS),
        (JOBS, POOL),
        (POOL, JOBS),
    ]


def test_run_names_are_dns_labels() -> None:
    assert run_name(POOL, Row(0.5, 4, 1), 3) == "pool-0p5s-3"
    assert run_name(JOBS, Row(60, 4, 1), 0) == "jobs-60s-0"


def test_pool_table_gives_each_pairs_ratio_and_the_overheads() -> None:
    row = Row(10, 16, 2)  # 4 rounds, ideal 40 s
    lines = table([(row, [Pair(pool=45.0, jobs=60.0), Pair(pool=47.0, jobs=64.0)])])
    assert lines[0].startswith("| trial |")
    assert lines[1].count("---:") == 8
    assert lines[2] == (
        "| 10 s | 16 (4) | 45.0 / 47.0 s | 60.0 / 64.0 s | 40 s | 1.33x / 1.36x | 6.0 s | 5.5 s |"
    )


def _log(starts: list[float], cpu: tuple[float, float] = (1.0, 2.0)) -> ProcessLog:
    return ProcessLog(starts, *cpu)


def test_loop_cpu_is_per_trial_between_each_process_first_and_last_trial() -> None:
    logs = [_log([0, 1, 2, 3, 4], (1.0, 1.4)), _log([0, 1, 2], (2.0, 2.2))]
    assert loop_cpu_per_trial(logs) == pytest.approx(0.6 / 6)
    with pytest.raises(ValueError):
        loop_cpu_per_trial([_log([0])])


def test_balance_separates_the_end_tail_from_the_time_per_trial_when_all_are_busy() -> None:
    # Two processes, one trial a second each from t=0 to t=5; a third starts at 1 and, its
    # share done early, stops at 3: the tail is 2 s, and from 1 to 3 three trials a second.
    logs = [_log([0, 1, 2, 3, 4, 5]), _log([0, 1, 2, 3, 4, 5]), _log([1, 2, 3])]
    result = balance(logs)
    assert (result.fewest, result.most) == (3, 6)
    assert result.tail == 2
    assert result.busy_per_trial == pytest.approx(2 / 6)
    one = balance([_log([0, 1, 2])])
    assert (one.tail, one.busy_per_trial) == (0, 1)


def test_sides_alternate_which_runs_first() -> None:
    assert [order(r) for r in range(3)] == [
        (OPTIMIZE, WORKER),
        (WORKER, OPTIMIZE),
        (OPTIMIZE, WORKER),
    ]


def test_worker_tables() -> None:
    def sample(seconds: float, cpu: float, starts: list[list[float]]) -> Sample:
        return Sample(Run(seconds, cpu), span=seconds - 1, logs=[_log(s) for s in starts])

    base = Summary.of([sample(5.0, 2.0, [[0, 1, 2], [0, 1, 2, 3]])], trials=4)
    ours = Summary.of([sample(5.5, 2.2, [[0, 1, 2, 3], [0, 1, 2, 3]])], trials=4)
    rows = [(2, base, ours)]
    assert worker_table(rows)[2] == (
        "| 2 | 0.8 | 0.7 | 1.10x | 500.0 / 550.0 ms, 1.10x | 400.0 / 333.3 ms, 0.83x "
        "| 1.12x | 1.00 / 1.00 s |"
    )
    assert balance_table(rows)[2] == "| 2 | 3-4 / 4 | 1.00 / 0.00 s | 1.12x | 1.00x |"


def test_recorded_objective_logs_its_trials_and_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = bench_objective._Recorder()
    monkeypatch.setattr(bench_objective, "_recorder", recorder)
    monkeypatch.setenv(bench_objective.TRIAL_LOG_ENV, str(tmp_path))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study().optimize(bench_objective.recorded, n_trials=3)
    recorder.write()
    (written,) = tmp_path.glob("*.json")
    log = ProcessLog.read(written)
    assert len(log.starts) == 3 and log.starts == sorted(log.starts)
    assert log.cpu_last >= log.cpu_first > 0
    assert json.loads(written.read_text()).keys() == {"starts", "cpu_first", "cpu_last"}
