"""contract.redact: a credential goes where it stands (the URL, `password=`, quotes, its own
token), and nothing else in the message changes."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from optuna_operator.contract import redact

SHORT = "postgresql+psycopg2://optuna:p@db:5432/optuna"
LONG_PASSWORD = "Xk9#mQ2$vL8@wR4!s3cr3t"
LONG = f"postgresql+psycopg2://optuna:{quote(LONG_PASSWORD, safe='')}@db.example:5432/optuna"


def test_a_one_letter_password_leaves_the_words_that_contain_it() -> None:
    message = (
        "Cannot use the storage: (psycopg2.OperationalError) connection to server at "
        '"db" (10.0.0.3), port 5432 failed: FATAL: password authentication failed for user '
        '"optuna"'
    )
    assert redact(message, SHORT) == message


def test_a_one_letter_password_goes_where_it_stands() -> None:
    message = f"psycopg2.OperationalError: {SHORT} password=p 'p' \"p\" (p) p"
    assert redact(message, SHORT) == (
        "psycopg2.OperationalError: postgresql://db:5432/optuna password=*** '***' \"***\" "
        "(***) ***"
    )


@pytest.mark.parametrize(
    "template",
    [
        "could not connect to {url}",
        "could not connect to {url}?sslmode=require&application_name=w",
        "dsn: host=db.example user=optuna password={password} dbname=optuna",
        "dsn: host=db.example user=optuna password='{password}' dbname=optuna",
        "authentication failed for password '{password}'",
        'authentication failed for password "{password}"',
        "the password {password} is wrong",
        "the password {encoded} is wrong",
        "{encoded}",
        "{password}",
        "a URL with another host: postgresql://optuna:{encoded}@replica:5432/optuna",
        "decoded in a URL: postgresql://optuna:{password}@replica:5432/optuna",
        '{{"user": "optuna", "password": "{password}"}}',
    ],
)
def test_a_long_password_is_removed_wherever_it_stands(template: str) -> None:
    message = template.format(
        url=LONG, password=LONG_PASSWORD, encoded=quote(LONG_PASSWORD, safe="")
    )
    redacted = redact(message, LONG)
    for piece in ("Xk9", "s3cr3t", "mQ2", "wR4"):
        assert piece not in redacted, redacted
    assert "***" in redacted or "postgresql://db.example:5432/optuna" in redacted


def test_the_url_becomes_where_it_points() -> None:
    assert redact(f"cannot reach {LONG}.", LONG) == (
        "cannot reach postgresql://db.example:5432/optuna."
    )


def test_without_the_url_credentials_in_urls_and_keywords_still_go() -> None:
    assert redact("x postgresql://optuna:hunter2@db/optuna y") == (
        "x postgresql://optuna:***@db/optuna y"
    )
    assert redact("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact("password=hunter2 PASSWD: 'a b' x") == "password=*** PASSWD: '***' x"


def test_what_only_says_a_password_was_sent_stays() -> None:
    message = "(1045, \"Access denied for user 'optuna'@'10.0.0.3' (using password: YES)\")"
    assert redact(message) == message


def test_a_message_without_credentials_is_unchanged() -> None:
    message = "psycopg2.OperationalError: could not translate host name 'db' to address"
    assert redact(message, SHORT) == message
    assert redact(message) == message
