"""The dashboard's readiness probe costs the database nothing: optuna-dashboard (the version
the dashboard image pins) answers the probed path without a statement, while / would check
the storage's schema version on every probe."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna_dashboard import wsgi
from sqlalchemy import event

from optuna_operator.children.manifests import DASHBOARD_PROBE_PATH


def _statements_for(storage: optuna.storages.RDBStorage, path: str) -> tuple[str, int]:
    """The HTTP status of GET `path` and how many SQL statements it ran."""
    app = wsgi(storage)
    counted: list[str] = []
    listener = lambda *args: counted.append(args[2])  # noqa: E731 (conn, cursor, statement, ...)
    event.listen(storage.engine, "before_cursor_execute", listener)
    status: list[str] = []
    environ: dict[str, Any] = {"PATH_INFO": path, "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)  # a GET as a probe sends it, no Accept-Encoding
    try:
        b"".join(app(environ, lambda s, headers, *exc_info: status.append(s)))
    finally:
        event.remove(storage.engine, "before_cursor_execute", listener)
    return status[0], len(counted)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[optuna.storages.RDBStorage]:
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'probe.db'}")
    yield rdb
    rdb.engine.dispose()


def test_the_probed_path_answers_without_touching_the_database(
    storage: optuna.storages.RDBStorage,
) -> None:
    status, statements = _statements_for(storage, DASHBOARD_PROBE_PATH)
    assert status.startswith("200")
    assert statements == 0


def test_the_root_path_would_check_the_schema_on_every_probe(
    storage: optuna.storages.RDBStorage,
) -> None:
    # Why the probe is not on /: if optuna-dashboard stops doing this, / is fine again.
    status, statements = _statements_for(storage, "/")
    assert status.startswith("302")
    assert statements > 0
