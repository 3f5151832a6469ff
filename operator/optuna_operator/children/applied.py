"""The digest a child carries of the manifest it was built from: a child whose digest
matches the desired one is not sent again (the comparison is reconcile/decide.py's)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "APPLIED_HASH_ANNOTATION",
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
