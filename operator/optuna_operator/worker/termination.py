"""The one-line reason a worker gives when it exits non-zero.

Kubernetes shows /dev/termination-log as the container's termination message; with
terminationMessagePolicy FallbackToLogsOnError it falls back to the end of the log, so the
same line is also written last on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["TERMINATION_LOG", "one_line", "report_exit"]

TERMINATION_LOG = Path("/dev/termination-log")
# Kubernetes truncates termination messages at 4096 bytes; stay well inside that.
MAX_MESSAGE = 1024


def one_line(message: str) -> str:
    """Collapse whitespace so the message survives as a single log line."""
    flat = " ".join(message.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 3] + "..."


def report_exit(message: str, path: Path = TERMINATION_LOG) -> None:
    """Write the reason to the termination log (when mounted) and as the last stderr line."""
    line = one_line(message)
    # Kubernetes mounts the file; creating it elsewhere (a root shell's /dev) helps nobody.
    if path.exists():
        try:
            with path.open("w") as handle:
                handle.write(line)
        except OSError:
            pass  # read-only or vanished: stderr still carries the message
    sys.stdout.flush()
    sys.stderr.flush()
    print(line, file=sys.stderr, flush=True)
