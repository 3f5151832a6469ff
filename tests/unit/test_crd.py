"""The CRD is generated from the models, committed, and the examples parse into the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from optuna_operator import api, crd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in node.get("properties", {}).items():
            out.extend(_walk(sub, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return out


def test_committed_crd_matches_models() -> None:
    committed = (ROOT / "crds" / crd.CRD_FILE).read_text()
    assert committed == crd.crd_yaml(), "crds/ is stale: run `make crds`"


def test_schema_is_structural() -> None:
    for path, node in _walk(crd.openapi_schema()):
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
            assert banned not in node, f"{path} uses {banned}"


def test_every_spec_field_is_documented() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]
    undocumented = [
        path
        for path, node in _walk(spec, "spec")
        if "properties" in node and not node.get("description")
    ]
    assert undocumented == []


def test_every_status_field_is_documented_for_kubectl_explain() -> None:
    status = crd.openapi_schema()["properties"]["status"]
    # Items of lists and maps are explained by the field that holds them.
    fields = [
        (path, node)
        for path, node in _walk(status, "status")
        if path != "status" and not path.endswith(("[]", "{}"))
    ]
    # Leaves too: `kubectl explain tuningstudy.status.bestTrial` lists each field's text.
    undocumented = [path for path, node in fields if not node.get("description")]
    assert undocumented == []
    assert len(fields) > 30


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    conditions = crd.openapi_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    # The API server requires map keys to be required (or defaulted) in each item.
    assert "type" in conditions["items"]["required"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse_into_models(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    study = api.TuningStudy.model_validate(body)
    assert study.spec.objective.function or study.spec.objective.command


def test_examples_cover_the_promised_kinds() -> None:
    specs = [api.TuningStudy.model_validate(yaml.safe_load(p.read_text())).spec for p in EXAMPLES]
    assert any(s.objective.function and "xgb" in s.objective.function for s in specs)
    assert any(len(s.directions) > 1 for s in specs)
    assert any(
        s.objective.search_space and any(p.when for p in s.objective.search_space) for s in specs
    )
    assert any(
        s.workers.resources and "nvidia.com/gpu" in (s.workers.resources.limits or {})
        for s in specs
    )


def test_printer_columns_show_status_progress_best_age() -> None:
    version = crd.crd_manifest()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:3] == ["Status", "Trials", "Best"] and "Age" in names
    assert version["subresources"] == {"status": {}}
