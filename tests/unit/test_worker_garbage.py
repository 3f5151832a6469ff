"""The worker's garbage collection policy (worker/garbage.py), in a fresh interpreter: it must
not cost an objective what plain Python gives it at exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Start-up, a trial, exit, as the worker runs them. The trial leaves behind what objectives
# do: a file it never closed in its module's globals (which live in a cycle with the
# module's functions), an object with a finalizer in a reference cycle (only a collection
# finalizes it), and an atexit handler (experiment trackers register one). A gc.freeze()
# before the first trial loses the file; one at exit, without a collection, both.
PROCESS = """
import atexit, gc, sys
from pathlib import Path
from optuna_operator.worker.garbage import pause_for_start_up, resume_after_start_up

pause_for_start_up()
assert not gc.isenabled()
import optuna  # start-up: what lives as long as the process
resume_after_start_up()
assert gc.isenabled()

out = Path(sys.argv[1])
log = open(out / "never-closed.txt", "w")
log.write("trial 0 done\\n")

class Run:
    def __del__(self):
        (out / "finalized.txt").write_text("cleaned up\\n")

run = Run()
run.me = run
del run
atexit.register(lambda: (out / "atexit.txt").write_text("finished\\n"))
"""


def test_what_an_objective_leaves_is_finalized_at_exit(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", PROCESS, str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "operator")},
    )
    assert (tmp_path / "never-closed.txt").read_text() == "trial 0 done\n"
    assert (tmp_path / "finalized.txt").read_text() == "cleaned up\n"
    assert (tmp_path / "atexit.txt").read_text() == "finished\n"
