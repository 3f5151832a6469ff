"""An objective's Python source shipped beside its study, so the stock worker image runs it.

The source comes from a file (`optuna-operator create --from-file train.py:objective`) or from
a function (`StudyClient.tune(objective, ...)`). It goes into the ConfigMap `<study>-objective`
under the key `<module>.py`, the study names that key in `spec.objective.source`, and the study
owns the ConfigMap once it exists, so deleting the study deletes it.

What `from_function` ships:
- a function of an imported module file (not the script being run): that whole file, so its
  helpers and constants come along; its imports must resolve in the worker image (a sibling
  module of the user's package does not travel);
- a function of the script being run or of a notebook: the function's own text, plus an
  import line for each global name it uses that is a module or an importable function or
  class (`import numpy as np`, `from math import sqrt`). Anything else it reads from the
  script's or the notebook's globals (a constant, a helper defined beside it), and closures,
  are not shipped: it says which name and why, before anything is created.

Only the standard library is imported here: the SDK (the `client` extra) has no Optuna.
"""

from __future__ import annotations

import ast
import contextlib
import dis
import importlib.util
import inspect
import linecache
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from optuna_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION, TuningStudy
from optuna_operator.api.objective import ObjectiveSource
from optuna_operator.views import StudyView

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi

__all__ = [
    "ObjectiveFile",
    "SourceError",
    "StudyExistsError",
    "Submitter",
    "config_map_name",
    "from_function",
    "read_file",
    "submit_with_source",
]

# A ConfigMap holds at most 1 MiB, its metadata included.
MAX_SOURCE_BYTES = 1_000_000


class SourceError(ValueError):
    """The objective's source cannot be shipped; the message says why and what to do."""


class StudyExistsError(ValueError):
    """A study of that name exists: its workers read the ConfigMap that would be replaced."""


def config_map_name(study: str) -> str:
    """The ConfigMap that holds a study's shipped objective."""
    return f"{study}-objective"


@dataclass(frozen=True)
class ObjectiveFile:
    """A module's text and the function in it: `train:objective` and the text of train.py."""

    function: str  # module:attribute
    text: str

    def __post_init__(self) -> None:
        size = len(self.text.encode())
        if size > MAX_SOURCE_BYTES:
            raise SourceError(
                f"the objective's module {self.key} is {size} bytes; a ConfigMap holds at most "
                "1 MiB: put large data in the image, a volume or object storage"
            )

    @property
    def key(self) -> str:
        """The ConfigMap key, `<module>.py`: the worker imports the module by this name."""
        return self.function.partition(":")[0] + ".py"

    def config_map(self, study: str, namespace: str) -> dict[str, Any]:
        """The ConfigMap `<study>-objective` (namespace empty: the client's)."""
        metadata = {
            "name": config_map_name(study),
            **({"namespace": namespace} if namespace else {}),
        }
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {self.key: self.text},
        }

    def objective_source(self, study: str) -> ObjectiveSource:
        """spec.objective.source naming that ConfigMap's key."""
        ref = {"name": config_map_name(study), "key": self.key}
        return ObjectiveSource.model_validate({"configMapKeyRef": ref})


def read_file(spec: str) -> ObjectiveFile:
    """`path/to/train.py:objective`, as `create --from-file` takes it (SourceError if not)."""
    path, sep, attribute = spec.rpartition(":")
    file = Path(path)
    if not sep or not attribute or file.suffix != ".py":
        raise SourceError(f"--from-file takes path/to/module.py:function, got {spec!r}")
    if not file.stem.isidentifier():
        raise SourceError(
            f"--from-file: {file.name} is not importable as a module; rename it (letters, "
            "digits and underscores, e.g. train.py)"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"--from-file: cannot read {path}: {exc.strerror or exc}") from None
    return ObjectiveFile(f"{file.stem}:{attribute}", text)


# --------------------------------------------------------------------------- from a function


def from_function(fn: Callable[..., Any]) -> ObjectiveFile:
    """The module to ship for fn (see the module's docstring for what travels)."""
    if not isinstance(fn, types.FunctionType):
        raise SourceError(
            f"tune() ships a function defined with def, got {type(fn).__name__} {fn!r}"
        )
    if fn.__name__ == "<lambda>" or fn.__code__.co_freevars:
        raise SourceError(
            f"tune() cannot ship {fn.__qualname__}: a lambda or a closure reads values that "
            "exist only in this process; define it with def, taking what it needs from "
            "imports or from its own body"
        )
    module = sys.modules.get(fn.__module__)
    # A def inside another function is not an attribute of its module: shipped alone.
    top_level = "<locals>" not in fn.__qualname__
    if fn.__module__ != "__main__" and top_level and module and _module_file(module):
        leaf = fn.__module__.rpartition(".")[2]
        return ObjectiveFile(f"{leaf}:{fn.__qualname__}", _source_of(module, fn.__qualname__))
    return _function_alone(fn)


def _module_file(module: types.ModuleType) -> bool:
    """Whether the module was loaded from a Python file (not a notebook, not C)."""
    try:
        return (inspect.getsourcefile(module) or "").endswith(".py")
    except TypeError:  # a built-in module
        return False


def _source_of(module: types.ModuleType, name: str) -> str:
    try:
        return inspect.getsource(module)
    except (OSError, TypeError) as exc:
        raise _unreadable(name, exc) from None


def _unreadable(name: str, exc: Exception) -> SourceError:
    return SourceError(
        f"tune() cannot read the source of {name} ({exc}): it ships source text, which exists "
        "for functions defined in a .py file or a notebook cell, not typed into a plain Python "
        "prompt or built at run time; put it in a file and pass that file's function (or use "
        "optuna-operator create --from-file FILE.py:FUNCTION)"
    )


def _function_alone(fn: types.FunctionType) -> ObjectiveFile:
    """fn's own text under the imports of the globals it uses, at its original line number
    (so tracebacks from the worker point at the user's file)."""
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError) as exc:
        raise _unreadable(fn.__qualname__, exc) from None
    body = textwrap.dedent("".join(lines))
    head = ["from __future__ import annotations  # annotations are not evaluated"]
    head += _imports(fn, body)
    padding = max(first - 1 - len(head), 0)
    text = "\n".join(head) + "\n" * (padding + 1) + body
    # Named after the function, unless that name is a module here (the worker may have it too).
    name = fn.__name__
    module = name if importlib.util.find_spec(name) is None else f"tuned_{name}"
    return ObjectiveFile(f"{module}:{name}", text)


def _imports(fn: types.FunctionType, body: str) -> list[str]:
    """An import statement for each global fn reads; SourceError naming any other global."""
    written = _import_statements(fn.__code__.co_filename)
    lines: list[str] = []
    missing: list[str] = []
    for name in sorted(_globals_read(fn, body)):
        value = fn.__globals__.get(name, fn)
        if value is fn:
            continue  # a builtin, the function itself, or a name unbound in the user's run too
        line = written.get(name) or _import_for(name, value)
        if line is None:
            missing.append(f"{name} ({type(value).__name__})")
        else:
            lines.append(line)
    if missing:
        raise SourceError(
            f"tune() ships {fn.__name__}'s own text, not the globals of the script or "
            f"notebook it uses: {', '.join(missing)}. Define them inside the function, import "
            "them there, or put the function and its helpers in a module file and pass that "
            "module's function (the whole file is shipped then)"
        )
    return lines


def _globals_read(fn: types.FunctionType, body: str) -> set[str]:
    """Global names the code reads, in its body, nested code, defaults and decorators."""
    names = {
        str(i.argval)
        for code in _codes(fn.__code__)
        for i in dis.get_instructions(code)
        if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }
    definition = ast.parse(body).body[0]
    if isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef):
        evaluated = [*definition.decorator_list, *definition.args.defaults]
        evaluated += [d for d in definition.args.kw_defaults if d is not None]
        names |= {n.id for e in evaluated for n in ast.walk(e) if isinstance(n, ast.Name)}
    return names


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _import_statements(filename: str) -> dict[str, str]:
    """The file's (or notebook cell's) top-level imports, by the name each binds."""
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except SyntaxError:
        return {}
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
            for alias in node.names:
                bound = alias.asname or alias.name.partition(".")[0]
                one = (
                    ast.Import([alias])
                    if isinstance(node, ast.Import)
                    else (ast.ImportFrom(node.module, [alias], 0))
                )
                found[bound] = ast.unparse(one)
    return found


def _import_for(name: str, value: Any) -> str | None:
    """An import binding `name` to value, when value is a module or a module's function or
    class; None for anything else (a value made in the script or the notebook)."""
    if isinstance(value, types.ModuleType):
        return (
            f"import {value.__name__}"
            if value.__name__ == name
            else (f"import {value.__name__} as {name}")
        )
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__":
        return None
    if "." in qualname or getattr(sys.modules.get(module), qualname, None) is not value:
        return None
    return f"from {module} import {qualname}" + (f" as {name}" if name != qualname else "")


# --------------------------------------------------------------------------- to the cluster


class Submitter(Protocol):
    """What `submit_with_source` needs of a StudyClient: its API client, its namespace and
    its `submit` (a Protocol, so that the client may import this module and not the other
    way round)."""

    api: ApiClient
    namespace: str

    def submit(self, study: TuningStudy) -> StudyView: ...


def submit_with_source(studies: Submitter, study: TuningStudy, shipped: ObjectiveFile) -> StudyView:
    """Create the ConfigMap (or replace a leftover of that name), then the study that names it
    in objective.source, then make the study the ConfigMap's owner, so that deleting the
    study deletes it (garbage collection).

    The ConfigMap comes first because a worker whose ConfigMap is missing does not start; the
    admission policy checks that the author may get it either way. A study of that name that
    exists already is refused before anything is written (StudyExistsError): its workers
    read that ConfigMap. When the API refuses the study, a ConfigMap created here is deleted.
    The author needs create, update (to replace a leftover) and patch on the ConfigMap.
    """
    from kubernetes import client

    namespace = study.metadata.namespace or studies.namespace
    name = study.metadata.name
    _refuse_existing(client.CustomObjectsApi(studies.api), namespace, name)
    study.spec.objective.source = shipped.objective_source(name)
    core = client.CoreV1Api(studies.api)
    body = shipped.config_map(name, namespace)
    created = _create_or_replace(core, body)
    try:
        view = studies.submit(study)
    except BaseException:
        if created:
            with contextlib.suppress(client.ApiException):  # the refusal says more
                core.delete_namespaced_config_map(config_map_name(name), namespace)
        raise
    owner = {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": view.study.metadata.uid}
    core.patch_namespaced_config_map(
        config_map_name(name), namespace, {"metadata": {"ownerReferences": [owner]}}
    )
    return view


def _refuse_existing(custom: CustomObjectsApi, namespace: str, name: str) -> None:
    from kubernetes.client import ApiException

    try:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    raise StudyExistsError(
        f"TuningStudy {namespace}/{name} exists already and its workers read ConfigMap "
        f"{config_map_name(name)}: delete the study first or choose another name"
    )


def _create_or_replace(core: CoreV1Api, body: dict[str, Any]) -> bool:
    """True when created; a ConfigMap of that name left without its study is replaced."""
    from kubernetes.client import ApiException

    metadata = body["metadata"]
    # The client sends plain dicts as they are; its stubs name only the model classes.
    try:
        core.create_namespaced_config_map(metadata["namespace"], body)  # type: ignore[arg-type]
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(
            metadata["name"],
            metadata["namespace"],
            body,  # type: ignore[arg-type]
        )
        return False
    return True
