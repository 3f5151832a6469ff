"""The few Kubernetes calls the reconciler makes, over one shared ApiClient."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from optuna_operator.api import API_VERSION, PLURAL

__all__ = ["FIELD_MANAGER", "Cluster"]

log = logging.getLogger(__name__)

FIELD_MANAGER = "optuna-operator"

_PATHS = {
    "Job": ("/apis/batch/v1", "jobs"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "Secret": ("/api/v1", "secrets"),
    "TuningStudy": (f"/apis/{API_VERSION}", PLURAL),
}


class Cluster:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api = api_client
        self.core = k8s.CoreV1Api(api_client)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        method, url, headers, payload, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=payload)
        data = response.read()  # type: ignore[no-untyped-call]
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason, body=data)
        return json.loads(data) if data else {}

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None) -> str:
        prefix, plural = _PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: creates, or patches only the fields this operator owns."""
        meta = obj["metadata"]
        result: dict[str, Any] = self._call(
            "PATCH",
            self._path(obj["kind"], meta["namespace"], meta["name"]),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call("GET", self._path(kind, namespace), query=[("labelSelector", selector)])
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call(
            "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)]
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            self._call(
                "DELETE",
                self._path(kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def annotate(self, kind: str, namespace: str, name: str, key: str, value: str) -> None:
        """Merge-patch one annotation; an unchanged value is a no-op for the API server."""
        try:
            self._call(
                "PATCH",
                self._path(kind, namespace, name),
                body={"metadata": {"annotations": {key: value}}},
                content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def read_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """The decoded value, or None when the key is absent; raises 404 as ApiException."""
        secret = self.core.read_namespaced_secret(name, namespace)
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None
