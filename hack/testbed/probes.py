"""Readiness probes (httpGet, tcpSocket, exec) run against 127.0.0.1, where every pod lives.

Only readiness is probed: it decides the Ready condition that Deployments and Services
look at. Liveness and startup probes are not run (see README).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ReadinessProbe"]

JSON = dict[str, Any]


def _port(value: int | str, container: JSON) -> int:
    if isinstance(value, int) or value.isdigit():
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"named port {value!r} not found in container ports")


class ReadinessProbe:
    """One container's readiness probe with kubelet's thresholds and timing."""

    def __init__(self, spec: JSON, container: JSON, started: float) -> None:
        self.spec = spec
        self.container = container
        self.period = float(spec.get("periodSeconds", 10))
        self.timeout = float(spec.get("timeoutSeconds", 1))
        self.success_threshold = int(spec.get("successThreshold", 1))
        self.failure_threshold = int(spec.get("failureThreshold", 3))
        self.next_at = started + float(spec.get("initialDelaySeconds", 0))
        self.ready = False
        self._successes = 0
        self._failures = 0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def run(self, env: Mapping[str, str], cwd: Path) -> bool:
        """Probe once; returns the (possibly changed) readiness."""
        self.next_at = time.monotonic() + self.period
        ok = self._probe(env, cwd)
        if ok:
            self._successes += 1
            self._failures = 0
            if self._successes >= self.success_threshold:
                self.ready = True
        else:
            self._failures += 1
            self._successes = 0
            if self._failures >= self.failure_threshold:
                self.ready = False
        return self.ready

    def _probe(self, env: Mapping[str, str], cwd: Path) -> bool:
        try:
            if "httpGet" in self.spec:
                return self._http(self.spec["httpGet"])
            if "tcpSocket" in self.spec:
                port = _port(self.spec["tcpSocket"]["port"], self.container)
                with socket.create_connection(("127.0.0.1", port), timeout=self.timeout):
                    return True
            if "exec" in self.spec:
                done = subprocess.run(
                    self.spec["exec"]["command"],
                    env=dict(env),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=self.timeout,
                )
                return done.returncode == 0
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return False
        # grpc probes are not implemented; do not hold the pod back for them.
        return True

    def _http(self, spec: JSON) -> bool:
        scheme = str(spec.get("scheme", "HTTP")).lower()
        port = _port(spec["port"], self.container)
        path = spec.get("path", "/")
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}")
        for header in spec.get("httpHeaders") or []:
            request.add_header(header["name"], header["value"])
        ctx = None
        if scheme == "https":
            # kubelet does not verify probe certificates either.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=ctx) as resp:
                return 200 <= int(resp.status) < 400
        except urllib.error.HTTPError as err:
            return 200 <= err.code < 400
