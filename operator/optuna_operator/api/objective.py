"""What each trial runs: `Objective` (a Python function or a command) and the declarative
search space of a command objective, with the CEL rules that keep it consistent.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from optuna_operator.api.cel import cel, rules
from optuna_operator.api.constants import MAX_CHOICES, MAX_PARAMETERS
from optuna_operator.api.types import Choice, Model, ObjectName, ParamName

__all__ = [
    "REQUIREMENT_PATTERN",
    "SEARCH_SPACE_SCHEMA",
    "CategoricalRange",
    "ConfigMapKeyRef",
    "FloatRange",
    "IntRange",
    "Objective",
    "ObjectiveSource",
    "Parameter",
    "ParameterCondition",
]


# A pip requirement specifier: a distribution name, extras, then version clauses. Nothing
# that pip would read as an option, a URL or a file, so a spec cannot point pip elsewhere.
_VERSION_CLAUSE = r" *(==|!=|<=|>=|~=|<|>) *[A-Za-z0-9.*+!_-]+"
REQUIREMENT_PATTERN = (
    r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(\[[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*\])?"
    rf"({_VERSION_CLAUSE}( *,{_VERSION_CLAUSE})*)?$"
)


def _range_rules(kind: str, zero: str, log_step: str, log_step_message: str, step_fits: str) -> Any:
    """The CEL rules of a numeric range: low < high, a log scale above zero, how a step may
    combine with a log scale, and a step that fits in the range."""
    return rules(
        cel("self.low < self.high", f"{kind}: low must be less than high"),
        cel(f"!self.log || self.low > {zero}", f"{kind}: log scale needs low > 0"),
        cel(log_step, f"{kind}: {log_step_message}"),
        cel(step_fits, f"{kind}: step must fit in the range high - low"),
    )


class FloatRange(Model):
    """A float parameter sampled from [low, high]."""

    model_config = ConfigDict(
        json_schema_extra=_range_rules(
            "float",
            "0.0",
            "!(self.log && has(self.step))",
            "step cannot be combined with log scale",
            "!has(self.step) || self.step <= self.high - self.low",
        )
    )
    low: float = Field(description="Lower bound (inclusive).")
    high: float = Field(description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    step: float | None = Field(
        None, gt=0, description="Discretization step; values are low + k*step."
    )


class IntRange(Model):
    """An integer parameter sampled from [low, high]."""

    model_config = ConfigDict(
        json_schema_extra=_range_rules(
            "int",
            "0",
            "!self.log || self.step == 1",
            "log scale needs step 1",
            "self.step <= self.high - self.low",
        )
    )
    low: int = Field(description="Lower bound (inclusive).")
    high: int = Field(description="Upper bound (inclusive).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    step: int = Field(1, ge=1, description="Step between values.")


class CategoricalRange(Model):
    """A parameter chosen from a list of values."""

    choices: list[Choice] = Field(
        min_length=1,
        max_length=MAX_CHOICES,
        description="Values to choose from: strings or integers, each once.",
        # Duplicates are rejected by the API server ("Duplicate value").
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class ParameterCondition(Model):
    """Sample this parameter only when a categorical parameter has one of the values."""

    param: ParamName = Field(
        description="Name of an unconditional categorical parameter of the search space."
    )
    in_: list[Choice] = Field(
        alias="in",
        min_length=1,
        max_length=16,
        description="Values of that parameter for which this parameter is sampled.",
    )


class Parameter(Model):
    """One parameter of a declarative search space; exactly one of float, int, categorical."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "[has(self.float), has(self.int), has(self.categorical)].filter(x, x).size() == 1",
                "set exactly one of float, int or categorical for each parameter",
            ),
            cel(
                "!has(self.when) || self.when.param != self.name",
                "a parameter cannot depend on itself",
            ),
        )
    )
    name: ParamName
    float_: FloatRange | None = Field(None, alias="float", description="A float range.")
    int_: IntRange | None = Field(None, alias="int", description="An integer range.")
    categorical: CategoricalRange | None = Field(None, description="A list of choices.")
    when: ParameterCondition | None = Field(
        None, description="Sample only when another parameter has one of the given values."
    )


SEARCH_SPACE_SCHEMA: dict[str, Any] = {
    # The API server rejects duplicate names itself ("Duplicate value"), at no CEL cost.
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
    "x-kubernetes-validations": [
        # One level of conditions keeps the space acyclic without ordering rules, which the
        # API server's CEL cost budget cannot afford over a list of parameters.
        cel(
            "self.all(p, !has(p.when) || self.exists(q, q.name == p.when.param"
            " && has(q.categorical) && !has(q.when)))",
            "searchSpace: when.param must name a categorical parameter that has no when itself",
        ),
        cel(
            "self.all(p, !has(p.when) || self.exists(q, q.name == p.when.param"
            " && has(q.categorical) && p.when.__in__.all(v, v in q.categorical.choices)))",
            "searchSpace: every value in when.in must be one of the parent parameter's choices",
        ),
    ],
}


class ConfigMapKeyRef(Model):
    """One key of a ConfigMap in the study's namespace."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.key.matches('^[A-Za-z_][A-Za-z0-9_]*[.]py$')",
                "objective.source.configMapKeyRef.key must be a Python file name such as "
                "train.py (letters, digits and underscores, then .py): the worker imports it "
                "as a module",
            )
        )
    )
    name: ObjectName = Field(description="ConfigMap name, in the study's namespace.")
    key: str = Field(
        min_length=4,
        max_length=253,
        description="Key holding the module's source, named <module>.py, e.g. train.py for "
        "objective.function train:objective.",
    )


class ObjectiveSource(Model):
    """Where the worker reads the objective's Python module from, instead of its image."""

    config_map_key_ref: ConfigMapKeyRef = Field(
        description="The ConfigMap key holding the module's source (at most 1 MiB, the "
        "ConfigMap limit). The worker writes it to a fresh directory, puts that first on "
        "sys.path and imports objective.function from it, so a stock worker image runs it. "
        "The study's author needs get on the ConfigMap. Create it with `kubectl create "
        "configmap NAME --from-file=train.py` or `optuna-operator create --from-file`."
    )


class Objective(Model):
    """What each trial runs: a Python function or a command in any language."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.function) != has(self.command)",
                "objective: set exactly one of function or command",
            ),
            cel(
                "!has(self.command) || has(self.searchSpace)",
                "objective.command needs a searchSpace: the command cannot ask for "
                "parameters itself",
            ),
            cel(
                "!has(self.function) || !has(self.searchSpace)",
                "objective.searchSpace is only used with command: a function objective "
                "defines its parameters with trial.suggest_*",
            ),
            cel(
                "!has(self.source) || has(self.function)",
                "objective.source is only used with function: set objective.function to "
                "module:attribute of the module in the ConfigMap (e.g. train:objective)",
            ),
            cel(
                "!has(self.source) || !has(self.function) || "
                "self.function.startsWith(self.source.configMapKeyRef.key.substring(0, "
                "size(self.source.configMapKeyRef.key) - 3) + ':')",
                "objective.source.configMapKeyRef.key must be the module of "
                "objective.function plus .py (key train.py for function train:objective): "
                "the worker imports the key's source under that module name",
            ),
        )
    )
    function: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$",
        max_length=256,
        description="Python define-by-run objective as module:attribute, called with an "
        "optuna.Trial; returns a float, or a tuple of floats for several directions.",
    )
    source: ObjectiveSource | None = Field(
        None,
        description="Ship the module of objective.function in a ConfigMap instead of the "
        "worker image: no image needs building for an objective written in a notebook.",
    )
    command: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Command run once per trial. '{name}' in an argument is replaced by the "
        "parameter's value; parameters also arrive as OPTUNA_PARAM_<NAME> environment "
        "variables and as a JSON file named by OPTUNA_PARAMS_FILE. The command reports "
        "'optuna:report <step> <value>' and 'optuna:result <v1> [<v2> ...]' lines on stdout.",
    )
    search_space: (
        Annotated[list[Parameter], Field(json_schema_extra=SEARCH_SPACE_SCHEMA)] | None
    ) = Field(
        None,
        min_length=1,
        max_length=MAX_PARAMETERS,
        description="Declarative search space for command objectives. A parameter with "
        "`when` is sampled only when its parent has one of the listed values.",
    )
    requirements: (
        list[Annotated[str, Field(min_length=1, max_length=200, pattern=REQUIREMENT_PATTERN)]]
        | None
    ) = Field(
        None,
        min_length=1,
        max_length=64,
        description="Python packages the objective needs beyond the worker image, as pip "
        "requirement specifiers (`xgboost>=2,<4`, `scikit-learn[alldeps]==1.5.2`; no URLs, "
        "options or environment markers). Each worker pod installs them with pip into its "
        "/tmp before the first trial and puts them first on the path (a command objective "
        "gets them in PYTHONPATH). pip reads the cluster's index from the usual environment: "
        "set PIP_INDEX_URL (from a Secret when it holds a password) or PIP_NO_INDEX and "
        "PIP_FIND_LINKS in workers.env for an air-gapped cluster. A failed install ends the "
        "study (exit code 3) with pip's message.",
    )
    trial_timeout_seconds: int | None = Field(
        None,
        ge=1,
        description="Fail a trial that runs longer than this. A command is stopped; a "
        "function's worker process is ended and replaced (Python cannot interrupt native code).",
    )
