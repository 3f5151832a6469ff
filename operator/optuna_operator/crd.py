"""Generate the TuningStudy CustomResourceDefinition from the pydantic models in `api`.

Pydantic emits JSON Schema (2020-12); the API server wants a *structural* OpenAPI v3
schema: every node typed, no $ref, no null unions, boolean exclusive bounds.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from optuna_operator import api

__all__ = [
    "CRD_FILE",
    "crd_manifest",
    "crd_yaml",
    "openapi_schema",
    "write_crd",
]


CRD_FILE = "tuning.optuna-operator.io_tuningstudies.yaml"

# JSON Schema keywords the structural OpenAPI subset has no use for.
_DROPPED_KEYS = {"title", "$defs", "discriminator"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Trials",
        "type": "string",
        "jsonPath": ".status.progress",
        "description": "Finished (complete + pruned) trials / budget",
    },
    {
        # A string field: the column must also show an infinite best value.
        "name": "Best",
        "type": "string",
        "jsonPath": ".status.bestValue",
        "description": "Best objective value (first direction)",
    },
    {"name": "Workers", "type": "integer", "jsonPath": ".status.workers.active", "priority": 1},
    {"name": "Study", "type": "string", "jsonPath": ".status.studyName", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and turn JSON Schema idioms into structural OpenAPI."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node

    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        merged = _resolve(target, defs)
        merged.update(_resolve(siblings, defs))
        return _merge_validations(merged, target, siblings)

    # `X | None` -> X: absence means null in Kubernetes objects.
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                del rest["default"]
            inner = _resolve(options[0], defs)
            validations = inner.get("x-kubernetes-validations", []) + rest.pop(
                "x-kubernetes-validations", []
            )
            inner.update(_resolve(rest, defs))
            if validations:
                inner["x-kubernetes-validations"] = validations
            return inner
        raise ValueError(f"unions are not structural; use WithJsonSchema: {node}")

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key in ("properties", "patternProperties"):
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key == "default" and value is None:
            continue
        else:
            out[key] = _resolve(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    if out.get("type") == "integer":
        out.setdefault("format", "int64")
    return out


def _merge_validations(merged: dict[str, Any], *parts: dict[str, Any]) -> dict[str, Any]:
    rules: list[Any] = []
    for part in parts:
        for rule in part.get("x-kubernetes-validations", []):
            if rule not in rules:
                rules.append(rule)
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _strip_status_defaults(node: Any) -> Any:
    """Status is written by the operator only; defaults there would mask missing writes."""
    if isinstance(node, dict):
        return {k: _strip_status_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_status_defaults(v) for v in node]
    return node


def _model_schema(model: type[api.Model]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    resolved: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    return resolved


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the TuningStudy CRD."""
    spec = _model_schema(api.TuningStudySpec)
    status = _strip_status_defaults(_model_schema(api.TuningStudyStatus))
    return {
        "type": "object",
        "description": "TuningStudy runs an Optuna hyperparameter study on Kubernetes: a "
        "study in PostgreSQL, a Job of worker pods that share it, and a dashboard.",
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {api.MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {api.MAX_NAME_LENGTH} characters: "
                "it names the worker Job, whose pods carry it in a label",
            }
        ],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.KIND.lower(),
                "shortNames": ["ts"],
                "categories": ["optuna", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `make crds` from operator/optuna_operator/api/. Do not edit.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100)


def write_crd(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CRD_FILE
    path.write_text(crd_yaml())
    return path
