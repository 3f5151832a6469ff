"""objective.requirements: pip installs the objective's packages once per pod, before trials.

A stock worker image then runs an objective that needs a library it lacks, with no image to
build. The packages go into a folder under the pod's /tmp (an emptyDir: the root filesystem
is read-only), named by a hash of the requirements, so a restarted container of the same pod
finds them installed. A file lock keeps processes of one pod from installing twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from optuna_operator.contract import ConfigError, redact

__all__ = ["install_requirements"]

log = logging.getLogger("optuna_operator.worker")

# pip's own network retries (5 by default) cover a flaky index; this bounds a hung one.
_PIP_TIMEOUT_SECONDS = 1800
_DONE = ".installed"


def install_requirements(requirements: list[str] | None, root: Path | None = None) -> Path | None:
    """Install `requirements` (once per pod) and put them first on sys.path and PYTHONPATH.

    Returns the folder they are in, or None when there are none. Raises ConfigError with
    pip's last lines when pip fails: the study ends with that message (exit code CONFIG)
    rather than restarting pods that would fail the same way.
    """
    if not requirements:
        return None
    digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    base = root or Path(tempfile.gettempdir()) / "optuna-operator-requirements"
    target = base / digest
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _DONE).exists():
            shutil.rmtree(target, ignore_errors=True)  # what a failed install left
            _pip_install(requirements, target)
            (target / _DONE).touch()
    path = str(target)
    sys.path.insert(0, path)
    # Command objectives and spawned trial processes see them too.
    current = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = f"{path}{os.pathsep}{current}" if current else path
    return target


def _pip_install(requirements: list[str], target: Path) -> None:
    log.info("Installing objective.requirements with pip: %s", " ".join(requirements))
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--no-cache-dir",
        "--target",
        str(target),
        *requirements,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise ConfigError(
            f"objective.requirements: pip did not finish in {_PIP_TIMEOUT_SECONDS} s"
        ) from err
    if done.returncode != 0:
        # pip hides passwords in index URLs; redact() also removes storage URLs.
        tail = " | ".join(redact(done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ConfigError(f"objective.requirements: pip install failed: {tail}")
    log.info("Installed objective.requirements into %s", target)
