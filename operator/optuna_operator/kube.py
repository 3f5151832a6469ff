"""The few Kubernetes calls the operator makes, over one shared ApiServer connection:
`ClusterReader` has the reads (what observe uses), `Cluster` adds the writes (what prepare and
act use)."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

from optuna_operator.api import API_VERSION, PLURAL
from optuna_operator.apiserver import ApiError, Request, Transport

__all__ = ["FIELD_MANAGER", "Cluster", "ClusterReader"]

log = logging.getLogger(__name__)

FIELD_MANAGER = "optuna-operator"

_PATHS = {
    "Job": ("/apis/batch/v1", "jobs"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "Secret": ("/api/v1", "secrets"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "TuningStudy": (f"/apis/{API_VERSION}", PLURAL),
}


class ClusterReader:
    """The operator's Kubernetes reads over one shared connection (an ApiServer)."""

    def __init__(self, api: Transport) -> None:
        self.api = api

    def close(self) -> None:
        self.api.close()

    def _call(self, request: Request) -> Any:
        """The parsed body of the API server's answer; an error status raises ApiError."""
        return self.api.call(request)[1]

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None) -> str:
        prefix, plural = _PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    def namespace_uid(self, namespace: str) -> str | None:
        """A namespace's uid (a re-created namespace of the same name has another), read
        with the `list` on namespaces the operator holds; None when it cannot be read."""
        try:
            result = self._call(
                Request(
                    "GET",
                    "/api/v1/namespaces",
                    query=[("fieldSelector", f"metadata.name={namespace}")],
                )
            )
        except ApiError as exc:
            if exc.status in (403, 404):
                return None
            raise
        items = result.get("items") or []
        return str(items[0]["metadata"]["uid"]) if items else None

    def list_path(self, path: str, selector: str) -> list[dict[str, Any]]:
        """The items of a collection at an API path (custom resources of other projects)."""
        result = self._call(Request("GET", path, query=[("labelSelector", selector)]))
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def get_cluster_object(self, path: str) -> dict[str, Any] | None:
        """GET any object by its API path; None when it does not exist."""
        try:
            result: dict[str, Any] = self._call(Request("GET", path))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call(Request("GET", self._path(kind, namespace, name)))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call(
            Request("GET", self._path(kind, namespace), query=[("labelSelector", selector)])
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call(
            Request(
                "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)]
            )
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def last_event_message(self, namespace: str, kind: str, name: str, reason: str) -> str | None:
        """The message of the newest Event with `reason` about an object, if any."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name},reason={reason}"
        result = self._call(
            Request(
                "GET", f"/api/v1/namespaces/{namespace}/events", query=[("fieldSelector", selector)]
            )
        )
        events = result.get("items") or []
        if not events:
            return None
        newest = max(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return str(newest.get("message") or "")[:500] or None

    def read_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """The decoded value, or None when the key is absent; raises 404 as ApiError."""
        secret = self._call(Request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}"))
        raw = (secret.get("data") or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None


class Cluster(ClusterReader):
    """The operator's Kubernetes calls, reads and writes."""

    def apply(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Server-side apply: creates, or patches only the fields this operator owns.
        Returns the object as stored and whether this call created it."""
        meta = obj["metadata"]
        status, result = self.api.call(
            Request(
                "PATCH",
                self._path(obj["kind"], meta["namespace"], meta["name"]),
                body=obj,
                query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                content_type="application/apply-patch+yaml",
            )
        )
        return result, status == 201

    def create(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create once and never patch (worker Jobs Kueue manages: Kueue owns `suspend` and
        the scheduling fields it injects, and an apply that stops sending a field would
        remove it). An existing object is returned as stored; the bool says whether this
        call created it."""
        meta = obj["metadata"]
        try:
            result = self._call(
                Request(
                    "POST",
                    self._path(obj["kind"], meta["namespace"]),
                    body=obj,
                    query=[("fieldManager", FIELD_MANAGER)],
                )
            )
        except ApiError as exc:
            # A watch cache that has not seen the object yet: what is stored wins.
            if exc.status != 409:
                raise
            existing = self.get(obj["kind"], meta["namespace"], meta["name"])
            if existing is None:
                raise
            return existing, False
        return result, True

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """JSON merge patch (RFC 7386) of an object: `None` removes a key."""
        self._call(
            Request(
                "PATCH",
                self._path(kind, namespace, name),
                body=patch,
                content_type="application/merge-patch+json",
            )
        )

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a TuningStudy's status subresource; returns the stored object."""
        result: dict[str, Any] = self._call(
            Request(
                "PATCH",
                self._path("TuningStudy", namespace, name) + "/status",
                body={"status": patch},
                content_type="application/merge-patch+json",
            )
        )
        return result

    def set_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any] | None:
        """Replace a TuningStudy's finalizers, only if it is still at `resource_version`
        (a merge patch replaces the whole list, so a concurrent change must be a conflict
        rather than lost). None when the object is gone."""
        try:
            result: dict[str, Any] = self._call(
                Request(
                    "PATCH",
                    self._path("TuningStudy", namespace, name),
                    body={
                        "metadata": {"finalizers": finalizers, "resourceVersion": resource_version}
                    },
                    content_type="application/merge-patch+json",
                )
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def post_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, count: int = 1
    ) -> None:
        """Record a core/v1 Event about a TuningStudy, as `kubectl describe` shows them."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", API_VERSION),
                "kind": involved.get("kind", "TuningStudy"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "count": count,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
        }
        self._call(Request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event))

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            self._call(
                Request(
                    "DELETE",
                    self._path(kind, namespace, name),
                    body={"propagationPolicy": "Background"},
                )
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
