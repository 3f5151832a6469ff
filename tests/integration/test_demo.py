"""`DEMO_KEEP=1 make demo` leaves the bed, the operator and the dashboard running after the
demo process has exited, and the commands it prints work, the stop command included."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from tests.integration.studies import ROOT

from testbed import Bed


def _printed(output: str, label: str) -> str:
    match = re.search(rf"^\s+{label}:\s+(.+)$", output, re.MULTILINE)
    assert match, f"the demo printed no '{label}:' line:\n{output}"
    return match.group(1).strip()


def test_demo_keep_leaves_everything_running_and_the_printed_commands_work(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "DEMO_KEEP": "1",
        "DEMO_TRIALS": "6",
        "DEMO_DIR": str(tmp_path),
        "PYTHONPATH": f"{ROOT / 'hack'}:{ROOT}",
    }
    bed_dir = tmp_path / "demo-bed"
    try:
        demo = subprocess.run(
            [sys.executable, str(ROOT / "hack" / "demo.py")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        out = demo.stdout
        # The demo process has exited; everything it started must still run.
        kept = Bed.load(bed_dir)
        processes = kept.describe_processes()
        assert kept.running(), "\n".join(processes)
        assert any(line.startswith("operator ") for line in processes), processes

        use = _printed(out, "use it")
        listed = subprocess.run(
            ["bash", "-c", use], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"xgb-regression\s+Succeeded\s+\d+/6", listed.stdout), listed.stdout

        url = _printed(out, "dashboard").split()[0]
        with urllib.request.urlopen(f"{url}/api/studies", timeout=10) as response:
            assert response.status == 200
            example = yaml.safe_load((ROOT / "examples" / "xgboost-regression.yaml").read_text())
            shown = f'"{example["spec"]["studyName"]}"'
            assert shown in response.read().decode()

        stop = _printed(out, "stop it")
        stopped = subprocess.run(
            ["bash", "-c", stop], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not Bed.load(bed_dir).describe_processes()
        assert not (tmp_path / "env").exists()
        # The dashboard was a pod of the bed's executor: gone with it. Port 8080 is this
        # machine's, so another bed (a second test run beside this one) may hold it by now:
        # whatever answers there must not be this demo's dashboard.
        try:
            with urllib.request.urlopen(f"{url}/api/studies", timeout=5) as response:
                assert shown not in response.read().decode(), "the demo's dashboard still runs"
        except OSError:
            pass  # nothing listens: the dashboard went with the bed
    finally:
        Bed.load(bed_dir).stop()
