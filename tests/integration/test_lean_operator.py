"""The operator as it runs in production never loads Optuna or numpy (issue 24: RSS below
150 MiB at 1,000 studies): a study created, run to the end (importances included) leaves no
numpy mapped in the operator process; the Optuna child that created it exits once idle."""

from __future__ import annotations

from pathlib import Path

from tests.integration.studies import OperatorProcess, Studies, study_body, wait_for

from optuna_operator.storage.optuna_child import IDLE_SECONDS


def _optuna_children(pid: int) -> list[int]:
    """The operator's Optuna child processes alive now."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"optuna_operator.storage.optuna_child" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_the_operator_process_never_maps_numpy(studies: Studies, operator: OperatorProcess) -> None:
    studies.create(study_body("lean", budget={"trials": 6}))
    done = studies.wait_phase("lean", "Succeeded")
    wait_for(
        lambda: studies.status("lean").get("paramImportances"),
        120,
        "the importances (a child process of their own) in the status",
    )
    assert done["trials"]["complete"] == 6
    assert operator.proc is not None
    pid = operator.proc.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    # Optuna is pure Python; numpy's extension modules show that it was imported.
    assert "numpy" not in maps and "sklearn" not in maps
    wait_for(
        lambda: not _optuna_children(pid),
        IDLE_SECONDS + 60,
        "the operator's Optuna child to exit once idle",
    )
