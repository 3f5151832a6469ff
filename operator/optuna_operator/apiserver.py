"""The operator's one connection to the Kubernetes API server, without the official client.

`import kopf` imports the official `kubernetes` package whenever it is installed, and that
package alone holds 9 to 12 MiB of the operator's memory (issue 24). The operator needs none
of its models: its calls are plain REST with JSON bodies (kube.py, leader.py). This module
loads the connection settings the way client-go does, from the pod's service account or else
from the kubeconfig, and sends requests with urllib3; kopf's login handler gets a
`kopf.ConnectionInfo` built from the same settings (handlers.py), so one loader serves both.

Supported: a service account (its token re-read at most every minute: bound tokens rotate),
and kubeconfig users with client certificates or a token (inline or a tokenFile). A user
that needs a plugin (exec, auth-provider) fails with an error that says so. Tokens, keys
and certificate data appear in no log line and no error message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "TOKEN_REREAD_SECONDS",
    "ApiError",
    "ApiServer",
    "ConfigError",
    "ConnectionSettings",
    "Request",
    "Transport",
    "connect",
    "load_kubeconfig",
    "load_settings",
    "read_token",
    "ssl_context",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# client-go re-reads a token file once a minute: the kubelet rotates bound tokens.
TOKEN_REREAD_SECONDS = 60.0
# Requests other than watches end within the API server's own 60 s request timeout.
DEFAULT_TIMEOUT = urllib3.Timeout(connect=10.0, read=70.0)
# Connections kept per host: the reconcile workers (8) and the Lease renewer at once.
POOL_SIZE = 16
# Users the operator cannot authenticate as: they need plugins or a protocol it lacks.
_UNSUPPORTED_USER = ("exec", "auth-provider", "username", "password")
_UNSUPPORTED_CLUSTER = ("proxy-url", "tls-server-name")


class ApiError(Exception):
    """The API server answered with an HTTP error (status >= 400). `reason` is the HTTP
    reason phrase, `body` the response as text (a metav1.Status, normally)."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(status, reason, body)

    @property
    def message(self) -> str:
        """The Status message the API server sent, else the reason phrase."""
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return self.reason
        message = parsed.get("message") if isinstance(parsed, dict) else None
        return str(message) if message else self.reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"[:1000]


@dataclass(frozen=True)
class Request:
    """One call to the API server: `body` is sent as JSON with `content_type`; `timeout`
    (seconds) replaces the connection's default. One value rather than six parameters, so
    that every Transport and its callers spell the call the same way."""

    method: str
    path: str
    body: Any = None
    query: list[tuple[str, str]] | None = None
    content_type: str = "application/json"
    timeout: float | None = None


class Transport(Protocol):
    """What kube.py's Cluster sends its calls through: ApiServer here; `migrate` passes an
    adapter over the official client (an admin's kubeconfig may need its plugins)."""

    def call(self, request: Request) -> tuple[int, Any]: ...

    def close(self) -> None: ...


class ConfigError(Exception):
    """No usable connection settings: neither a service account nor a kubeconfig, or a
    kubeconfig this module cannot use."""


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the API server is and how to authenticate. Inline data is PEM bytes; a
    `token_file` (re-read by ApiServer) wins over `token`, as in client-go."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    cert_file: str | None = None
    cert_data: bytes | None = None
    key_file: str | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    namespace: str | None = None
    source: str = ""  # for logs: "service account" or the kubeconfig's path and context

    def __repr__(self) -> str:  # the dataclass repr would print the token and the key
        return f"ConnectionSettings(server={self.server!r}, source={self.source!r})"


def load_settings(
    environ: Mapping[str, str] | None = None, service_account: Path = SERVICE_ACCOUNT_DIR
) -> ConnectionSettings:
    """The pod's service account when running in a pod, else the kubeconfig
    ($KUBECONFIG's first path, else ~/.kube/config)."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if host and port and (service_account / "token").is_file():
        return _service_account(host, port, service_account)
    paths = [p for p in (env.get("KUBECONFIG") or "").split(os.pathsep) if p]
    path = Path(paths[0]) if paths else Path(env.get("HOME") or Path.home()) / ".kube" / "config"
    if not path.is_file():
        raise ConfigError(
            f"Not in a pod (no KUBERNETES_SERVICE_HOST, or no token in {service_account}) "
            f"and no kubeconfig at {path}"
        )
    return load_kubeconfig(path)


def _service_account(host: str, port: str, directory: Path) -> ConnectionSettings:
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    ca = directory / "ca.crt"
    return ConnectionSettings(
        server=f"https://{host}:{port}",
        ca_file=str(ca) if ca.is_file() else None,
        token_file=str(directory / "token"),
        namespace=namespace or None,
        source="service account",
    )


def load_kubeconfig(path: Path, context: str | None = None) -> ConnectionSettings:
    """The current (or the named) context of one kubeconfig file. Relative file names are
    relative to the kubeconfig's folder, as kubectl reads them."""
    config = _read_kubeconfig(path)
    name = context or config.get("current-context")
    if not name:
        raise ConfigError(f"Kubeconfig {path} has no current-context")
    where = f"kubeconfig {path}, context {name}"
    ctx = _named(config, "contexts", "context", name, where)
    cluster = _named(config, "clusters", "cluster", ctx.get("cluster"), where)
    user = _named(config, "users", "user", ctx.get("user"), where) if ctx.get("user") else {}
    unsupported = [k for k in _UNSUPPORTED_USER if user.get(k)]
    unsupported += [k for k in _UNSUPPORTED_CLUSTER if cluster.get(k)]
    if unsupported:
        raise ConfigError(
            f"The operator does not support {', '.join(unsupported)} ({where}): use a client "
            "certificate or a token (token, tokenFile), or run it in a pod with its service "
            "account"
        )
    server = cluster.get("server")
    if not server:
        raise ConfigError(f"No server in {where}")
    folder = path.parent

    def file(value: Any) -> str | None:
        return str(folder / str(value)) if value else None  # an absolute path stays as it is

    # As client-go: inline data wins over a file of the same thing.
    ca_data = _inline(cluster, "certificate-authority-data", where)
    cert_data = _inline(user, "client-certificate-data", where)
    key_data = _inline(user, "client-key-data", where)
    return ConnectionSettings(
        server=str(server).rstrip("/"),
        ca_file=None if ca_data else file(cluster.get("certificate-authority")),
        ca_data=ca_data,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=None if cert_data else file(user.get("client-certificate")),
        cert_data=cert_data,
        key_file=None if key_data else file(user.get("client-key")),
        key_data=key_data,
        token=str(user["token"]) if user.get("token") else None,
        token_file=file(user.get("tokenFile")),
        namespace=ctx.get("namespace") or None,
        source=where,
    )


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    import yaml  # only here: a pod reads no kubeconfig

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read kubeconfig {path}: {type(exc).__name__}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"Kubeconfig {path} is not a mapping")
    return config


def _inline(entry: dict[str, Any], key: str, where: str) -> bytes | None:
    """PEM data a kubeconfig inlines in base64 (certificate-authority-data, client-*-data)."""
    value = entry.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{key} in {where} is not base64") from None


def _named(config: dict[str, Any], section: str, key: str, name: Any, where: str) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key) or {}
            if isinstance(value, dict):
                return value
    raise ConfigError(f"No {key} named {name!r} in {where}")


def read_token(settings: ConnectionSettings) -> str | None:
    """The bearer token as of now: the token file's content, else the inline token."""
    if not settings.token_file:
        return settings.token
    try:
        return Path(settings.token_file).read_text().strip() or settings.token
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"Cannot read the token file {settings.token_file}: {reason}") from None


def ssl_context(settings: ConnectionSettings) -> ssl.SSLContext:
    """The TLS context: the cluster's CA (or none checked, when insecure) and the client
    certificate. Inline certificate and key go through 0600 files in a private folder that
    is removed at once: `load_cert_chain` reads files only."""
    ca_text = settings.ca_data.decode("ascii") if settings.ca_data else None
    context = ssl.create_default_context(cafile=settings.ca_file, cadata=ca_text)
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with _pem_files(settings) as (cert, key):
        if cert:
            context.load_cert_chain(certfile=cert, keyfile=key)
    return context


@contextlib.contextmanager
def _pem_files(settings: ConnectionSettings) -> Iterator[tuple[str | None, str | None]]:
    if not (settings.cert_data or settings.key_data):
        yield settings.cert_file, settings.key_file
        return
    with tempfile.TemporaryDirectory(prefix="optuna-operator-tls-") as folder:  # mode 0700

        def write(name: str, content: bytes | None, path: str | None) -> str | None:
            if content is None:
                return path
            target = os.path.join(folder, name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            return target

        yield (
            write("client.crt", settings.cert_data, settings.cert_file),
            write("client.key", settings.key_data, settings.key_file),
        )


class ApiServer:
    """Requests to one API server over a pool of keep-alive connections (thread-safe)."""

    def __init__(
        self,
        settings: ConnectionSettings,
        timeout: float | urllib3.Timeout = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.clock = clock
        tls = ssl_context(settings) if settings.server.startswith("https:") else None
        # No redirects (the API server sends none; a token must not follow one elsewhere);
        # connection errors retried as the official client's urllib3 defaults did.
        self._pool = urllib3.PoolManager(
            maxsize=POOL_SIZE, ssl_context=tls, retries=urllib3.Retry(total=3, redirect=False)
        )
        self._token_lock = threading.Lock()
        self._token: str | None = None if settings.token_file else settings.token
        self._token_read_at = 0.0

    def token(self) -> str | None:
        """The bearer token; a token file is re-read when a minute has passed.
        A file that cannot be read then keeps the token last read, as client-go does."""
        if not self.settings.token_file:
            return self._token
        with self._token_lock:
            now = self.clock()
            if self._token is None or now - self._token_read_at >= TOKEN_REREAD_SECONDS:
                try:
                    self._token = read_token(self.settings)
                    self._token_read_at = now
                except ConfigError as exc:
                    if self._token is None:
                        raise
                    log.warning("%s; keeping the token read before", exc)
            return self._token

    def request(self, request: Request) -> tuple[int, Any]:
        """Send one request; the status and the parsed JSON body ({} when empty; a body that
        is not JSON, from a proxy say, as {"message": its first 500 characters})."""
        status, _, text = self._send(request)
        try:
            return status, _parse(text)
        except ValueError:
            return status, {"message": text[:500]}

    def call(self, request: Request) -> tuple[int, Any]:
        """`request`, raising ApiError when the API server answers with an error."""
        status, reason, text = self._send(request)
        if status >= 400:
            raise ApiError(status, reason, text)
        try:
            return status, _parse(text)
        except ValueError:
            raise ApiError(status, "Response is not JSON", text[:500]) from None

    def _send(self, request: Request) -> tuple[int, str, str]:
        query = request.query
        url = self.settings.server + request.path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "User-Agent": "optuna-operator"}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = None
        if request.body is not None:
            payload = json.dumps(request.body).encode()
            headers["Content-Type"] = request.content_type
        response = self._pool.request(
            request.method,
            url,
            body=payload,
            headers=headers,
            timeout=self.timeout if request.timeout is None else request.timeout,
            preload_content=True,
        )
        return response.status, response.reason or "", response.data.decode(errors="replace")

    def close(self) -> None:
        self._pool.clear()


def _parse(text: str) -> Any:
    """A response body as JSON, {} when empty (a DELETE's, say); ValueError when it is not
    JSON, which `request` and `call` each answer in their own way."""
    return json.loads(text) if text else {}


def connect() -> ApiServer:
    """An ApiServer from the pod's service account, or else the kubeconfig."""
    settings = load_settings()
    log.debug("Connecting to %s (%s)", settings.server, settings.source)
    return ApiServer(settings)
