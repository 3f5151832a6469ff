"""Operator log lines name the object kopf says they are about."""

from __future__ import annotations

import json
import logging

from optuna_operator.logs import JsonFormatter, TextFormatter

REF = {"kind": "TuningStudy", "namespace": "ml", "name": "xgb"}


def record() -> logging.LogRecord:
    rec = logging.LogRecord(
        "kopf.objects", logging.INFO, __file__, 1, "Handler %r ok", ("x",), None
    )
    rec.k8s_ref = REF
    return rec


def test_text_lines_carry_the_object() -> None:
    assert "[TuningStudy ml/xgb] Handler 'x' ok" in TextFormatter().format(record())


def test_json_lines_carry_the_object() -> None:
    entry = json.loads(JsonFormatter().format(record()))
    assert entry["object"] == REF and entry["message"] == "Handler 'x' ok"
