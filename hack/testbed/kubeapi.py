"""A small, typed JSON client for the Kubernetes API, used by the bed and the executor.

The official client is untyped and turns every object into a model class; the executor
handles raw pod JSON and needs strategic-merge status patches and long watches, which are
a few lines over urllib3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from testbed.kubeconfig import Credentials

__all__ = ["JSON", "MERGE_PATCH", "STRATEGIC_MERGE_PATCH", "ApiError", "KubeApi"]

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def q(segment: str) -> str:
    """Quote one path segment."""
    return quote(segment, safe="")


class KubeApi:
    def __init__(self, creds: Credentials, timeout_s: float = 30.0) -> None:
        self.server = creds.server.rstrip("/")
        self._timeout_s = timeout_s
        self._http = urllib3.PoolManager(
            num_pools=2,
            # The executor publishes status from many pod threads at once.
            maxsize=64,
            block=False,
            ca_certs=str(creds.ca_cert),
            cert_file=str(creds.client_cert),
            key_file=str(creds.client_key),
            retries=False,
        )

    def _url(self, path: str, params: Mapping[str, str] | None) -> str:
        url = self.server + path
        if params:
            url += "?" + urlencode(dict(params))
        return url

    def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self._http.request(
            method,
            self._url(path, params),
            body=data,
            headers=headers,
            timeout=urllib3.Timeout(connect=5.0, read=self._timeout_s),
        )
        text = resp.data.decode("utf-8", "replace")
        if resp.status >= 400:
            raise ApiError(method, path, resp.status, text)
        parsed: JSON = json.loads(text) if text.strip().startswith("{") else {"raw": text}
        return parsed

    def get(self, path: str, params: Mapping[str, str] | None = None) -> JSON:
        return self.request("GET", path, params=params)

    def get_or_none(self, path: str) -> JSON | None:
        """The object at `path`, or None while it does not exist (404)."""
        try:
            return self.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def post(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def put(self, path: str, body: JSON) -> JSON:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: JSON, content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body)

    def get_text(self, path: str) -> tuple[int, str]:
        """Status and body of a plain-text endpoint such as /readyz; never raises on HTTP errors."""
        resp = self._http.request(
            "GET", self._url(path, None), timeout=urllib3.Timeout(connect=2.0, read=5.0)
        )
        return resp.status, resp.data.decode("utf-8", "replace")

    def watch(self, path: str, params: Mapping[str, str], timeout_s: int = 60) -> Iterator[JSON]:
        """Events of one watch request; the server ends it after timeout_s."""
        all_params = dict(params)
        all_params.update({"watch": "true", "timeoutSeconds": str(timeout_s)})
        resp = self._http.request(
            "GET",
            self._url(path, all_params),
            headers={"Accept": "application/json"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=5.0, read=timeout_s + 15.0),
        )
        try:
            if resp.status >= 400:
                raise ApiError("WATCH", path, resp.status, resp.data.decode("utf-8", "replace"))
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        event: JSON = json.loads(line)
                        yield event
        finally:
            resp.release_conn()

    def close(self) -> None:
        self._http.clear()
