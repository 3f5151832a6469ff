"""How a command objective receives parameters and reports values.

Parameters in: `{name}` placeholders in the arguments, OPTUNA_PARAM_<NAME> variables and a
JSON file. Values out: `optuna:report <step> <value>`, `optuna:result <v1> [<v2> ...]` and
`optuna:constraint <name> <value>` lines on stdout, or a JSON result file. A trial is
feasible when every constraint value is <= 0 (Optuna's `Trial.set_constraint`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Constraint",
    "ProtocolError",
    "Report",
    "Result",
    "env_name",
    "format_value",
    "parse_line",
    "parse_result_file",
    "substitute",
]

REPORT_PREFIX = "optuna:report"
RESULT_PREFIX = "optuna:result"
CONSTRAINT_PREFIX = "optuna:constraint"
# `{{name}}` escapes a literal `{name}`; anything else in braces (awk programs, `${VAR}`
# in shell snippets whose VAR is not a parameter) is left alone.
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ProtocolError(ValueError):
    """A malformed protocol line or result file; the trial fails with this message."""


@dataclass(frozen=True)
class Report:
    step: int
    value: float


@dataclass(frozen=True)
class Result:
    values: tuple[float, ...]
    # Only a result file carries these beside the values; stdout has its own lines.
    constraints: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Constraint:
    """One constraint value of the trial: feasible when <= 0."""

    name: str
    value: float


def format_value(value: Any) -> str:
    """One spelling for placeholders and env: JSON-like booleans, shortest exact floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def env_name(name: str) -> str:
    return f"OPTUNA_PARAM_{name.upper()}"


def substitute(args: Sequence[str], params: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Fill `{name}` for every search-space parameter; a skipped one becomes ""."""
    known = set(names)

    def fill(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped is not None:
            return "{" + escaped + "}" if escaped in known else match.group(0)
        if name not in known:
            return match.group(0)
        return format_value(params[name]) if name in params else ""

    return [_PLACEHOLDER.sub(fill, arg) for arg in args]


def parse_line(line: str) -> Report | Result | Constraint | None:
    """A protocol message, or None for ordinary output."""
    text = line.strip()
    if not text.startswith("optuna:"):
        return None
    head, _, rest = text.partition(" ")
    fields = rest.split()
    if head == REPORT_PREFIX:
        if len(fields) != 2:
            raise ProtocolError(f"expected 'optuna:report <step> <value>', got {text!r}")
        try:
            step = int(fields[0])
        except ValueError:
            raise ProtocolError(f"report step must be an integer, got {fields[0]!r}") from None
        if step < 0:
            raise ProtocolError(f"report step must be >= 0, got {step}")
        return Report(step, _number(fields[1], text))
    if head == RESULT_PREFIX:
        if not fields:
            raise ProtocolError(f"expected 'optuna:result <v1> [<v2> ...]', got {text!r}")
        return Result(tuple(_number(f, text) for f in fields))
    if head == CONSTRAINT_PREFIX:
        if len(fields) != 2:
            raise ProtocolError(f"expected 'optuna:constraint <name> <value>', got {text!r}")
        return Constraint(fields[0], _number(fields[1], text))
    return None  # some other "optuna:..." text, e.g. a log line of the user's own


def parse_result_file(text: str) -> Result:
    """`0.93`, `[0.93, 12.5]` or `{"values": [...], "constraints": {"<name>": <value>}}`
    as JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"result file is not JSON: {err}") from None
    constraints: dict[str, float] = {}
    if isinstance(data, dict):
        constraints = _file_constraints(data.get("constraints", {}), text)
        data = data.get("values", data.get("value"))
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ProtocolError("result file holds no values")
    values: list[float] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ProtocolError(f"result file value {item!r} is not a number")
        values.append(_finite(float(item), text))
    return Result(tuple(values), constraints)


def _file_constraints(data: object, text: str) -> dict[str, float]:
    if not isinstance(data, dict):
        raise ProtocolError(f"result file constraints must be an object, got {data!r}")
    constraints: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"result file constraint {name!r} is {value!r}, not a number")
        constraints[name] = _finite(float(value), text)
    return constraints


def _number(field: str, line: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise ProtocolError(f"{field!r} is not a number in {line!r}") from None
    return _finite(value, line)


def _finite(value: float, context: str) -> float:
    if math.isnan(value):
        raise ProtocolError(f"NaN reported in {context!r}")
    return value
