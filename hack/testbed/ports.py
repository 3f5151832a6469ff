"""Free loopback ports, so several beds (and a developer's own services) can coexist."""

from __future__ import annotations

import socket
import threading

__all__ = ["free_port"]

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A port nobody listens on now; never the same one twice in this process.

    The kernel may hand a just-closed port out again before its new owner binds it, so
    remembering what we gave away avoids two components of one bed colliding.
    """
    with _lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
