"""Budgets that mean what users think, against the real API server, Job controller and
PostgreSQL of the test bed: budget.timeoutSeconds counts only the time workers run, and
budget.deadline is wall-clock time; status.reason says which budget ended the study."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import optuna
from tests.integration.studies import Studies, study_body

from optuna_operator.contract import STOP_REQUEST_ATTR

SLOW = {"function": "tests.integration.objectives:slow_quadratic"}


def test_time_budget_counts_only_the_time_workers_run(studies: Studies) -> None:
    studies.create(
        study_body(
            "patient",
            objective=SLOW,
            suspend=True,
            budget={"trials": 10000, "timeoutSeconds": 6},
        )
    )
    studies.wait_phase("patient", "Suspended")
    # Longer than the whole budget, suspended: under wall-clock timing the study would end.
    time.sleep(8)
    status = studies.status("patient")
    assert status["phase"] == "Suspended" and not status.get("activeSeconds"), status

    studies.patch_spec("patient", {"suspend": False})
    status = studies.wait_phase("patient", "Succeeded", timeout=240)
    assert status["reason"] == "TimeBudget", status
    assert studies.condition("patient", "Succeeded")["reason"] == "TimeBudgetReached"
    assert status["activeSeconds"] >= 6 and "activeSince" not in status, status
    assert status["trials"]["complete"] < 10000 and status["trials"]["running"] == 0
    # The workers stopped on the operator's request, written for this budget: they exited
    # 0 (the Job completed; nothing was deleted or killed).
    jobs = studies.jobs("patient")
    assert len(jobs) == 1, [j.metadata.name for j in jobs]
    assert jobs[0].status.succeeded and not jobs[0].status.failed, "\n".join(
        [str(jobs[0].status), *studies.events("patient")]
    )
    storage = optuna.storages.get_storage(studies.storage_url())
    attrs = storage.get_study_system_attrs(
        storage.get_study_id_from_name(f"{studies.namespace}.patient")
    )
    assert attrs[STOP_REQUEST_ATTR] == {"reason": "TimeBudget", "timeoutSeconds": 6}


def test_deadline_ends_the_study_at_a_wall_clock_time(studies: Studies) -> None:
    deadline = (datetime.now(UTC) + timedelta(seconds=10)).replace(microsecond=0)
    studies.create(
        study_body(
            "dated",
            objective=SLOW,
            budget={"trials": 10000, "deadline": deadline.isoformat().replace("+00:00", "Z")},
        )
    )
    status = studies.wait_phase("dated", "Succeeded", timeout=240)
    assert status["reason"] == "Deadline", status
    assert studies.condition("dated", "Succeeded")["reason"] == "DeadlineReached"
    assert status["trials"]["complete"] < 10000 and status["trials"]["running"] == 0
