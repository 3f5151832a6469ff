"""The worker as pods run it: real `python -m optuna_operator.worker` processes, real PostgreSQL.

Each test plays the operator's part (creates the study) and then starts worker processes with
the environment the worker Job gives them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from optuna_operator.api import PARETO_FRONT_LIMIT, Direction, WorkerConfig
from optuna_operator.contract import ExitCode
from optuna_operator.storage.study_store import StoreRegistry
from optuna_operator.worker.settings import WAIT_FOR_SLOTS_ENV

REPO = Path(__file__).resolve().parents[2]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT = {WAIT_FOR_SLOTS_ENV: "1"}

# User code as it would sit in an image's working directory.
OBJECTIVES = """
import os
import time

import optuna


def quick(trial):
    x = trial.suggest_float("x", -10, 10)
    time.sleep(float(os.environ.get("TRIAL_SECONDS", "0.02")))
    return x * x


def steps(trial):
    x = trial.suggest_float("x", 0, 1)
    for step in range(8):
        trial.report(x + 0.01 * step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
        time.sleep(0.01)
    return x


def broken(trial):
    trial.suggest_int("n", 0, 3)
    raise ValueError("bad luck")


def sleepy(trial):
    trial.suggest_float("x", 0, 1)
    time.sleep(60)
    return 0.0


def countdown(trial):
    trial.suggest_float("x", 0, 1)
    return float(20 - trial.number)


def constrained(trial):
    a, b = trial.suggest_float("a", 0, 1), trial.suggest_float("b", 0, 1)
    trial.set_constraint("gap", a - b - 0.3)  # the ideal corner (a high, b low) is infeasible
    return a, b
"""

# The command form of `constrained` above.
CONSTRAINED_COMMAND = """\
import sys
a, b = float(sys.argv[1]), float(sys.argv[2])
print(f"optuna:constraint gap {a - b - 0.3!r}")
print(f"optuna:result {a!r} {b!r}")
"""

# Reports forever-ish and leaves a background grandchild, so only a process-group kill
# leaves nothing behind. Records both pids for the test to check.
PRUNABLE_COMMAND = """\
#!/usr/bin/env bash
sleep 300 &
echo "$$ $!" > "$PID_DIR/$OPTUNA_TRIAL_NUMBER"
for step in 0 1 2 3 4 5 6 7 8 9; do
  echo "optuna:report $step $(awk -v x="$1" -v s="$step" 'BEGIN {print x + s / 100}')"
  sleep 0.05
done
echo "optuna:result $1"
"""


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    name: str

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stderr_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@dataclass
class Bench:
    """Starts workers for one study and reads the study back."""

    storage_url: str
    tmp: Path
    study_name: str = field(default_factory=lambda: f"worker-test-{uuid.uuid4().hex[:10]}")
    workers: list[Worker] = field(default_factory=list)

    def create_study(self, directions: list[Literal["minimize", "maximize"]]) -> optuna.Study:
        return optuna.create_study(
            study_name=self.study_name, storage=self.storage_url, directions=directions
        )

    def config(self, **spec: Any) -> WorkerConfig:
        body: dict[str, Any] = {
            "studyName": self.study_name,
            "directions": ["minimize"],
            "sampler": {"type": "TPE", "seed": 1},
            "pruner": {"type": "None"},
            "heartbeatIntervalSeconds": 5,
        } | spec
        return WorkerConfig.model_validate(body)

    def start(
        self,
        config: WorkerConfig,
        *,
        name: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Worker:
        name = name or f"{self.study_name}-w{len(self.workers)}"
        log = self.tmp / f"{name}.log"
        child_env = {
            **os.environ,
            "OPTUNA_OPERATOR_WORKER_CONFIG": config.model_dump_json(
                by_alias=True, exclude_none=True
            ),
            "OPTUNA_STORAGE_URL": self.storage_url,
            "POD_NAME": name,
            "POD_NAMESPACE": "test",
            **(env or {}),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "optuna_operator.worker"],
                cwd=cwd or self.tmp,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(process, log, name)
        self.workers.append(worker)
        return worker

    def trials(self) -> list[FrozenTrial]:
        study = optuna.load_study(study_name=self.study_name, storage=self.storage_url)
        return study.get_trials(deepcopy=False)

    def wait_all(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for worker in self.workers:
            try:
                codes.append(worker.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{worker.name} still running; log:\n{worker.log.read_text()[-3000:]}")
        return codes

    def kill_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


def states(trials: list[FrozenTrial]) -> Counter[TrialState]:
    return Counter(t.state for t in trials)


def finished(trials: list[FrozenTrial]) -> int:
    return sum(1 for t in trials if t.state in FINISHED)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for init to reap it (SIGKILL was delivered)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_trial_running_on(bench: Bench, worker: Worker) -> FrozenTrial:
    """A trial RUNNING on `worker` and past its suggest call (a retry has params to copy)."""

    def running() -> FrozenTrial | None:
        for trial in bench.trials():
            on_worker = trial.user_attrs.get("worker") == f"{worker.name}/0"
            if trial.state == TrialState.RUNNING and on_worker and trial.params:
                return trial
        return None

    found: FrozenTrial = wait_for(running, 30, f"a trial running on {worker.name}")
    return found


@pytest.fixture
def bench(storage_url: str, tmp_path: Path) -> Iterator[Bench]:
    (tmp_path / "objectives.py").write_text(textwrap.dedent(OBJECTIVES))
    created = Bench(storage_url, tmp_path)
    try:
        yield created
    finally:
        created.kill_all()


def test_four_workers_share_one_budget(bench: Bench) -> None:
    budget = 40
    bench.create_study(["minimize"])
    config = bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    started = time.monotonic()
    for _ in range(4):
        bench.start(config)
    assert bench.wait_all(timeout=60) == [0, 0, 0, 0]
    elapsed = time.monotonic() - started
    trials = bench.trials()
    # The exact budget: slots are claimed under the study row's lock (storage/worker_storage.py).
    assert finished(trials) == budget, states(trials)
    assert states(trials)[TrialState.FAIL] == 0
    # Every worker took part, and each with its own seed (no duplicated suggestions).
    assert {t.user_attrs["worker"] for t in trials} == {f"{w.name}/0" for w in bench.workers}
    assert len({t.params["x"] for t in trials}) == len(trials)
    print(
        f"\n4 workers: {len(trials)} trials in {elapsed:.1f} s incl. start-up "
        f"({len(trials) / elapsed:.1f} trials/s)"
    )

    # A worker that starts after the budget is met runs no trial and exits 0.
    late = bench.start(config)
    assert late.wait(timeout=30) == 0
    assert len(bench.trials()) == len(trials)


def test_killed_worker_trial_is_failed_and_retried(bench: Bench) -> None:
    budget = 60
    bench.create_study(["minimize"])
    config = bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    # The victim's trials outlast the test: the trial seen RUNNING below is still running
    # when the SIGKILL lands (with short trials it could finish in between, a race that
    # failed 2 runs in 7).
    victim = bench.start(config, name=f"{bench.study_name}-victim", env={"TRIAL_SECONDS": "600"})
    # Survivors that wait for slots (WAIT_FOR_SLOTS_ENV): by default they would leave once
    # the killed trial holds the last slot, and the operator would start workers again.
    survivors = [bench.start(config, env={"TRIAL_SECONDS": "0.3", **WAIT}) for _ in range(2)]

    killed = wait_for_trial_running_on(bench, victim)
    completed_before = {t.number for t in bench.trials() if t.state == TrialState.COMPLETE}
    victim.process.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL

    for worker in survivors:
        assert worker.wait(timeout=90) == 0
    trials = {t.number: t for t in bench.trials()}
    # Heartbeat lost for 2 x 5 s: another worker failed the trial and enqueued a retry.
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[killed.number].params == killed.params
    assert all(trials[n].state == TrialState.COMPLETE for n in completed_before)
    assert finished(list(trials.values())) == budget


def test_exact_budget_with_four_workers_and_one_killed(bench: Bench) -> None:
    """COMPLETE + PRUNED == budget.trials, never more, with 4 workers racing for the last
    slots; survivors told to wait for slots (WAIT_FOR_SLOTS_ENV) wait for the slot a live
    trial holds, and get it once its worker is SIGKILLed and its heartbeat goes stale."""
    budget = 16
    bench.create_study(["minimize"])
    config = bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    # The victim's trial outlasts the test: it holds a slot until it is failed as stale.
    victim = bench.start(config, name=f"{bench.study_name}-victim", env={"TRIAL_SECONDS": "600"})
    killed = wait_for_trial_running_on(bench, victim)
    survivors = [bench.start(config, env={"TRIAL_SECONDS": "0.05", **WAIT}) for _ in range(3)]

    # Budget - 1 slots finish quickly; the last one is held by the victim's trial, alive, so
    # every survivor comes to wait for it (killed only then: a kill before the survivors
    # start could go stale while they are still importing on a busy machine).
    def all_waiting() -> bool:
        logs = [w.log.read_text() for w in survivors]
        return all("trial slots are running or finished; waiting" in log for log in logs)

    wait_for(all_waiting, 90, "every survivor to wait for a slot")
    assert finished(bench.trials()) == budget - 1
    victim.process.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    # Heartbeats every 5 s: stale after 10 s; a survivor fails it and runs its retry.
    assert [w.process.poll() for w in survivors] == [None, None, None]
    for worker in survivors:
        assert worker.wait(timeout=90) == 0
    trials = {t.number: t for t in bench.trials()}
    assert finished(list(trials.values())) == budget, states(list(trials.values()))
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    logs = [w.log.read_text()[-3000:] for w in survivors]
    assert [r.state for r in retries] == [TrialState.COMPLETE], logs
    assert states(list(trials.values()))[TrialState.RUNNING] == 0


def test_workers_leave_when_live_trials_hold_the_last_slots(bench: Bench) -> None:
    """Once running + finished trials fill the budget, waiting workers exit 0 at once (their
    pods end and their GPUs free); a trial that fails afterwards goes to a worker started
    again (here by the test, in a cluster by the operator) and the budget stays exact."""
    budget = 3
    bench.create_study(["minimize"])
    config = bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    slow = bench.start(config, name=f"{bench.study_name}-slow", env={"TRIAL_SECONDS": "600"})
    held = wait_for_trial_running_on(bench, slow)
    quick = [bench.start(config) for _ in range(2)]
    for worker in quick:
        assert worker.wait(timeout=60) == 0
    # The slow worker's trial is alive (its heartbeat goes on), so no slot could come.
    assert slow.process.poll() is None
    assert finished(bench.trials()) == budget - 1
    left = [w for w in quick if "no slot can come to this worker" in w.log.read_text()]
    assert left, [w.log.read_text()[-2000:] for w in quick]

    slow.process.send_signal(signal.SIGTERM)
    assert slow.wait(timeout=20) == ExitCode.INTERRUPTED
    again = bench.start(config)
    assert again.wait(timeout=60) == 0
    trials = {t.number: t for t in bench.trials()}
    assert finished(list(trials.values())) == budget, states(list(trials.values()))
    assert trials[held.number].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == held.number]
    assert retry.state == TrialState.COMPLETE and retry.params == held.params


def _bare_ask(bench: Bench) -> FrozenTrial:
    """A trial as a notebook's `ask()` leaves it: RUNNING, sampled, never told, and without
    a heartbeat (the plain storage URL has none)."""
    study = optuna.load_study(study_name=bench.study_name, storage=bench.storage_url)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(-10, 10)})
    frozen: FrozenTrial = study._storage.get_trial(trial._trial_id)
    return frozen


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_bare_ask_trial_is_failed_and_retried_by_the_operators_scan(bench: Bench) -> None:
    """The slot of a trial that never had a heartbeat frees: the operator's stale scan fails
    it and enqueues its retry, and the study reaches its exact budget."""
    budget = 4
    bench.create_study(["minimize"])
    bare = _bare_ask(bench)
    config = bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    assert bench.start(config).wait(timeout=60) == 0

    stores = StoreRegistry()
    try:

        def scanned_and_failed() -> bool:
            stores.fail_stale_trials(bench.storage_url, bench.study_name, heartbeat_interval=5)
            return {t.number: t for t in bench.trials()}[bare.number].state == TrialState.FAIL

        wait_for(scanned_and_failed, 60, "the operator's scan to fail the bare ask() trial")
    finally:
        stores.close()
    # Started again, as the operator does once the study has work and no workers.
    assert bench.start(config).wait(timeout=60) == 0
    trials = bench.trials()
    assert finished(trials) == budget, states(trials)
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == bare.number]
    assert retry.state == TrialState.COMPLETE and retry.params == bare.params
    assert states(trials)[TrialState.RUNNING] == 0


def test_a_bare_ask_trial_is_failed_and_retried_by_a_waiting_workers_scan(bench: Bench) -> None:
    budget = 3
    bench.create_study(["minimize"])
    bare = _bare_ask(bench)
    config = bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    assert bench.start(config, env=WAIT).wait(timeout=90) == 0
    trials = bench.trials()
    assert finished(trials) == budget, states(trials)
    assert {t.number: t for t in trials}[bare.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == bare.number]
    assert retry.state == TrialState.COMPLETE and retry.params == bare.params


def test_exact_budget_when_failed_trials_number_past_it(bench: Bench) -> None:
    """A new trial numbered below the budget starts without counting slots; past it (here
    every new trial: failed trials and a waiting one come first) the count decides, and the
    waiting trial still gets its slot before any new one."""
    budget = 5
    study = bench.create_study(["minimize"])
    distribution = optuna.distributions.FloatDistribution(-10, 10)
    for _ in range(4):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL, params={"x": 1.0}, distributions={"x": distribution}
            )
        )
    study.enqueue_trial({"x": 3.0})
    config = bench.config(objective={"function": "objectives:quick"}, budget={"trials": budget})
    for _ in range(2):
        bench.start(config, env={"TRIAL_SECONDS": "0.05"})
    assert bench.wait_all(timeout=60) == [0, 0]
    trials = bench.trials()
    assert states(trials) == Counter({TrialState.FAIL: 4, TrialState.COMPLETE: budget})
    [enqueued] = [t for t in trials if t.number == 4]
    assert enqueued.state == TrialState.COMPLETE and enqueued.params == {"x": 3.0}


def test_function_objective_is_pruned(bench: Bench) -> None:
    bench.create_study(["minimize"])
    config = bench.config(
        objective={"function": "objectives:steps"},
        budget={"trials": 30},
        sampler={"type": "Random", "seed": 3},
        pruner={"type": "Median", "median": {"nStartupTrials": 3, "nWarmupSteps": 1}},
    )
    bench.start(config)
    bench.start(config)
    assert bench.wait_all(timeout=60) == [0, 0]
    counts = states(bench.trials())
    assert counts[TrialState.PRUNED] > 0 and counts[TrialState.COMPLETE] > 0, counts
    assert counts[TrialState.PRUNED] + counts[TrialState.COMPLETE] == 30


def test_command_objective_is_pruned_and_its_process_tree_stopped(bench: Bench) -> None:
    script = bench.tmp / "prunable.sh"
    script.write_text(PRUNABLE_COMMAND)
    script.chmod(0o755)
    pid_dir = bench.tmp / "pids"
    pid_dir.mkdir()
    bench.create_study(["minimize"])
    config = bench.config(
        objective={
            "command": [str(script), "{x}"],
            "searchSpace": [{"name": "x", "float": {"low": 0.0, "high": 1.0}}],
            "trialTimeoutSeconds": 30,
        },
        budget={"trials": 16},
        sampler={"type": "Random", "seed": 5},
        pruner={"type": "Median", "median": {"nStartupTrials": 3, "nWarmupSteps": 1}},
    )
    bench.start(config, env={"PID_DIR": str(pid_dir)})
    bench.start(config, env={"PID_DIR": str(pid_dir)})
    assert bench.wait_all(timeout=90) == [0, 0]
    trials = bench.trials()
    counts = states(trials)
    assert counts[TrialState.PRUNED] > 0 and counts[TrialState.COMPLETE] > 0, counts
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.intermediate_values for t in pruned)
    for path in pid_dir.iterdir():
        for pid in map(int, path.read_text().split()):
            assert not alive(pid), f"trial {path.name}: pid {pid} outlived its trial"


def test_conditional_command_search_space(bench: Bench) -> None:
    """The bash+awk example: momentum exists exactly when optimizer is sgd."""
    bench.create_study(["minimize"])
    config = bench.config(
        objective={
            "command": [
                "bash",
                "examples/command/objective.sh",
                "--optimizer",
                "{optimizer}",
                "--lr",
                "{lr}",
            ],
            "searchSpace": [
                {"name": "optimizer", "categorical": {"choices": ["sgd", "adam"]}},
                {"name": "lr", "float": {"low": 1e-4, "high": 1.0, "log": True}},
                {
                    "name": "momentum",
                    "float": {"low": 0.0, "high": 0.99},
                    "when": {"param": "optimizer", "in": ["sgd"]},
                },
                {"name": "layers", "int": {"low": 1, "high": 8}},
            ],
        },
        budget={"trials": 24, "maxFailedTrials": 0},
        sampler={"type": "TPE", "seed": 1, "tpe": {"nStartupTrials": 8}},
        pruner={"type": "Median", "median": {"nStartupTrials": 5, "nWarmupSteps": 2}},
    )
    env = {"EPOCHS": "8", "EPOCH_SECONDS": "0.02"}
    bench.start(config, cwd=REPO, env=env)
    bench.start(config, cwd=REPO, env=env)
    assert bench.wait_all(timeout=90) == [0, 0]
    trials = bench.trials()
    # The script exits 1 when momentum and optimizer disagree, and maxFailedTrials is 0.
    assert states(trials)[TrialState.FAIL] == 0, [t.user_attrs for t in trials]
    for trial in trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd"), trial.params
    assert {t.params["optimizer"] for t in trials} == {"sgd", "adam"}


def test_import_error_exits_3_with_the_reason_last(bench: Bench) -> None:
    worker = bench.start(
        bench.config(objective={"function": "no_such_module:objective"}, budget={"trials": 1})
    )
    assert worker.wait(timeout=30) == 3
    assert worker.stderr_lines()[-1] == "ModuleNotFoundError: No module named 'no_such_module'"

    missing = bench.start(
        bench.config(
            objective={
                "command": ["no-such-program", "{x}"],
                "searchSpace": [{"name": "x", "int": {"low": 0, "high": 1}}],
            },
            budget={"trials": 1},
        )
    )
    assert missing.wait(timeout=30) == 3
    assert missing.stderr_lines()[-1] == "command not found: 'no-such-program' is not on PATH"


def test_too_many_failures_exit_4(bench: Bench) -> None:
    bench.create_study(["minimize"])
    worker = bench.start(
        bench.config(
            objective={"function": "objectives:broken"}, budget={"trials": 10, "maxFailedTrials": 2}
        )
    )
    assert worker.wait(timeout=30) == 4
    assert "more than budget.maxFailedTrials=2" in worker.stderr_lines()[-1]
    trials = bench.trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["error"] == "ValueError: bad luck" for t in trials)
    # A replacement pod sees the same study and gives up at once.
    again = bench.start(
        bench.config(
            objective={"function": "objectives:broken"}, budget={"trials": 10, "maxFailedTrials": 2}
        )
    )
    assert again.wait(timeout=30) == 4
    assert len(bench.trials()) == 3


def test_failing_command_keeps_its_stderr(bench: Bench) -> None:
    bench.create_study(["minimize"])
    config = bench.config(
        objective={
            "command": [
                "bash",
                "-c",
                "echo starting; echo 'CUDA out of memory' >&2; exit 7",
                "{x}",
            ],
            "searchSpace": [{"name": "x", "int": {"low": 0, "high": 3}}],
        },
        budget={"trials": 5, "maxFailedTrials": 0},
    )
    assert bench.start(config).wait(timeout=30) == 4
    (trial,) = bench.trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"] == "command exited with code 7: CUDA out of memory"
    assert trial.user_attrs["stderr_tail"] == "CUDA out of memory"


def test_goal_stops_the_study(bench: Bench) -> None:
    bench.create_study(["minimize"])
    config = bench.config(
        objective={"function": "objectives:countdown"}, budget={"trials": 1000, "goal": 14}
    )
    bench.start(config)
    bench.start(config)
    assert bench.wait_all(timeout=60) == [0, 0]
    trials = bench.trials()
    # Values are 20 - number: trial 6 reaches 14; the other worker may finish one more.
    assert 7 <= len(trials) <= 8
    assert min(t.value for t in trials if t.value is not None) <= 14


def test_deadline_in_the_past_runs_nothing(bench: Bench) -> None:
    bench.create_study(["minimize"])
    config = bench.config(
        objective={"function": "objectives:quick"},
        budget={"timeoutSeconds": 60},
        deadline=datetime.now(UTC) - timedelta(seconds=1),
    )
    assert bench.start(config).wait(timeout=30) == 0
    assert bench.trials() == []


def test_sigterm_stops_the_command_and_requeues_its_parameters(bench: Bench) -> None:
    pid_file = bench.tmp / "pid"
    bench.create_study(["minimize"])
    config = bench.config(
        objective={
            "command": [
                "bash",
                "-c",
                f"echo $$ > {pid_file}; echo optuna:report 0 1.0; sleep 60; echo optuna:result 1",
                "{lr}",
            ],
            "searchSpace": [{"name": "lr", "float": {"low": 0.001, "high": 0.1, "log": True}}],
        },
        budget={"trials": 5},
    )
    worker = bench.start(config)
    running = wait_for(
        lambda: [
            t for t in bench.trials() if t.state == TrialState.RUNNING and t.intermediate_values
        ],
        30,
        "the command to report",
    )[0]
    child = int(pid_file.read_text())
    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    # Not 0: the study is not done, so the Job must start a replacement (issue 12, item 4).
    assert worker.wait(timeout=20) == ExitCode.INTERRUPTED
    assert time.monotonic() - stopped_at < 10  # inside a default 30 s grace period
    assert not alive(child)
    trials = {t.number: t for t in bench.trials()}
    assert trials[running.number].state == TrialState.FAIL
    assert "interrupted" in trials[running.number].user_attrs
    (retry,) = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert retry.user_attrs["retry_of"] == running.number
    assert retry.system_attrs["fixed_params"] == running.params


def test_processes_per_pod(bench: Bench) -> None:
    bench.create_study(["minimize"])
    config = bench.config(
        objective={"function": "objectives:quick"}, budget={"trials": 12}, processesPerPod=2
    )
    worker = bench.start(
        config, env={"CUDA_VISIBLE_DEVICES": "0,1", "OPTUNA_OPERATOR_WORKER_INDEX": "0"}
    )
    assert worker.wait(timeout=60) == 0
    trials = bench.trials()
    assert 12 <= finished(trials) <= 13
    assert {t.user_attrs["worker"] for t in trials} == {f"{worker.name}/0", f"{worker.name}/1"}
    log = worker.log.read_text()
    assert "CUDA_VISIBLE_DEVICES=0" in log and "CUDA_VISIBLE_DEVICES=1" in log


def test_sigterm_interrupts_function_trials_in_every_process(bench: Bench) -> None:
    bench.create_study(["minimize"])
    config = bench.config(
        objective={"function": "objectives:sleepy"}, budget={"trials": 4}, processesPerPod=2
    )
    worker = bench.start(config)
    # Running and past suggest: a trial stopped before it sampled has nothing to re-enqueue
    # (seen RUNNING without params, it failed 1 run in 4 under load).
    running = wait_for(
        lambda: (
            (r := [t for t in bench.trials() if t.state == TrialState.RUNNING and t.params])
            and len(r) == 2
            and r
        ),
        60,
        "both processes to run a trial past its suggest call",
    )
    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == ExitCode.INTERRUPTED
    assert time.monotonic() - stopped_at < 10
    trials = {t.number: t for t in bench.trials()}
    for trial in running:
        assert trials[trial.number].state == TrialState.FAIL
        assert trials[trial.number].user_attrs["interrupted"] == "SIGTERM"
    retries = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == sorted(t.number for t in running)


@pytest.mark.parametrize(
    ("function", "directions", "sampler"),
    [
        ("examples.xgb_regression:objective", ["maximize"], {"type": "TPE", "seed": 1}),
        (
            "examples.multi_objective:objective",
            ["maximize", "minimize"],
            {"type": "NSGAII", "seed": 1, "nsga": {"populationSize": 4}},
        ),
    ],
)
def test_python_examples_run_through_the_worker(
    bench: Bench,
    function: str,
    directions: list[Literal["minimize", "maximize"]],
    sampler: dict[str, Any],
) -> None:
    bench.create_study(directions)
    config = bench.config(
        objective={"function": function},
        directions=directions,
        sampler=sampler,
        budget={"trials": 4, "maxFailedTrials": 0},
    )
    assert bench.start(config, cwd=REPO).wait(timeout=60) == 0
    trials = bench.trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all(t.values is not None and len(t.values) == len(directions) for t in trials)
    if "xgb" in function:  # dropout parameters exist exactly for dart boosters
        for trial in trials:
            has_dart = {"rate_drop", "skip_drop"} <= trial.params.keys()
            assert has_dart == (trial.params["booster"] == "dart")


@pytest.mark.parametrize(
    ("kind", "sampler"),
    [
        ("function", {"type": "NSGAII", "seed": 2, "nsga": {"populationSize": 8}}),
        ("command", {"type": "TPE", "seed": 2, "tpe": {"nStartupTrials": 8}}),
    ],
)
def test_constraints_reach_the_sampler_and_the_pareto_front(
    bench: Bench, kind: str, sampler: dict[str, Any]
) -> None:
    """Constraints set through the worker (its storage, its slot claim) stay on the trials;
    Optuna's feasible front and the operator's status front agree."""
    script = bench.tmp / "constrained.py"
    script.write_text(CONSTRAINED_COMMAND)
    space = [{"name": n, "float": {"low": 0.0, "high": 1.0}} for n in ("a", "b")]
    objective: dict[str, Any] = {
        "function": {"function": "objectives:constrained"},
        "command": {"command": [sys.executable, str(script), "{a}", "{b}"], "searchSpace": space},
    }[kind]
    directions: list[Literal["minimize", "maximize"]] = ["maximize", "minimize"]
    study = bench.create_study(directions)
    # The corner that dominates every other trial, but infeasible; and a feasible trial.
    study.enqueue_trial({"a": 1.0, "b": 0.0})
    study.enqueue_trial({"a": 0.5, "b": 0.4})
    config = bench.config(
        objective=objective,
        directions=directions,
        sampler=sampler,
        budget={"trials": 24, "maxFailedTrials": 0},
    )
    bench.start(config)
    bench.start(config)
    assert bench.wait_all(timeout=120) == [0, 0]
    trials = bench.trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 24
    for trial in trials:
        assert trial.constraints == {"gap": trial.params["a"] - trial.params["b"] - 0.3}
    infeasible = {t.number for t in trials if t.constraints["gap"] > 0}
    best = {t.number for t in study.best_trials}
    assert 0 in infeasible and best and not best & infeasible
    stores = StoreRegistry()
    try:
        handle = stores.ensure_study(
            bench.storage_url, bench.study_name, [Direction(d) for d in directions], None, None, {}
        )
        front = {t.number for t in stores.summarize(bench.storage_url, handle).pareto_front}
    finally:
        stores.close()
    assert front <= best and len(front) == min(len(best), PARETO_FRONT_LIMIT)
