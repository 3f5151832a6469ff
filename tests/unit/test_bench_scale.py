"""The pure parts of `make bench`'s scale section: the memory and target summaries it closes
with, and the stand-in that gives each dashboard on the bed a port of its own."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

from bench_scale import DASHBOARD_STAND_IN, RSS_TARGET_MIB, memory_summary, targets_summary


def test_the_summary_gives_the_rss_at_each_size_and_the_imports_share() -> None:
    rows = [(90, {"rss_mib": 120.4}), (990, {"rss_mib": 146.4})]
    summary = memory_summary(rows, 82.0)
    assert summary == (
        "100 studies 120 MiB, 1,000 studies 146 MiB; imports 82 MiB = 56% of it; "
        f"target < {RSS_TARGET_MIB} MiB at 1,000: met"
    )


def test_the_target_is_met_only_at_1000_studies_and_below_150_mib() -> None:
    assert memory_summary([(990, {"rss_mib": 151.0})], 82.0).endswith("not met")
    assert memory_summary([(90, {"rss_mib": 120.0})], 82.0).endswith("not met")


def _at_1000(**measured: float) -> list[tuple[int, dict[str, float]]]:
    quiet = {"lag_p50": 0.5, "lag_p95": 1.5, "api_per_idle": 0.001, "db_per_idle": 0.0001}
    return [(990, {**quiet, **measured})]


def test_the_targets_are_judged_at_1000_studies_each_on_its_own() -> None:
    assert "NOT met" not in targets_summary(_at_1000())
    summary = targets_summary(_at_1000(lag_p95=2.5, db_per_idle=0.03))
    assert "lag p95 2.5s < 2s: NOT met" in summary
    assert "DB tx/s per idle study 0.03 < 0.02: NOT met" in summary
    assert "lag p50 0.5s < 1s: met" in summary


def test_nothing_measured_is_never_met() -> None:
    assert "lag p50 nans < 1s: NOT met" in targets_summary(_at_1000(lag_p50=float("nan")))
    assert targets_summary([(90, {})]).startswith("not measured")


def test_the_dashboard_stand_in_keeps_the_arguments_and_takes_a_port(tmp_path: Path) -> None:
    # Where another dashboard holds 8080 it takes a free port; otherwise 8080.
    script = tmp_path / "optuna-dashboard"
    script.write_text(DASHBOARD_STAND_IN.format(python=sys.executable, dashboard="echo"))
    with socket.socket() as holder:
        # Held as a server holds it: SO_REUSEADDR, so connections of an earlier test waiting
        # in TIME_WAIT on 8080 do not stop the bind (the stand-in binds so too), and
        # listening, which is what keeps another SO_REUSEADDR socket off the port.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # held already: the stand-in must move either way
            holder.bind(("0.0.0.0", 8080))
            holder.listen()
        out = subprocess.run(
            ["sh", str(script), "--host", "0.0.0.0", "--port", "8080", "postgresql://x"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    assert out[:4] == ["--host", "0.0.0.0", "--port", out[3]]
    assert out[4:] == ["postgresql://x"]
    assert out[3] != "8080" and int(out[3]) > 0
