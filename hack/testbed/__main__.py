"""`python -m testbed up|down|status|executor` (with PYTHONPATH=hack).

`up` starts a bed under .dev/bed whose processes outlive this command and writes
.dev/env; `down` stops every one of them by pid. `--node`: the node bed (kubelet,
containerd, CNI, kube-proxy) under .dev/node-bed instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed.bed import Bed
from testbed.errors import BedError
from testbed.paths import REPO_ROOT

DEV_DIR = REPO_ROOT / ".dev"


def up(directory: Path, bed_cls: type[Bed] = Bed) -> int:
    existing = bed_cls.load(directory)
    if existing.running():
        print(f"test bed already running in {directory}; `make dev-cluster-down` stops it")
        existing.write_env(DEV_DIR / "env", "`make dev-cluster`")
        return 0
    existing.stop()  # leftovers of a bed that died: clear them first
    print(f"starting test bed in {directory} ...", flush=True)
    bed = bed_cls(directory, detached=True).start()
    bed.write_env(DEV_DIR / "env", "`make dev-cluster`")
    print(f"test bed up in {bed.startup_s:.1f}s")
    print("\n".join(bed.describe_processes()))
    print("now: . .dev/env && kubectl get nodes")
    return 0


def down(directory: Path, bed_cls: type[Bed] = Bed) -> int:
    bed = bed_cls.load(directory)
    bed.stop()
    # The env file sits beside the bed's directory (.dev/bed, .dev/demo-bed -> .dev/env).
    (directory.parent / "env").unlink(missing_ok=True)
    print(f"test bed in {directory} stopped")
    return 0


def status(directory: Path, bed_cls: type[Bed] = Bed) -> int:
    bed = bed_cls.load(directory)
    print("\n".join(bed.describe_processes()) or "no test bed recorded")
    return 0 if bed.running() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, default=None)
        p.add_argument("--node", action="store_true", help="the node bed (kubelet, containerd)")
    ex = sub.add_parser("executor", help="run the pod executor (started by the bed)")
    ex.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "executor":
            from testbed.executor import run_executor

            run_executor(args.config)
            return 0
        commands = {"up": up, "down": down, "status": status}
        if args.node:
            from testbed.nodebed import NodeBed

            return commands[args.command](args.dir or DEV_DIR / "node-bed", NodeBed)
        return commands[args.command](args.dir or DEV_DIR / "bed")
    except BedError as err:
        print(f"test bed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
