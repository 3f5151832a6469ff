"""apiserver.py: connection settings from a service account or a kubeconfig, the token
re-read, requests and ApiError, and TLS with inline certificates, against servers on
loopback (plain HTTP, and HTTPS that requires a client certificate)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from optuna_operator.apiserver import (
    TOKEN_REREAD_SECONDS,
    ApiError,
    ApiServer,
    ConfigError,
    ConnectionSettings,
    Request,
    load_kubeconfig,
    load_settings,
    ssl_context,
)
from optuna_operator.handlers import connection_info
from testbed.certs import Pki, generate_pki

SECRET_TOKEN = "tok-hunter2"


def kubeconfig(
    path: Path, cluster: dict[str, Any], user: dict[str, Any], namespace: str | None = None
) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "other", "cluster": {"server": "https://elsewhere:6443"}},
            {"name": "c", "cluster": cluster},
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "other", "context": {"cluster": "other", "user": "u"}},
            {"name": "mine", "context": context},
        ],
        "current-context": "mine",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------ settings


def test_in_a_pod_the_service_account_is_used(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(SECRET_TOKEN + "\n")
    (sa / "ca.crt").write_text("CA")
    (sa / "namespace").write_text("optuna-system")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    settings = load_settings(env, service_account=sa)
    assert settings.server == "https://10.96.0.1:443"
    assert settings.ca_file == str(sa / "ca.crt")
    assert settings.token_file == str(sa / "token") and settings.token is None
    assert settings.namespace == "optuna-system"
    assert SECRET_TOKEN not in repr(settings)
    v6 = load_settings({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, service_account=sa)
    assert v6.server == "https://[fd00::1]:443"


def test_outside_a_pod_the_kubeconfig_is_used(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a" / "config", {"server": "https://a:6443"}, {})
    second = kubeconfig(tmp_path / "b" / "config", {"server": "https://b:6443"}, {})
    # No token in the service account folder: not in a pod, whatever the environment says.
    env = {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBECONFIG": f"{first}{os.pathsep}{second}",
    }
    assert load_settings(env, service_account=tmp_path / "none").server == "https://a:6443"
    home = tmp_path / "home"
    kubeconfig(home / ".kube" / "config", {"server": "https://home:6443/"}, {})
    assert load_settings({"HOME": str(home)}, tmp_path / "none").server == "https://home:6443"
    with pytest.raises(ConfigError, match="no kubeconfig at"):
        load_settings({"KUBECONFIG": str(tmp_path / "missing")}, tmp_path / "none")


def test_kubeconfig_files_are_relative_to_its_folder_and_inline_data_wins(
    tmp_path: Path,
) -> None:
    path = kubeconfig(
        tmp_path / "kube" / "config",
        {"server": "https://k:6443", "certificate-authority": "pki/ca.crt"},
        {
            "client-certificate": "/abs/client.crt",
            "client-key": "pki/client.key",
            "tokenFile": "token",
        },
        namespace="team-a",
    )
    settings = load_kubeconfig(path)
    folder = tmp_path / "kube"
    assert settings.ca_file == str(folder / "pki" / "ca.crt")
    assert settings.cert_file == "/abs/client.crt"
    assert settings.key_file == str(folder / "pki" / "client.key")
    assert settings.token_file == str(folder / "token")
    assert settings.namespace == "team-a" and not settings.insecure

    inline = kubeconfig(
        tmp_path / "inline",
        {
            "server": "https://k:6443",
            "certificate-authority": "ca.crt",
            "certificate-authority-data": b64(b"CA PEM"),
            "insecure-skip-tls-verify": True,
        },
        {
            "client-certificate-data": b64(b"CERT PEM"),
            "client-key": "client.key",
            "client-key-data": b64(b"KEY PEM"),
            "token": SECRET_TOKEN,
        },
    )
    settings = load_kubeconfig(inline)
    assert (settings.ca_data, settings.ca_file) == (b"CA PEM", None)
    assert (settings.cert_data, settings.cert_file) == (b"CERT PEM", None)
    assert (settings.key_data, settings.key_file) == (b"KEY PEM", None)
    assert settings.token == SECRET_TOKEN and settings.insecure
    assert "KEY PEM" not in repr(settings) and SECRET_TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"exec": {"command": "aws", "args": ["eks", "get-token"]}}, "exec"),
        (
            {"auth-provider": {"name": "oidc", "config": {"id-token": SECRET_TOKEN}}},
            "auth-provider",
        ),
        ({"username": "admin", "password": SECRET_TOKEN}, "username, password"),
    ],
)
def test_users_that_need_plugins_fail_saying_what_is_unsupported(
    tmp_path: Path, user: dict[str, Any], named: str
) -> None:
    path = kubeconfig(tmp_path / "config", {"server": "https://k:6443"}, user)
    with pytest.raises(ConfigError) as raised:
        load_kubeconfig(path)
    message = str(raised.value)
    assert f"does not support {named}" in message and "context mine" in message
    assert SECRET_TOKEN not in message


def test_a_broken_kubeconfig_says_what_is_missing(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", {"server": "https://k:6443"}, {})
    config = yaml.safe_load(path.read_text())
    config["current-context"] = "gone"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="No context named 'gone'"):
        load_kubeconfig(path)
    path.write_text("- not a mapping")
    with pytest.raises(ConfigError, match="not a mapping"):
        load_kubeconfig(path)
    bad = kubeconfig(tmp_path / "bad", {"server": "https://k"}, {"client-key-data": "%%%"})
    with pytest.raises(ConfigError, match=r"client-key-data .* is not base64"):
        load_kubeconfig(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_file_is_read_again_after_a_minute_and_kept_when_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    clock = Clock()
    api = ApiServer(ConnectionSettings("http://127.0.0.1:1", token_file=str(token)), clock=clock)
    assert api.token() == "first"
    token.write_text("second")  # the kubelet rotated it
    clock.now += TOKEN_REREAD_SECONDS - 1
    assert api.token() == "first"
    clock.now += 1
    assert api.token() == "second"
    token.write_text("third")
    clock.now += TOKEN_REREAD_SECONDS
    assert api.token() == "third"
    token.unlink()
    clock.now += TOKEN_REREAD_SECONDS
    assert api.token() == "third"
    assert "Cannot read the token file" in caplog.text and "third" not in caplog.text
    with pytest.raises(ConfigError, match="Cannot read the token file"):
        ApiServer(ConnectionSettings("http://127.0.0.1:1", token_file=str(token))).token()


def test_kopf_logs_in_with_the_same_settings_and_the_token_as_of_now(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("rotated\n")
    settings = ConnectionSettings(
        "https://k:6443",
        ca_file="/sa/ca.crt",
        cert_data=b"CERT",
        key_data=b"KEY",
        token_file=str(token),
        namespace="ns",
    )
    info = connection_info(settings, trust_env=False)
    assert (info.server, info.ca_path, info.ca_data) == ("https://k:6443", "/sa/ca.crt", None)
    assert (info.certificate_data, info.private_key_data) == (b"CERT", b"KEY")
    assert info.token == "rotated" and info.default_namespace == "ns" and not info.insecure
    assert info.as_http_headers() == {"Authorization": "Bearer rotated"}


# ------------------------------------------------------------------------------ requests


class Recorded:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []


def _handler(recorded: Recorded) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorded.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "type": self.headers.get("Content-Type"),
                    "body": json.loads(body) if body else None,
                }
            )
            if self.path.startswith("/missing"):
                status = 404
                out = json.dumps(
                    {"kind": "Status", "reason": "NotFound", "message": 'jobs "x" not found'}
                ).encode()
            elif self.path.startswith("/proxy"):
                status, out = 502, b"<html>bad gateway</html>"
            elif self.path.startswith("/empty"):
                status, out = 200, b""
            else:
                status, out = 200, json.dumps({"path": self.path}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def http_server() -> Iterator[tuple[str, Recorded]]:
    recorded = Recorded()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorded))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", recorded
    server.shutdown()
    server.server_close()


def test_calls_send_json_with_the_token_and_errors_become_api_errors(
    http_server: tuple[str, Recorded],
) -> None:
    url, recorded = http_server
    api = ApiServer(ConnectionSettings(url, token=SECRET_TOKEN))
    status, body = api.call(
        Request(
            "PATCH",
            "/apis/batch/v1/namespaces/ns/jobs/j",
            body={"spec": {"suspend": True}},
            query=[("fieldManager", "optuna-operator"), ("labelSelector", "a=b,c in (d)")],
            content_type="application/apply-patch+yaml",
        )
    )
    assert status == 200
    assert body == {"path": recorded.requests[0]["path"]}
    sent = recorded.requests[0]
    assert sent["path"] == (
        "/apis/batch/v1/namespaces/ns/jobs/j?fieldManager=optuna-operator"
        "&labelSelector=a%3Db%2Cc+in+%28d%29"
    )
    assert sent["auth"] == f"Bearer {SECRET_TOKEN}"
    assert sent["type"] == "application/apply-patch+yaml"
    assert sent["body"] == {"spec": {"suspend": True}}
    assert api.call(Request("GET", "/empty")) == (200, {})

    with pytest.raises(ApiError) as raised:
        api.call(Request("GET", "/missing/job"))
    error = raised.value
    assert (error.status, error.reason) == (404, "Not Found")
    assert json.loads(error.body)["reason"] == "NotFound"
    assert str(error) == '404 Not Found: jobs "x" not found'
    assert SECRET_TOKEN not in str(error) and SECRET_TOKEN not in repr(error)

    # `request` answers every status; a body that is not JSON comes back as a message.
    assert api.request(Request("GET", "/missing/job"))[0] == 404
    assert api.request(Request("GET", "/proxy")) == (502, {"message": "<html>bad gateway</html>"})
    with pytest.raises(ApiError) as proxied:
        api.call(Request("GET", "/proxy"))
    assert proxied.value.status == 502 and str(proxied.value) == "502 Bad Gateway: Bad Gateway"
    api.close()


def test_without_a_token_no_authorization_is_sent(http_server: tuple[str, Recorded]) -> None:
    url, recorded = http_server
    ApiServer(ConnectionSettings(url)).call(
        Request("DELETE", "/x", body={"propagationPolicy": "Background"})
    )
    assert recorded.requests[0]["auth"] is None
    assert recorded.requests[0]["type"] == "application/json"


# ------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_server(pki: Pki) -> Iterator[tuple[str, list[str]]]:
    """HTTPS on loopback that requires a client certificate from the PKI's CA and answers
    with the client certificate's common name."""
    names: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            subject = dict(item for rdn in peer["subject"] for item in rdn)
            names.append(subject["commonName"])
            out = json.dumps({"user": subject["commonName"]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(pki.serving.cert), str(pki.serving.key))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", names
    server.shutdown()
    server.server_close()


def _private_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("optuna-operator-tls-")}


def test_inline_client_certificates_authenticate_and_leave_no_file_behind(
    tmp_path: Path, pki: Pki, https_server: tuple[str, list[str]]
) -> None:
    url, names = https_server
    path = kubeconfig(
        tmp_path / "config",
        {"server": url, "certificate-authority-data": b64(pki.ca_cert.read_bytes())},
        {
            "client-certificate-data": b64(pki.admin.cert.read_bytes()),
            "client-key-data": b64(pki.admin.key.read_bytes()),
        },
    )
    before = _private_folders()
    api = ApiServer(load_kubeconfig(path))
    assert _private_folders() == before
    assert api.call(Request("GET", "/api")) == (200, {"user": "testbed-admin"})
    assert names == ["testbed-admin"]


def test_inline_certificate_and_key_are_written_0600_in_a_private_folder_and_removed(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int, bytes]] = []
    load = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str | None = None) -> None:
        assert keyfile is not None
        folder = os.stat(os.path.dirname(certfile)).st_mode & 0o777
        modes = [os.stat(f).st_mode & 0o777 for f in (certfile, keyfile)]
        seen.append((folder, *modes, Path(keyfile).read_bytes()))
        load(self, certfile, keyfile)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    key = pki.admin.key.read_bytes()
    settings = ConnectionSettings(
        "https://k:6443", cert_data=pki.admin.cert.read_bytes(), key_data=key
    )
    before = _private_folders()
    ssl_context(settings)
    assert seen == [(0o700, 0o600, 0o600, key)]
    assert _private_folders() == before


def test_certificate_files_relative_to_the_kubeconfig_authenticate(
    tmp_path: Path, pki: Pki, https_server: tuple[str, list[str]]
) -> None:
    url, _ = https_server
    folder = pki.ca_cert.parent
    path = kubeconfig(
        folder / "kube" / "config",
        {"server": url, "certificate-authority": "../ca.crt"},
        {
            "client-certificate": f"../{pki.admin.cert.name}",
            "client-key": f"../{pki.admin.key.name}",
        },
    )
    assert ApiServer(load_kubeconfig(path)).call(Request("GET", "/api"))[1] == {
        "user": "testbed-admin"
    }


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_server_the_ca_did_not_sign_is_refused_unless_insecure(
    tmp_path: Path, pki: Pki, https_server: tuple[str, list[str]]
) -> None:
    url, _ = https_server
    other = generate_pki(tmp_path / "other")
    user = {"client-certificate": str(pki.admin.cert), "client-key": str(pki.admin.key)}
    untrusted = kubeconfig(
        tmp_path / "untrusted", {"server": url, "certificate-authority": str(other.ca_cert)}, user
    )
    api = ApiServer(load_kubeconfig(untrusted), timeout=5)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        api.call(Request("GET", "/api"))
    insecure = kubeconfig(
        tmp_path / "insecure", {"server": url, "insecure-skip-tls-verify": True}, user
    )
    assert ApiServer(load_kubeconfig(insecure)).call(Request("GET", "/api"))[0] == 200
