"""`python -m testbed up|down|status|executor` (with PYTHONPATH=hack).

`up` starts a bed under .dev/bed whose processes outlive this command and writes
.dev/env; `down` stops every one of them by pid.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from testbed.bed import Bed
from testbed.errors import BedError
from testbed.paths import REPO_ROOT

DEV_DIR = REPO_ROOT / ".dev"


def _write_env(bed: Bed, path: Path) -> None:
    env = bed.env()
    lines = [
        "# Written by `make dev-cluster`; load with: . .dev/env",
        f"export KUBECONFIG={shlex.quote(env['KUBECONFIG'])}",
        f"export STORAGE_URL={shlex.quote(env['STORAGE_URL'])}",
        # The pinned kubectl and helm must win over any other on PATH.
        f'export PATH={shlex.quote(str(bed.bin_dir))}:"$PATH"',
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def up(directory: Path) -> int:
    existing = Bed.load(directory)
    if existing.running():
        print(f"test bed already running in {directory}; `make dev-cluster-down` stops it")
        _write_env(existing, DEV_DIR / "env")
        return 0
    existing.stop()  # leftovers of a bed that died: clear them first
    print(f"starting test bed in {directory} ...", flush=True)
    bed = Bed(directory, detached=True).start()
    _write_env(bed, DEV_DIR / "env")
    print(f"test bed up in {bed.startup_s:.1f}s")
    print("\n".join(bed.describe_processes()))
    print("now: . .dev/env && kubectl get nodes")
    return 0


def down(directory: Path) -> int:
    bed = Bed.load(directory)
    bed.stop()
    (DEV_DIR / "env").unlink(missing_ok=True)
    print(f"test bed in {directory} stopped")
    return 0


def status(directory: Path) -> int:
    bed = Bed.load(directory)
    print("\n".join(bed.describe_processes()) or "no test bed recorded")
    return 0 if bed.running() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, default=DEV_DIR / "bed")
    ex = sub.add_parser("executor", help="run the pod executor (started by the bed)")
    ex.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "executor":
            from testbed.executor import run_executor

            run_executor(args.config)
            return 0
        commands = {"up": up, "down": down, "status": status}
        return commands[args.command](args.dir)
    except BedError as err:
        print(f"test bed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
