"""The worker's retry loop around database calls: what it retries, for how long, and how it
gives up. The real outage (PostgreSQL stopped mid-study) is tested in tests/integration."""

from __future__ import annotations

import inspect
import re
import threading

import pytest
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage, _cached_storage
from sqlalchemy.exc import IntegrityError, OperationalError

from optuna_operator.storage import outage
from optuna_operator.storage.outage import OutageGuard, StorageUnavailable, is_connection_error
from optuna_operator.worker.runner import _told_elsewhere

URL = "postgresql+psycopg2://optuna:s3cret@db.example:5432/optuna"


def refused() -> Exception:
    # How RDBStorage reports a refused connection: its own error, raised from SQLAlchemy's.
    try:
        try:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        except OperationalError as err:
            raise StorageInternalError("An exception is raised during the commit.") from err
    except StorageInternalError as wrapped:
        return wrapped


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outage, "FIRST_DELAY_SECONDS", 0.0)
    monkeypatch.setattr(outage, "MAX_DELAY_SECONDS", 0.0)


def test_connection_errors_are_told_from_bad_queries() -> None:
    assert is_connection_error(refused())
    assert not is_connection_error(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_connection_error(ValueError("Cannot tell a COMPLETE trial."))


def test_a_call_is_retried_until_the_database_answers() -> None:
    failures = iter([refused(), refused()])

    def call() -> int:
        err = next(failures, None)
        if err is not None:
            raise err
        return 42

    assert OutageGuard(URL, outage_seconds=60).call("get_trial", call, lambda: None) == 42


def test_other_errors_are_not_retried() -> None:
    calls = []

    def call() -> int:
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError):
        OutageGuard(URL, outage_seconds=60).call("get_trial", call, lambda: None)
    assert len(calls) == 1


def test_gives_up_with_one_clear_error_without_the_password() -> None:
    guard = OutageGuard(URL, outage_seconds=0)

    def call() -> int:
        raise refused()

    with pytest.raises(StorageUnavailable) as caught:
        guard.call("record_heartbeat", call, lambda: None)
    text = str(caught.value)
    assert "postgresql://db.example:5432/optuna was unreachable" in text and "s3cret" not in text
    # Later calls fail at once with the same error, so Optuna's cleanup does not wait again.
    with pytest.raises(StorageUnavailable) as again:
        guard.call("get_trial", lambda: 1, lambda: None)
    assert again.value is caught.value


def test_a_stop_request_ends_the_wait() -> None:
    guard = OutageGuard(URL, outage_seconds=3600)
    guard.stop = threading.Event()
    guard.stop.set()

    def call() -> int:
        raise refused()

    with pytest.raises(StorageUnavailable):
        guard.call("get_trial", call, lambda: None)


def test_a_retried_write_that_had_committed_is_not_written_twice() -> None:
    attempts = []

    def call() -> bool:
        attempts.append(1)
        raise refused()

    # on_retry found the write already done (the tell committed, its answer was lost).
    assert OutageGuard(URL, outage_seconds=60).call("tell", call, lambda: True) is True
    assert len(attempts) == 1


def test_every_retried_method_exists_on_rdbstorage() -> None:
    missing = [name for name in outage.RETRIED_METHODS if not hasattr(RDBStorage, name)]
    assert missing == []


def test_a_trial_failed_as_stale_is_recognised_behind_optunas_assertion() -> None:
    # Optuna's _run_trial: the tell raises, then its `finally` asserts (the objective had
    # returned a value, so no branch logs the failure) and that AssertionError is what
    # leaves optimize().
    def run_trial() -> None:
        try:
            raise UpdateFinishedTrialError("Trial#7 has already finished and can not be updated.")
        finally:
            raise AssertionError("Should not reach.")

    with pytest.raises(AssertionError) as caught:
        run_trial()
    assert _told_elsewhere(caught.value)
    assert _told_elsewhere(ValueError("Cannot tell a FAIL trial."))
    assert not _told_elsewhere(AssertionError("Should not reach."))
    assert not _told_elsewhere(ValueError("The value nan is not acceptable."))


def test_every_database_call_of_optunas_cached_storage_is_retried() -> None:
    # _CachedStorage (what optuna.load_study wraps an RDBStorage in) calls some private
    # methods of its backend instead of the public ones; an Optuna upgrade may add more.
    source = inspect.getsource(_cached_storage)
    called = set(re.findall(r"_backend\.([a-zA-Z_]+)\(", source))
    no_database = {
        "get_heartbeat_interval",
        "get_heartbeat_stale_trial_callback",
        "create_new_study",  # the operator creates studies, workers never do
        "delete_study",
    }
    assert called - no_database - set(outage.RETRIED_METHODS) == set()
