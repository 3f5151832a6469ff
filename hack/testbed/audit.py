"""The API server's audit log of list and watch requests: which client asked for which
resource with which selectors. Tests read it to prove what a watch asks the server for
(a selector applied by the client is invisible here; one the server applies is in the URI)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

__all__ = ["AUDIT_LOG", "AUDIT_POLICY", "AuditedRequest", "audited_requests"]

# Under the bed's logs/, beside kube-apiserver.log.
AUDIT_LOG = "kube-apiserver-audit.log"

# Metadata of every list and watch (the URI with its query, the user agent), nothing else:
# a few lines per informer start, so it can stay on in every bed.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["list", "watch"]},
        {"level": "None"},
    ],
}


@dataclass(frozen=True)
class AuditedRequest:
    """One list or watch request as the API server saw it."""

    verb: str
    resource: str
    api_group: str
    namespace: str | None
    user_agent: str
    label_selector: str | None
    uri: str


def _request(event: dict[str, object]) -> AuditedRequest | None:
    ref = event.get("objectRef")
    if not isinstance(ref, dict):
        return None
    uri = str(event.get("requestURI", ""))
    query = parse_qs(urlsplit(uri).query)
    return AuditedRequest(
        verb=str(event.get("verb")),
        resource=str(ref.get("resource")),
        api_group=str(ref.get("apiGroup") or ""),
        namespace=str(ref["namespace"]) if ref.get("namespace") else None,
        user_agent=str(event.get("userAgent", "")),
        label_selector=query["labelSelector"][0] if "labelSelector" in query else None,
        uri=uri,
    )


def audited_requests(path: Path) -> list[AuditedRequest]:
    """Every list and watch request logged so far, oldest first (one per request: the
    stage that logged it first)."""
    seen: set[str] = set()
    requests = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        audit_id = str(event.get("auditID"))
        request = _request(event)
        if request is None or audit_id in seen:
            continue
        seen.add(audit_id)
        requests.append(request)
    return requests
