"""objective_source: what `create --from-file` and `StudyClient.tune` ship, and that the
worker imports it (the worker's own load_function, a real Optuna study)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from optuna_operator.objective_source import (
    ObjectiveFile,
    SourceError,
    from_function,
    read_file,
)
from optuna_operator.worker.function_objective import load_function

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR, sys.path and sys.modules restored after the test (load_function writes and
    imports a module)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    return tmp_path


def shipped_by_script(tmp_path: Path, code: str, name: str = "train.py") -> dict[str, str]:
    """Run code as a script (its functions live in __main__, as in a user's `python train.py`)
    that ships `objective`; what it printed: function and text, or the SourceError."""
    script = tmp_path / name
    script.write_text(
        textwrap.dedent(code)
        + textwrap.dedent(
            """
            if __name__ == "__main__":
                import json
                from optuna_operator.objective_source import SourceError, from_function
                try:
                    shipped = from_function(objective)
                    print(json.dumps({"function": shipped.function, "text": shipped.text}))
                except SourceError as exc:
                    print(json.dumps({"error": str(exc)}))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, str] = json.loads(done.stdout)
    return found


def run_study(function: str, text: str, trials: int = 4) -> optuna.Study:
    """What the worker does with objective.source, on an in-memory study."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(load_function(function, text), n_trials=trials)
    return study


def test_a_file_is_its_module_and_its_key() -> None:
    shipped = read_file(f"{__file__}:f")
    assert shipped.function == "test_objective_source:f"
    assert shipped.key == "test_objective_source.py"
    assert shipped.text == Path(__file__).read_text()
    assert shipped.config_map("quad", "team-a") == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "quad-objective", "namespace": "team-a"},
        "data": {"test_objective_source.py": shipped.text},
    }
    assert "namespace" not in shipped.config_map("quad", "")["metadata"]
    ref = shipped.objective_source("quad").config_map_key_ref
    assert (ref.name, ref.key) == ("quad-objective", "test_objective_source.py")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("train.py", "takes path/to/module.py:function"),
        ("train.txt:objective", "takes path/to/module.py:function"),
        ("my-train.py:objective", "my-train.py is not importable as a module"),
        ("/no/such/train.py:objective", "cannot read /no/such/train.py"),
    ],
)
def test_a_bad_file_spec_is_one_sentence(spec: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        read_file(spec)


def test_more_than_a_configmap_holds_is_refused() -> None:
    with pytest.raises(SourceError, match="ConfigMap holds at most 1 MiB"):
        ObjectiveFile("big:objective", "#" * 1_000_001)


def test_a_module_files_function_ships_the_whole_file(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / "my_objectives.py").write_text(
        "SHIFT = 2.0\n\n\ndef _loss(x):\n    return (x - SHIFT) ** 2\n\n\n"
        "def objective(trial):\n    return -_loss(trial.suggest_float('x', -5, 5))\n"
    )
    monkeypatch.syspath_prepend(str(isolated))
    import my_objectives  # type: ignore[import-not-found]

    shipped = from_function(my_objectives.objective)
    assert shipped.function == "my_objectives:objective"
    assert shipped.text == (isolated / "my_objectives.py").read_text()
    del sys.modules["my_objectives"]  # the worker imports it afresh from the shipped text
    assert run_study(shipped.function, shipped.text).best_value <= 0


SCRIPT = """\
import json as js
import math
from math import sqrt
from statistics import mean as average

import optuna_operator.client


def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    trial.set_user_attr("parts", js.dumps([sqrt(4), average([1, 3])]))
    return -((x - 2) ** 2) + math.pi


studies = optuna_operator.client.StudyClient  # a script's own business: not shipped
"""


def test_a_script_function_ships_alone_with_the_imports_it_uses(isolated: Path) -> None:
    shipped = shipped_by_script(isolated, SCRIPT)
    assert shipped["function"] == "objective:objective"
    lines = shipped["text"].splitlines()
    assert lines[:5] == [
        "from __future__ import annotations  # annotations are not evaluated",
        "from statistics import mean as average",
        "import json as js",
        "import math",
        "from math import sqrt",
    ]
    # The def keeps its line number, so a worker's traceback points into the user's file.
    assert lines.index("def objective(trial):") == SCRIPT.splitlines().index(
        "def objective(trial):"
    )
    assert "optuna_operator" not in shipped["text"] and "studies" not in shipped["text"]
    study = run_study(shipped["function"], shipped["text"])
    assert study.best_trial.user_attrs["parts"] == "[2.0, 2]"


def test_a_def_inside_main_without_a_closure_ships_alone(isolated: Path) -> None:
    shipped = shipped_by_script(
        isolated,
        """
        import math


        def main():
            def objective(trial):
                return math.cos(trial.suggest_float("x", 0, 1))

            return objective


        objective = main()
        """,
    )
    assert run_study(shipped["function"], shipped["text"]).best_value <= 1


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "SHIFT = 2\n\ndef objective(trial):\n"
            "    return trial.suggest_float('x', 0, 1) + SHIFT\n",
            "not the globals of the script or notebook it uses: SHIFT \\(int\\)",
        ),
        (
            "def helper(x):\n    return x\n\n"
            "def objective(trial):\n    return helper(trial.suggest_float('x', 0, 1))\n",
            "uses: helper \\(function\\)",
        ),
        (
            "def make(shift):\n    def objective(trial):\n        return shift\n"
            "    return objective\n\nobjective = make(1)\n",
            "a lambda or a closure reads values that exist only in this process",
        ),
        ("objective = lambda trial: 1.0\n", "a lambda or a closure"),
        ("objective = len\n", "ships a function defined with def, got builtin_function_or_method"),
        (
            "namespace = {}\nexec('def objective(trial):\\n    return 1.0\\n', namespace)\n"
            "objective = namespace['objective']\n",
            "cannot read the source of objective .*defined in a .py file or a notebook cell",
        ),
    ],
)
def test_what_cannot_travel_is_named_before_anything_is_created(
    isolated: Path, code: str, message: str
) -> None:
    found = shipped_by_script(isolated, code)
    assert "error" in found, found
    assert re.search(message, found["error"]), found


def test_a_function_named_like_an_installed_module_gets_a_module_of_its_own(
    isolated: Path,
) -> None:
    shipped = shipped_by_script(
        isolated, "def objective(trial):\n    return 1.0\n\njson = objective\n"
    )
    assert shipped["function"] == "objective:objective"
    code = "def json(trial):\n    return 1.0\n\nobjective = json\n"
    assert shipped_by_script(isolated, code)["function"] == "tuned_json:json"


def test_the_module_loads_no_optuna_or_sqlalchemy() -> None:
    # The SDK imports it inside tune(); a `client` install has neither.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, optuna_operator.objective_source; "
            "print(sorted(m for m in ('optuna', 'sqlalchemy', 'kopf') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
