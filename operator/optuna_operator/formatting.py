"""What the CLI prints: pure functions of a study's view, events and the time, unit-tested."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import yaml

from optuna_operator.api import json_safe, value_text
from optuna_operator.trials import Trial
from optuna_operator.views import EventLine, StudyView

__all__ = [
    "EnvOutputError",
    "age",
    "best_document",
    "best_output",
    "completion_script",
    "env_lines",
    "progress_line",
    "status_text",
    "study_table",
    "table",
    "trials_document",
    "trials_output",
    "trials_table",
]


def age(then: datetime | None, now: datetime) -> str:
    """kubectl's short age: 45s, 12m, 3h, 2d."""
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, as kubectl prints them."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _value(value: float) -> str:
    """Six significant digits; Infinity, -Infinity and NaN as status spells them."""
    return f"{value:.6g}" if math.isfinite(value) else value_text(value)


def _best_text(view: StudyView) -> str:
    best = view.status.best_trial
    if best is None:
        return "-"
    values = ", ".join(_value(v) for v in best.values)
    return f"{values} (#{best.number})"


def study_table(views: Sequence[StudyView], now: datetime, all_namespaces: bool = False) -> str:
    """`list`: one row per study."""
    header = ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "AGE"]
    rows = []
    for v in views:
        trials = v.status.trials
        row = [
            v.name,
            v.phase,
            v.status.progress or "0",
            str(trials.running if trials else 0),
            _best_text(v),
            age(v.created, now),
        ]
        rows.append([v.namespace, *row] if all_namespaces else row)
    if all_namespaces:
        header = ["NAMESPACE", *header]
    return table(header, rows)


def _metric_names(view: StudyView) -> list[str]:
    spec = view.study.spec
    return list(spec.metric_names or [f"value{i}" for i in range(len(spec.directions))])


def progress_line(view: StudyView) -> str:
    """The live line of `--watch` and `wait(progress=True)`."""
    trials = view.status.trials
    counts = (
        f"running {trials.running}  pruned {trials.pruned}  failed {trials.failed}"
        if trials
        else "running 0  pruned 0  failed 0"
    )
    best = view.status.best_trial
    names = _metric_names(view)
    best_text = (
        "  best " + ", ".join(f"{n} {_value(v)}" for n, v in zip(names, best.values, strict=False))
        if best
        else ""
    )
    return (
        f"{view.name}  {view.phase:<9} trials {view.status.progress or '0':>7}  {counts}{best_text}"
    )


def _event_lines(events: Sequence[EventLine], now: datetime, limit: int) -> list[str]:
    rows = [
        [age(e.time, now), e.type, e.reason, e.message + (f" (x{e.count})" if e.count > 1 else "")]
        for e in events[-limit:]
    ]
    return table(["AGE", "TYPE", "REASON", "MESSAGE"], rows).splitlines() if rows else []


def status_text(view: StudyView, events: Sequence[EventLine], now: datetime) -> str:
    """`status NAME`: counts, best, conditions and recent events."""
    s = view.status
    spec = view.study.spec
    directions = ", ".join(
        f"{d.value} {n}" for d, n in zip(spec.directions, _metric_names(view), strict=False)
    )
    lines = [
        f"Name:       {view.namespace}/{view.name}",
        f"Phase:      {view.phase}",
        f"Study:      {s.study_name or '-'}  ({directions})",
        f"Progress:   {s.progress or '0'} finished",
    ]
    if s.trials:
        t = s.trials
        lines.append(
            f"Trials:     complete {t.complete}, pruned {t.pruned}, failed {t.failed}, "
            f"running {t.running}, waiting {t.waiting}"
        )
    if s.workers:
        lines.append(
            f"Workers:    active {s.workers.active}, succeeded {s.workers.succeeded}, "
            f"failed {s.workers.failed}"
        )
    if s.best_trial:
        values = ", ".join(
            f"{n} {_value(v)}"
            for n, v in zip(_metric_names(view), s.best_trial.values, strict=False)
        )
        lines.append(f"Best:       trial #{s.best_trial.number}: {values}")
        lines += [f"              {k} = {v}" for k, v in sorted(s.best_trial.params.items())]
    if s.pareto_front:
        lines.append(f"Pareto:     {len(s.pareto_front)} trials (`trials {view.name}` lists them)")
    if s.param_importances:
        ranked = sorted(s.param_importances.items(), key=lambda kv: -kv[1])
        lines.append("Importance: " + ", ".join(f"{k} {v:.2f}" for k, v in ranked))
    if s.dashboard and s.dashboard.service:
        lines.append(f"Dashboard:  Service {s.dashboard.service} (`dashboard {view.name}`)")
    if s.start_time:
        lines.append(f"Started:    {s.start_time.isoformat()}")
    if s.completion_time:
        lines.append(f"Completed:  {s.completion_time.isoformat()}")
    if s.conditions:
        lines.append("Conditions:")
        rows = [[c.type, c.status, c.reason, c.message] for c in s.conditions]
        lines += [
            "  " + r for r in table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows).splitlines()
        ]
    event_lines = _event_lines(events, now, 10)
    if event_lines:
        lines.append("Events:")
        lines += ["  " + r for r in event_lines]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """A trial's run time, kubectl's way (4m5s, 1h2m), tenths of a second under 10 s."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def _param_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return _value(value)
    return str(value)


def _param_names(view: StudyView, trials: Sequence[Trial]) -> list[str]:
    """The search space's order when the spec declares one, then any others by name."""
    declared = [p.name for p in view.study.spec.objective.search_space or []]
    seen = {name for t in trials for name in t.params}
    return [n for n in declared if n in seen] + sorted(seen - set(declared))


def trials_table(view: StudyView, trials: Sequence[Trial]) -> str:
    """`trials NAME`: one row per trial; a column per objective (the study's metric names)
    and per parameter ("-" where a conditional parameter was not sampled); FEASIBLE only in
    constrained studies; DURATION and STARTED (the storage's time) last."""
    if not trials:
        return f"No trials of {view.namespace}/{view.name} match."
    metrics = _metric_names(view)
    params = _param_names(view, trials)
    constrained = any(t.constraints for t in trials)
    rows = []
    for t in trials:
        values = list(t.values or ())
        row = [str(t.number), t.state]
        row += [_value(values[i]) if i < len(values) else "-" for i in range(len(metrics))]
        if constrained:
            row.append(("yes" if t.feasible else "no") if t.constraints else "-")
        row += [_param_text(t.params[p]) if p in t.params else "-" for p in params]
        duration = t.duration
        row.append(_duration(duration.total_seconds()) if duration is not None else "-")
        row.append(t.start.strftime("%Y-%m-%d %H:%M:%S") if t.start else "-")
        rows.append(row)
    header = ["TRIAL", "STATE", *metrics, *(["FEASIBLE"] if constrained else []), *params]
    return table([*header, "DURATION", "STARTED"], rows)


def trials_document(
    view: StudyView, trials: Sequence[Trial], next_offset: int | None = None
) -> dict[str, Any]:
    """`trials NAME -o json|yaml`: the study, its objectives and the trials shown;
    nextOffset is the `--offset` of the next page when --limit cut the list (else null)."""
    metrics = _metric_names(view)
    return {
        "study": view.status.study_name or view.study.study_name,
        "namespace": view.namespace,
        "name": view.name,
        "directions": [d.value for d in view.study.spec.directions],
        "metricNames": metrics,
        "trials": [t.to_dict(metrics) for t in trials],
        "nextOffset": next_offset,
    }


def trials_output(
    view: StudyView, trials: Sequence[Trial], fmt: str, next_offset: int | None = None
) -> str:
    """`trials NAME -o table|json|yaml`. JSON is strict: non-finite values are the strings
    Infinity, -Infinity and NaN, as in status and `best -o json`."""
    if fmt == "table":
        return trials_table(view, trials)
    doc = json_safe(trials_document(view, trials, next_offset))
    if fmt == "json":
        return json.dumps(doc, indent=2, allow_nan=False)
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False).rstrip("\n")
    raise ValueError(f"unknown output format {fmt!r}: table, json or yaml")


def best_document(view: StudyView) -> dict[str, Any]:
    """The best trial as a plain document (json and yaml output)."""
    best = view.status.best_trial
    if best is None:
        raise LookupError(f"TuningStudy {view.namespace}/{view.name} has no finished trial yet")
    return {
        "study": view.status.study_name,
        "trial": best.number,
        "values": dict(zip(_metric_names(view), best.values, strict=False)),
        "params": best.params,
    }


class EnvOutputError(ValueError):
    """`best -o env` cannot print a name or value that a shell would read back unchanged."""


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Variables a shell, the dynamic loader or a language runtime reads as code, a command, a
# search path or a file to run: a parameter named after one of them must not set it for
# whoever evaluates the output (`--prefix` avoids all of them).
# fmt: off
_RESERVED_ENV_NAMES = frozenset({
    "BROWSER", "CDPATH", "CLASSPATH", "DIRSTACK", "EDITOR", "ENV", "EPOCHREALTIME",
    "EPOCHSECONDS", "EUID", "EXECIGNORE", "FCEDIT", "FIGNORE", "FPATH", "FUNCNAME",
    "GCONV_PATH", "GLOBIGNORE", "GROUPS", "HISTCHARS", "HISTCMD", "HISTCONTROL", "HISTFILE",
    "HISTFILESIZE", "HISTIGNORE", "HISTSIZE", "HISTTIMEFORMAT", "HOME", "HOSTALIASES",
    "HOSTNAME", "HOSTTYPE", "IFS", "INPUTRC", "LANG", "LANGUAGE", "LESSCLOSE", "LESSOPEN",
    "LINENO", "LOCALDOMAIN", "LOGNAME", "MACHTYPE", "MAIL", "MAILCHECK", "MAILPATH",
    "MANPAGER", "NLSPATH", "OLDPWD", "OPTARG", "OPTERR", "OPTIND", "OSTYPE", "PAGER", "PATH",
    "PERLLIB", "PIPESTATUS", "PPID", "PROMPT_COMMAND", "PROMPT_DIRTRIM", "PS0", "PS1", "PS2",
    "PS3", "PS4", "PWD", "RANDOM", "RESOLV_HOST_CONF", "RUBYLIB", "RUBYOPT", "SECONDS",
    "SHELL", "SHELLOPTS", "SHLVL", "SRANDOM", "TERM", "TERMCAP", "TERMINFO", "TMOUT",
    "TMPDIR", "TZ", "UID", "USER", "VISUAL", "ZDOTDIR",
})
_RESERVED_ENV_PREFIXES = (
    "BASH", "COMP_", "DYLD_", "GIT_", "JAVA_", "_JAVA_", "KUBE", "LC_", "LD_", "MALLOC_",
    "NODE_", "PERL5", "PERL_", "PYTHON", "READLINE", "SSH_", "SUDO_", "ZSH",
)
# fmt: on


def _env_name(name: str, prefix: str) -> str:
    """A parameter's variable: `prefix + name`, characters other than ASCII letters, digits and
    `_` made `_`, upper-cased; EnvOutputError if that is no shell identifier (empty, a leading
    digit) or is a variable the shell or a runtime reads (PATH, LD_PRELOAD, PROMPT_COMMAND)."""
    mapped = re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}{name}").upper()
    if not _IDENTIFIER.fullmatch(mapped):
        raise EnvOutputError(
            f"-o env: parameter {name!r} maps to {mapped!r}, which is not a shell variable name "
            "(a letter or _ first, then letters, digits and _): use --prefix, e.g. --prefix HP_"
        )
    if mapped in _RESERVED_ENV_NAMES or mapped.startswith(_RESERVED_ENV_PREFIXES):
        raise EnvOutputError(
            f"-o env: parameter {name!r} maps to {mapped!r}, a variable the shell or a program "
            "reads: use --prefix, e.g. --prefix HP_"
        )
    return mapped


def _env_value(name: str, value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if "\0" in text:
        raise EnvOutputError(
            f"-o env: parameter {name!r} has a NUL character, which no shell variable can hold"
        )
    return shlex.quote(text)


def _comment_text(text: str) -> str:
    """Text for the comment line, inert even where `#` does not start a comment (interactive
    zsh without interactive_comments runs it as a command): letters, digits, `_.+-` only."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def env_lines(view: StudyView, prefix: str = "") -> list[str]:
    """`best -o env`: a comment, then one `export NAME=value` line per parameter.

    Every value is single-quoted (shlex.quote), so a POSIX shell (sh, bash, zsh) evaluating the
    lines sets it byte for byte and runs nothing; every name is mapped to an upper-case shell
    identifier. A name that cannot be one, is a variable the shell reads, or collides with
    another after mapping raises EnvOutputError: the caller prints nothing.
    """
    doc = best_document(view)
    values = " ".join(
        f"{_comment_text(str(k))}={_comment_text(_value(v))}" for k, v in doc["values"].items()
    )
    study = f"{_comment_text(view.namespace)}/{_comment_text(view.name)}"
    lines = [f"# {study}: best trial {int(doc['trial'])}: {values}".rstrip()]
    seen: dict[str, str] = {}
    for key, value in sorted(doc["params"].items()):
        name = _env_name(str(key), prefix)
        if name in seen:
            raise EnvOutputError(
                f"-o env: parameters {seen[name]!r} and {key!r} both map to {name!r}: "
                "rename one of them, or read them with -o json"
            )
        seen[name] = str(key)
        lines.append(f"export {name}={_env_value(str(key), value)}")
    return lines


def best_output(view: StudyView, fmt: str, prefix: str = "") -> str:
    """`best NAME -o json|yaml|env`. env: `export NAME=value` lines a shell can evaluate (see
    env_lines: values quoted, names upper-case identifiers with an optional prefix; a name that
    cannot be one raises EnvOutputError, a ValueError)."""
    if fmt == "env":
        return "\n".join(env_lines(view, prefix))
    doc = best_document(view)
    if fmt == "json":
        # An infinite best value as the status writes it ("Infinity"): json.dumps would
        # print a bare Infinity, which strict JSON parsers (jq) refuse.
        return json.dumps(json_safe(doc), indent=2, sort_keys=True, allow_nan=False)
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=True).rstrip("\n")
    raise ValueError(f"unknown output format {fmt!r}: json, yaml or env")


_BASH_COMPLETION = """\
# {shell} completion for optuna-operator and kubectl-optuna, generated from the CLI's own
# parser by `optuna-operator completion {shell}`. Study names come from kubectl.
_optuna_operator_complete() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} cmd="" ns="" i
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${{COMP_WORDS[i]}} in
      -n|--namespace) ns=${{COMP_WORDS[i+1]}} ;;
      -*) ;;
      *) [[ -z $cmd ]] && cmd=${{COMP_WORDS[i]}} ;;
    esac
  done
  local values="" value_option=0 options="" study=0 positional=""
  case "$cmd $prev" in
{values}
  esac
  if ((value_option)); then
    COMPREPLY=($(compgen -W "$values" -- "$cur"))
    return
  fi
  case "$cmd" in
{commands}
  esac
  if [[ $cur == -* || -z $cmd ]]; then
    COMPREPLY=($(compgen -W "$options" -- "$cur"))
  elif [[ -n $positional ]]; then
    COMPREPLY=($(compgen -W "$positional" -- "$cur"))
  elif ((study)); then
    local names
    names=$(kubectl get tuningstudies.tuning.optuna-operator.io ${{ns:+-n "$ns"}} \\
      -o 'jsonpath={{.items[*].metadata.name}}' 2>/dev/null)
    COMPREPLY=($(compgen -W "$names" -- "$cur"))
  fi
}}
complete -o default -F _optuna_operator_complete optuna-operator kubectl-optuna"""


def completion_script(spec: dict[str, dict[str, list[str] | None]], shell: str) -> str:
    """A bash or zsh completion script from the CLI's commands and options (see
    cli._completion_spec). zsh runs the bash function through bashcompinit."""
    values, commands = [], []
    for command, options in spec.items():
        flags = [o for o in options if o.startswith("-")]
        names = [c for c in spec if c] + flags if not command else flags
        lines = [f'options="{" ".join(names)}"']
        if "<study>" in options:
            lines.append("study=1")
        if options.get("<arg>"):
            lines.append(f'positional="{" ".join(options["<arg>"] or [])}"')
        commands.append(f'    "{command}") {"; ".join(lines)} ;;')
        for flag in flags:
            if options[flag] is not None:
                words = " ".join(options[flag] or [])
                values.append(f'    "{command} {flag}") value_option=1; values="{words}" ;;')
    script = _BASH_COMPLETION.format(
        shell=shell, values="\n".join(values), commands="\n".join(commands)
    )
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script
