"""Where the operator's memory goes, for `BENCH_SCALE_MEMTRACE=1` (bench_scale.py).

On PYTHONPATH, this runs at interpreter start in every process; it acts only in the
operator (`optuna_operator.cli run`) and only when OPERATOR_MEMTRACE names a file. It starts
tracemalloc, and on SIGUSR1 writes the Python heap by package (the first frame outside the
standard library that allocated) next to VmRSS, so the two can be compared: what tracemalloc
does not see is the interpreter, C extensions and the allocator's own overhead.
"""

from __future__ import annotations

import os
import signal
import sysconfig
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

FRAMES = 12


def _package(filename: str, stdlib: str) -> str | None:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "optuna_operator/" in filename:
        return "optuna_operator/" + filename.split("optuna_operator/", 1)[1]
    if filename.startswith(stdlib) or filename.startswith("<"):
        return None
    return filename


def _dump(report: Path) -> None:
    stdlib = sysconfig.get_paths()["stdlib"]
    by_package: Counter[str] = Counter()
    snapshot = tracemalloc.take_snapshot()
    for stat in snapshot.statistics("traceback"):
        owner = "stdlib"
        for frame in reversed(stat.traceback):  # innermost first
            package = _package(frame.filename, stdlib)
            if package is not None:
                owner = package
                break
        by_package[owner] += stat.size
    rss = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if "VmRSS" in line
    )
    lines = [rss, f"traced: {sum(by_package.values()) / 2**20:.1f} MiB"]
    lines += [f"{size / 2**20:8.1f} MiB  {owner}" for owner, size in by_package.most_common(25)]
    report.write_text("\n".join(lines) + "\n")


def _install() -> None:
    report = os.environ.get("OPERATOR_MEMTRACE")
    if not report:
        return
    cmdline = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    if b"optuna_operator.cli" not in cmdline or b"run" not in cmdline:
        return
    tracemalloc.start(FRAMES)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _dump(Path(report))

    signal.signal(signal.SIGUSR1, on_signal)


_install()
