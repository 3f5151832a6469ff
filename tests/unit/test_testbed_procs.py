"""The test bed signals a pod's process group only while the group is still the pod's."""

from __future__ import annotations

import subprocess
import sys

from testbed import procs


def test_a_reused_group_number_is_not_ours() -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        ticks = procs.start_ticks(leader.pid)
        assert ticks is not None
        assert procs.group_is_ours(leader.pid, ticks)
        # The same number leading its own group but started at another time: a stranger
        # (what a new session that got a reaped leader's pid looks like).
        assert not procs.group_is_ours(leader.pid, ticks - 1)
    finally:
        leader.kill()
        leader.wait()
