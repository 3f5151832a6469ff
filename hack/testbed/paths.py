"""Where things live: the repository, the pinned versions, the binary cache."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["HACK_DIR", "REPO_ROOT", "bin_dir", "versions"]

HACK_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = HACK_DIR.parent


def versions() -> dict[str, str]:
    """The pins in hack/versions.env, the single source the shell scripts read too."""
    pins: dict[str, str] = {}
    for raw in (HACK_DIR / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def bin_dir() -> Path:
    """The versioned cache directory; asking the script keeps one definition of its layout."""
    out = subprocess.run(
        [str(HACK_DIR / "build-binaries.sh"), "--print"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())
