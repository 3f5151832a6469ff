"""What the operator last applied to a child, and whether it must be sent again: shared by
every sender of children (worker Jobs, dashboards)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

__all__ = [
    "APPLIED_HASH_ANNOTATION",
    "ChildAction",
    "applied_hash",
    "child_action",
    "manifest_hash",
    "with_hash",
]

# The digest of the manifest last applied to a child: a child whose annotation matches the
# desired manifest is not sent again (no PATCH per refresh).
APPLIED_HASH_ANNOTATION = "optuna-operator.io/applied-hash"


def manifest_hash(obj: dict[str, Any]) -> str:
    """A short digest of a manifest, stored on the child as APPLIED_HASH_ANNOTATION."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """The manifest carrying its own digest."""
    digest = manifest_hash(obj)
    metadata = {**obj["metadata"]}
    metadata["annotations"] = {**metadata.get("annotations", {}), APPLIED_HASH_ANNOTATION: digest}
    return {**obj, "metadata": metadata}


def applied_hash(obj: dict[str, Any] | None) -> str | None:
    """The digest the operator last applied to `obj`, if any."""
    if obj is None:
        return None
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(APPLIED_HASH_ANNOTATION)
    return str(value) if value is not None else None


# What to do with a child whose manifests are compared by digest.
ChildAction = Literal["none", "apply", "delete"]


def child_action(current: dict[str, Any] | None, desired: list[dict[str, Any]]) -> ChildAction:
    """Apply when what should exist (`desired`, its first object carrying the digest)
    differs from what was last applied to `current`; delete what should not exist. Pure."""
    if not desired:
        return "delete" if current is not None else "none"
    return "apply" if applied_hash(current) != applied_hash(desired[0]) else "none"
