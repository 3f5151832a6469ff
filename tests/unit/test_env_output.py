"""`best -o env`: output a shell evaluates without running anything a study's names or
values carry, and that refuses (exit 2, nothing on stdout) a name no variable can take."""

from __future__ import annotations

import shutil
import string
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from optuna_operator import cli
from optuna_operator.client import StudyView
from optuna_operator.formatting import EnvOutputError, best_output

SHELLS = [s for s in ("bash", "dash", "zsh") if shutil.which(s)]


def view(params: dict[str, Any], metric_names: list[str] | None = None) -> StudyView:
    """A study whose best trial has these params; metric_names bypass validation (the CRD may
    refuse control characters in them; what the CLI prints must not depend on that)."""
    obj = {
        "apiVersion": "tuning.optuna-operator.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "quad", "namespace": "team-a"},
        "spec": {
            "directions": ["minimize"],
            "metricNames": ["loss"],
            "objective": {"function": "examples.quad:objective"},
            "budget": {"trials": 10},
        },
        "status": {
            "phase": "Running",
            "studyName": "team-a.quad",
            "bestTrial": {"number": 3, "values": [0.25], "params": params},
        },
    }
    study = StudyView.from_api(obj).study
    if metric_names:
        spec = study.spec.model_copy(update={"metric_names": metric_names})
        study = study.model_copy(update={"spec": spec})
    return StudyView(study, datetime(2026, 1, 1, tzinfo=UTC))


def hostile(pwned: Path) -> list[str]:
    """Values that run `touch PWNED` if any of them reaches a shell unquoted."""
    p = str(pwned)
    return [
        f"0.1\ntouch {p}",
        f"$(touch {p})",
        f"`touch {p}`",
        f"x; touch {p}; echo",
        f"x' ; touch {p} ; echo '",
        f'x" ; touch {p} ; echo "',
        f'it\'s "quoted" $HOME \\ ${{IFS}} \\$(touch {p})',
        f"\\\ntouch {p}\n",
        f"x\r\ntouch {p} &\n",
        f"x | tee {p}",
        f"> {p}",
        f"{p}*?[a]~",
        "",
        "naïve ∑ 字",
    ]


def evaluate(shell: str, output: str, cwd: Path) -> dict[str, str]:
    """`eval "$OUT"` in a fresh shell, then its environment, NUL-separated (values with
    newlines come back whole)."""
    done = subprocess.run(
        [shell, "-c", 'eval "$OUT"; env -0'],
        env={"OUT": output, "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
        cwd=cwd,
        capture_output=True,
        check=True,
    )
    pairs = (item.split(b"=", 1) for item in done.stdout.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_values_come_back_unchanged_and_run_nothing(shell: str, tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    pwned = tmp_path / "pwned"
    values = hostile(pwned)
    params: dict[str, Any] = {f"p{i}": v for i, v in enumerate(values)}
    params |= {"lr": 0.05, "depth": 7, "use_gpu": True}
    output = best_output(view(params), "env", prefix="HP_")

    env = evaluate(shell, output, work)

    assert not pwned.exists()
    assert list(work.iterdir()) == []
    for i, value in enumerate(values):
        assert env[f"HP_P{i}"] == value
    assert (env["HP_LR"], env["HP_DEPTH"], env["HP_USE_GPU"]) == ("0.05", "7", "true")


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_names_become_identifiers_and_run_nothing(shell: str, tmp_path: Path) -> None:
    # Relative paths: the shell runs in tmp_path, which must stay empty.
    names = {
        "a\ntouch pwned": "A_TOUCH_PWNED",
        "b$(touch pwned)": "B__TOUCH_PWNED_",
        "c`touch pwned`": "C_TOUCH_PWNED_",
        "d;touch pwned;": "D_TOUCH_PWNED_",
        "e'\"=x": "E___X",
        "f>pwned": "F_PWNED",
        "layer.width": "LAYER_WIDTH",
        "naïve": "NA_VE",
    }
    params = {name: f"value of {name}" for name in names}
    output = best_output(view(params), "env")

    env = evaluate(shell, output, tmp_path)

    assert list(tmp_path.iterdir()) == []
    for name, mapped in names.items():
        assert env[mapped] == f"value of {name}"


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_metric_names_stay_in_the_comment(shell: str, tmp_path: Path) -> None:
    # Metric names appear only in the first line, a comment; they must not end it early, nor
    # do anything where `#` starts no comment (interactive zsh): relative paths, tmp_path empty.
    for metric in (
        "x\ntouch pwned #",
        "x\ntouch pwned",
        "$(touch pwned)",
        "`touch pwned`;touch pwned",
        "a>pwned",
    ):
        output = best_output(view({"x": 1.5}, [metric]), "env")
        first, *rest = output.splitlines()
        assert first.startswith("# team-a/quad: best trial 3: ")
        assert set(first) <= set("# -/:=._+") | set(string.ascii_letters + string.digits)
        assert rest == ["export X=1.5"]
        assert evaluate(shell, output, tmp_path)["X"] == "1.5"
        assert list(tmp_path.iterdir()) == []


def test_names_are_upper_case_identifiers_with_the_prefix() -> None:
    output = best_output(view({"lr": 0.05, "layer.width": 64, "n-estimators": 10}), "env", "hp_")
    assert output.splitlines()[1:] == [
        "export HP_LAYER_WIDTH=64",
        "export HP_LR=0.05",
        "export HP_N_ESTIMATORS=10",
    ]


@pytest.mark.parametrize(
    ("params", "prefix", "message"),
    [
        ({"1st": 1}, "", "not a shell variable name"),
        ({"": 1}, "", "not a shell variable name"),
        ({"a-b": 1, "a_b": 2}, "", "both map to 'A_B'"),
        ({"x": 1, "X": 2}, "", "both map to 'X'"),
        ({"path": "/tmp/evil"}, "", "a variable the shell or a program reads"),
        ({"prompt_command": "touch /tmp/pwned"}, "", "a variable the shell or a program reads"),
        ({"ld_preload": "/tmp/evil.so"}, "", "a variable the shell or a program reads"),
        ({"bash_env": "/tmp/evil"}, "", "a variable the shell or a program reads"),
        ({"ps1": "$(touch /tmp/pwned)"}, "", "a variable the shell or a program reads"),
        ({"PYTHONSTARTUP": "/tmp/evil.py"}, "", "a variable the shell or a program reads"),
        ({"x": "a\0b"}, "HP_", "NUL"),
    ],
)
def test_a_name_or_value_no_variable_can_take_is_refused(
    params: dict[str, Any], prefix: str, message: str
) -> None:
    with pytest.raises(EnvOutputError, match=message):
        best_output(view(params), "env", prefix)


def test_a_prefix_makes_a_reserved_or_numeric_name_usable() -> None:
    output = best_output(view({"path": "/data", "1st": 1}), "env", "HP_")
    assert output.splitlines()[1:] == ["export HP_1ST=1", "export HP_PATH=/data"]


class FakeStudies:
    def __init__(self, v: StudyView) -> None:
        self.view = v

    def __enter__(self) -> FakeStudies:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def get(self, name: str) -> StudyView:
        return self.view


def test_the_command_refuses_with_exit_2_and_an_empty_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    v = view({"x": "ok", "path": "/tmp/evil"})
    monkeypatch.setattr(cli, "_client", lambda args: FakeStudies(v))
    assert cli.kubectl_main(["best", "quad", "-o", "env"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "'path' maps to 'PATH'" in err and "--prefix" in err

    assert cli.kubectl_main(["best", "quad", "-o", "env", "--prefix", "HP_"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == ["export HP_PATH=/tmp/evil", "export HP_X=ok"]
    assert err == ""
