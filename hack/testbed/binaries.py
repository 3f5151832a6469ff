"""The pinned binaries: found in the cache, or built by hack/build-binaries.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testbed.errors import BedError
from testbed.paths import HACK_DIR, bin_dir

__all__ = ["REQUIRED", "ensure_binaries", "missing_binaries"]

REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "helm",
)


def missing_binaries(directory: Path) -> list[str]:
    return [name for name in REQUIRED if not (directory / name).is_file()]


def ensure_binaries() -> Path:
    """The bin directory, building what is missing first (tens of minutes when cold)."""
    directory = bin_dir()
    if missing_binaries(directory):
        script = HACK_DIR / "build-binaries.sh"
        # Progress goes straight to the terminal: a cold build is long and should say so.
        result = subprocess.run([str(script)], stdout=subprocess.DEVNULL, check=False)
        still = missing_binaries(directory)
        if result.returncode != 0 or still:
            raise BedError(
                f"{script} failed (exit {result.returncode}); missing in {directory}: "
                f"{', '.join(still) or 'none'}. Run `make binaries` to see the build output."
            )
    return directory
