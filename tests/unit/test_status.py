"""The status the operator writes is JSON, whatever values the objective returned."""

from __future__ import annotations

import json
import math

import pytest

from optuna_operator import crd
from optuna_operator.api import BestTrial, TuningStudyStatus

INF = float("inf")


def status(values: list[float], importances: dict[str, float] | None = None) -> TuningStudyStatus:
    return TuningStudyStatus(
        phase="Running",
        best_trial=BestTrial(number=3, values=values, params={"x": 1.5}),
        pareto_front=[BestTrial(number=3, values=values), BestTrial(number=4, values=[1.0, 2.0])],
        param_importances=importances,
    )


@pytest.mark.parametrize(
    ("value", "wire"), [(INF, "Infinity"), (-INF, "-Infinity"), (math.nan, "NaN")]
)
def test_non_finite_values_travel_as_strings(value: float, wire: str) -> None:
    body = status([value, 0.5]).to_wire()
    json.dumps(body, allow_nan=False)  # raises on Infinity or NaN
    assert body["bestTrial"]["values"] == [wire, 0.5]
    assert body["paretoFront"][0]["values"] == [wire, 0.5]
    assert body["bestValue"] == wire


def test_status_read_back_from_the_api_has_floats_again() -> None:
    body = json.loads(json.dumps(status([-INF]).to_wire(), allow_nan=False))
    parsed = TuningStudyStatus.model_validate(body)
    assert parsed.best_trial is not None and parsed.best_trial.values == [-INF]
    assert parsed.to_wire() == body


def test_finite_values_stay_numbers_and_kubectl_shows_them_in_full() -> None:
    body = status([-3222.954746318588]).to_wire()
    assert body["bestTrial"]["values"] == [-3222.954746318588]
    assert body["bestValue"] == "-3222.954746318588"
    assert "bestValue" not in TuningStudyStatus(phase="Running").to_wire()


def test_importances_that_are_not_numbers_are_left_out() -> None:
    body = status([1.0], {"x": math.nan, "y": 0.25}).to_wire()
    assert body["paramImportances"] == {"y": 0.25}


def test_the_schema_accepts_strings_as_values_and_the_column_shows_them() -> None:
    schema = crd.openapi_schema()["properties"]["status"]["properties"]
    item = schema["bestTrial"]["properties"]["values"]["items"]
    assert item.get("x-kubernetes-preserve-unknown-fields") is True and "type" not in item
    assert schema["bestValue"]["type"] == "string"
    (best,) = [c for c in crd.PRINTER_COLUMNS if c["name"] == "Best"]
    assert (best["type"], best["jsonPath"]) == ("string", ".status.bestValue")
