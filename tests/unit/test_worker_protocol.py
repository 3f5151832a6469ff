"""Placeholders, environment spelling and the stdout/result-file protocol (no database)."""

from __future__ import annotations

import pytest

from optuna_operator.worker.protocol import (
    Constraint,
    ProtocolError,
    Report,
    Result,
    env_name,
    format_value,
    parse_line,
    parse_result_file,
    substitute,
)

NAMES = ["lr", "optimizer", "momentum", "use_bn"]


def test_placeholders_are_filled_from_params() -> None:
    params = {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "use_bn": True}
    args = ["train", "--lr={lr}", "{optimizer}", "--m", "{momentum}", "--bn={use_bn}"]
    assert substitute(args, params, NAMES) == [
        "train",
        "--lr=0.01",
        "sgd",
        "--m",
        "0.9",
        "--bn=true",
    ]


def test_skipped_conditional_parameter_becomes_empty_string() -> None:
    assert substitute(["--m={momentum}"], {"lr": 0.1}, NAMES) == ["--m="]


def test_unknown_braces_and_escapes_are_left_for_the_program() -> None:
    args = ["awk", "{print $1}", "${HOME}", "{other}", "{{lr}}", "{{other}}", "{lr}{lr}"]
    assert substitute(args, {"lr": 2}, NAMES) == [
        "awk",
        "{print $1}",
        "${HOME}",
        "{other}",
        "{lr}",
        "{{other}}",
        "22",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "true"), (False, "false"), (3, "3"), (0.1, "0.1"), (1e-05, "1e-05"), ("a b", "a b")],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_env_name_is_upper_case() -> None:
    assert env_name("learning_rate") == "OPTUNA_PARAM_LEARNING_RATE"


def test_protocol_lines() -> None:
    assert parse_line("optuna:report 3 0.25\n") == Report(3, 0.25)
    assert parse_line("  optuna:report 0 -1e3  ") == Report(0, -1000.0)
    assert parse_line("optuna:result 0.9 12.5") == Result((0.9, 12.5))
    assert parse_line("optuna:result inf") == Result((float("inf"),))
    assert parse_line("optuna:constraint memory_gb 1.5") == Constraint("memory_gb", 1.5)
    assert parse_line("optuna:constraint c0 -inf") == Constraint("c0", float("-inf"))
    assert parse_line("epoch 3 loss 0.25") is None
    assert parse_line("optuna:debug anything") is None


@pytest.mark.parametrize(
    "line",
    [
        "optuna:report 3",
        "optuna:report x 0.1",
        "optuna:report -1 0.1",
        "optuna:report 1 abc",
        "optuna:report 1 nan",
        "optuna:result",
        "optuna:result 1 two",
        "optuna:constraint",
        "optuna:constraint memory_gb",
        "optuna:constraint memory_gb 1 2",
        "optuna:constraint memory_gb many",
    ],
)
def test_malformed_protocol_lines_are_errors(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_line(line)


def test_result_file_forms() -> None:
    assert parse_result_file("0.5") == Result((0.5,))
    assert parse_result_file("[0.5, 3]") == Result((0.5, 3.0))
    assert parse_result_file('{"values": [1, 2]}') == Result((1.0, 2.0))
    for bad in ("", "[]", '"x"', "[true]", "NaN"):
        with pytest.raises(ProtocolError):
            parse_result_file(bad)


def test_a_nan_constraint_is_an_error_naming_the_line() -> None:
    with pytest.raises(ProtocolError, match=r"NaN reported in 'optuna:constraint memory_gb nan'"):
        parse_line("optuna:constraint memory_gb nan")


def test_result_file_constraints() -> None:
    text = '{"values": [0.9, 12], "constraints": {"memory_gb": -0.5, "latency_ms": 3}}'
    result = parse_result_file(text)
    assert result == Result((0.9, 12.0), {"memory_gb": -0.5, "latency_ms": 3.0})
    assert parse_result_file("[1, 2]").constraints == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"values": [1], "constraints": [0.5]}', "constraints must be an object"),
        ('{"values": [1], "constraints": {"c": "low"}}', "constraint 'c' is 'low', not a number"),
        ('{"values": [1], "constraints": {"c": true}}', "constraint 'c' is True, not a number"),
        ('{"values": [1], "constraints": {"c": NaN}}', "NaN reported in"),
    ],
)
def test_malformed_result_file_constraints_are_errors(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_result_file(text)
