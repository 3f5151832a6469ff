"""`optuna-operator run | worker | crds | admission-policy | migrate` for the operator, and
the user's commands (`list`, `status`, `trials`, `best`, `logs`, `dashboard`, `create`,
`wait`), also installed as the kubectl plugin `kubectl optuna`.

Imports are per command so a worker image needs neither kopf nor the Kubernetes client. The
user's commands are thin: the work is in `client` (the SDK) and `formatting` (what is printed).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna_operator.client import StudyClient, StudyView

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["kubectl_main", "main"]


def _run(args: argparse.Namespace) -> int:
    # The official client would be imported by kopf (to recognise its objects) and hold
    # 9 to 12 MiB that the operator never uses: its calls go through apiserver.py. A None in
    # sys.modules makes any import of it raise ImportError (the import system's documented
    # behaviour), which kopf takes as "not installed". The CLI's other commands use it.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    import kopf

    from optuna_operator import leader
    from optuna_operator.apiserver import connect
    from optuna_operator.config import settings_from_args
    from optuna_operator.handlers import build_registry
    from optuna_operator.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_format)
    registry = build_registry(settings)

    def lead() -> None:
        # Standalone: of several replicas only the Lease's holder gets here (leader.py).
        kopf.run(
            registry=registry,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=True,
            liveness_endpoint=settings.liveness_endpoint,
        )

    leader.run(settings.leader_election, connect, lead, settings.liveness_endpoint)
    return 0


def _worker(_: argparse.Namespace) -> int:
    from optuna_operator.worker.main import main as worker_main

    code: int = worker_main()
    return code


def _crds(args: argparse.Namespace) -> int:
    from optuna_operator.crd import CRD_FILE, crd_yaml, write_crd

    directory = Path(args.output_dir)
    if args.check:
        path = directory / CRD_FILE
        if not path.exists() or path.read_text() != crd_yaml():
            print(f"{path} is out of date: run `make crds`", file=sys.stderr)
            return 1
        return 0
    print(write_crd(directory))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from optuna_operator.migrate import run_migrate

    return run_migrate(args)


def _admission_policy(args: argparse.Namespace) -> int:
    from optuna_operator.admission import policy_files

    stale = 0
    for name, text in policy_files(chart=args.chart).items():
        path = Path(args.output_dir) / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(f"{path} is out of date: run `make crds`", file=sys.stderr)
                stale = 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return stale


# --------------------------------------------------------------------------- user commands


def _client(args: argparse.Namespace) -> StudyClient:
    from optuna_operator.client import StudyClient

    return StudyClient.from_kubeconfig(args.kubeconfig, args.context, args.namespace)


def _now() -> datetime:
    return datetime.now(UTC)


def _repeat(
    args: argparse.Namespace, render: Callable[[], str], until_done: Callable[[], bool]
) -> None:
    """Print render() once, or with --watch redraw it every few seconds until done."""
    if not args.watch:
        print(render())
        return
    live = sys.stdout.isatty()
    last = ""
    while True:
        text = render()
        if text != last:
            # A terminal is redrawn in place; a pipe or a log gets each new version once.
            print(("\x1b[H\x1b[J" if live else "") + text, flush=True)
            last = text
        if until_done():
            return
        time.sleep(args.interval)


def _list(args: argparse.Namespace) -> int:
    from optuna_operator.formatting import study_table

    with _client(args) as studies:
        views: list[StudyView] = []

        def render() -> str:
            views[:] = studies.list_studies(all_namespaces=args.all_namespaces)
            if not views:
                where = "any namespace" if args.all_namespaces else f"namespace {studies.namespace}"
                return f"No TuningStudies in {where}."
            return study_table(views, _now(), args.all_namespaces)

        _repeat(args, render, lambda: all(v.done for v in views))
    return 0


def _status(args: argparse.Namespace) -> int:
    from optuna_operator.client import LiveLine
    from optuna_operator.formatting import progress_line, status_text

    with _client(args) as studies:
        if args.watch:
            line = LiveLine(sys.stdout)
            for view in studies.watch(args.name, poll_interval=args.interval):
                line.show(progress_line(view))
            line.end()
        view = studies.get(args.name)
        print(status_text(view, studies.events(args.name), _now()))
        return 1 if view.phase == "Failed" else 0


def _trials(args: argparse.Namespace) -> int:
    from kubernetes.client import ApiException

    from optuna_operator.client import DASHBOARD_PORT
    from optuna_operator.formatting import trials_output
    from optuna_operator.trials import TrialsUnavailableError, proxy_resource_name, sort_trials

    if args.top is not None and (args.sort_by or args.limit):
        raise ValueError("-k/--top is --sort-by value --limit K: give one or the others")
    sort_by, limit = ("value", args.top) if args.top else (args.sort_by or "number", args.limit)
    with _client(args) as studies:
        view = studies.get(args.name)
        try:
            found = studies.trials(args.name, states=args.state, offset=args.offset)
        except TrialsUnavailableError as exc:
            print(f"{args.subcommand}: {exc}", file=sys.stderr)
            return 1
        except ApiException as exc:
            if exc.status != 403:
                raise
            service = view.status.dashboard.service if view.status.dashboard else None
            print(_refusal(exc, args), file=sys.stderr)
            print(
                "Listing trials needs get on services/proxy for "
                f"{proxy_resource_name(service or '?', DASHBOARD_PORT)} in namespace "
                f"{studies.namespace}: the chart gives it to the view, edit and admin roles "
                "for optuna-dashboard; a study's own dashboard needs a Role of its own.",
                file=sys.stderr,
            )
            return 1
    directions = [d.value for d in view.study.spec.directions]
    ordered = sort_trials(found, sort_by, directions)
    shown = ordered[:limit] if limit else ordered
    cut = len(shown) < len(ordered)
    next_offset = shown[-1].number + 1 if cut and sort_by == "number" and shown else None
    print(trials_output(view, shown, args.output, next_offset))
    if cut and args.output == "table":
        more = f"; next page: --offset {next_offset}" if next_offset is not None else ""
        print(f"({len(ordered) - len(shown)} more trials not shown{more})", file=sys.stderr)
    return 0


def _best(args: argparse.Namespace) -> int:
    from optuna_operator.formatting import best_output

    with _client(args) as studies:
        view = studies.get(args.name)
    try:
        text = best_output(view, args.output, args.prefix)
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 1
    # EnvOutputError (a ValueError: exit 2, message on stderr) is raised before anything
    # is printed: a name a shell could not take leaves stdout empty.
    print(text)
    return 0


def _logs(args: argparse.Namespace) -> int:
    with _client(args) as studies:
        logs = studies.worker_logs(args.name, tail_lines=args.tail)
    if not logs:
        print(f"No worker pods for {args.name}: not started yet, or finished and removed.")
        return 1
    for pod, text in logs.items():
        for line in text.splitlines():
            print(f"[{pod}] {line}")
    return 0


def dashboard_command(args: argparse.Namespace, service: str, namespace: str) -> list[str]:
    """kubectl port-forward to the dashboard's Service, through the API server."""
    from optuna_operator.client import DASHBOARD_PORT

    command = ["kubectl", "port-forward", "-n", namespace, f"svc/{service}"]
    command.append(f"{args.port}:{DASHBOARD_PORT}")
    if args.kubeconfig:
        command += ["--kubeconfig", args.kubeconfig]
    if args.context:
        command += ["--context", args.context]
    return command


def _dashboard(args: argparse.Namespace) -> int:
    with _client(args) as studies:
        view = studies.get(args.name)
        namespace = studies.namespace
    dashboard = view.status.dashboard
    if dashboard is None or not dashboard.service:
        print(f"{args.name} has no dashboard (spec.dashboard.enabled is false, or not yet up).")
        return 1
    command = dashboard_command(args, dashboard.service, namespace)
    print(f"Dashboard of {namespace}/{args.name}: http://127.0.0.1:{args.port}  (Ctrl-C stops)")
    print(f"  {shlex.join(command)}", flush=True)
    try:
        return subprocess.call(command)
    except FileNotFoundError:
        print("kubectl is not on PATH: run the command above with it.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _create(args: argparse.Namespace) -> int:
    from optuna_operator.api import GROUP
    from optuna_operator.client import manifest, parse_parameter, quick_study
    from optuna_operator.objective_source import config_map_name, read_file, submit_with_source

    if sum(bool(o) for o in (args.function, args.command, args.from_file)) != 1:
        print("create: give exactly one of --function, --command and --from-file", file=sys.stderr)
        return 2
    source = read_file(args.from_file) if args.from_file else None
    study = quick_study(
        args.name,
        namespace=args.namespace or "",
        function=source.function if source else args.function,
        command=shlex.split(args.command) if args.command else None,
        search_space=[parse_parameter(p) for p in args.param] or None,
        directions=args.direction or ["minimize"],
        metric_names=args.metric_name,
        trials=args.trials,
        timeout_seconds=args.timeout_seconds,
        parallelism=args.parallelism,
        image=args.image,
        sampler=args.sampler,
        pruner=args.pruner,
        seed=args.seed,
        storage_secret=args.storage_secret,
        dashboard=False if args.no_dashboard else None,
    )
    if args.dry_run:
        config_map = [source.config_map(args.name, args.namespace or "")] if source else []
        if source:
            study.spec.objective.source = source.objective_source(args.name)
        _print_documents([*config_map, manifest(study, only_set=True)])
        return 0
    with _client(args) as studies:
        # With a source: its ConfigMap, then the study, which then owns the ConfigMap.
        created = submit_with_source(studies, study, source) if source else studies.submit(study)
        if source:
            print(
                f"configmap/{config_map_name(created.name)} with {source.key} applied in "
                f"namespace {created.namespace}"
            )
        print(f"tuningstudy.{GROUP}/{created.name} created in namespace {created.namespace}")
        if not args.wait:
            return 0
        return _wait_for(studies, created.name, args.timeout)


def _print_documents(docs: list[dict[str, Any]]) -> None:
    """YAML documents for Git; multi-line text (the objective's source) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    for doc in docs:
        if "namespace" in doc["metadata"] and not doc["metadata"]["namespace"]:
            del doc["metadata"]["namespace"]
    print("---\n".join(yaml.dump(d, Dumper=Dumper, sort_keys=False) for d in docs).rstrip("\n"))


def _wait_for(studies: StudyClient, name: str, timeout: float | None) -> int:
    from optuna_operator.client import StudyFailedError, WaitTimeoutError
    from optuna_operator.formatting import best_output

    try:
        view = studies.wait(name, timeout=timeout, progress=True)
    except StudyFailedError as exc:
        print(exc, file=sys.stderr)
        return 1
    except WaitTimeoutError as exc:
        print(exc, file=sys.stderr)
        return 3
    if view.status.best_trial:
        print(best_output(view, "yaml"))
    return 0


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as studies:
        return _wait_for(studies, args.name, args.timeout)


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="Namespace (default: the kubeconfig context's).")
    p.add_argument(
        "--kubeconfig", help="Path to a kubeconfig (default: $KUBECONFIG, ~/.kube/config)."
    )
    p.add_argument("--context", help="kubeconfig context to use.")


def _command(
    sub: Subparsers,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help_: str,
    study: bool = True,
) -> argparse.ArgumentParser:
    """A user command: connection flags, the study's name unless study=False."""
    p = sub.add_parser(name, help=help_, description=help_)
    _add_connection(p)
    if study:
        p.add_argument("name", help="TuningStudy name.")
    p.set_defaults(func=func, client_command=True)
    return p


def _watchable(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--watch", action="store_true", help="Keep updating until done.")
    p.add_argument("--interval", type=float, default=2.0, help="Seconds between updates.")


def _add_user_commands(sub: Subparsers) -> None:
    _add_view_commands(sub)
    _add_result_commands(sub)
    _add_create(sub)
    p = _command(
        sub,
        "wait",
        _wait,
        "Wait with a live progress line until the study finishes; print the best trial. "
        "Exit 1: Failed; 3: timed out.",
    )
    p.add_argument("--timeout", type=float, help="Give up after this many seconds.")
    p = sub.add_parser(
        "completion",
        help="Print a shell completion script: "
        'eval "$(optuna-operator completion bash)" in ~/.bashrc (zsh: in ~/.zshrc).',
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=_completion)


def _add_view_commands(sub: Subparsers) -> None:
    p = _command(
        sub,
        "list",
        _list,
        "Studies with phase, progress, running trials and best value.",
        study=False,
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="Every namespace.")
    _watchable(p)
    p = _command(sub, "status", _status, "Counts, best trial, conditions and recent events.")
    _watchable(p)
    _add_trials(sub)


def _add_trials(sub: Subparsers) -> None:
    from optuna_operator.trials import TRIAL_STATES

    p = _command(
        sub,
        "trials",
        _trials,
        "Every trial: state, values, parameters, duration and start, read from the "
        "namespace's read-only dashboard through the API server's service proxy (needs get "
        "on services/proxy for it, which the view role has; no database credential).",
    )
    p.add_argument(
        "--state",
        action="append",
        choices=TRIAL_STATES,
        help="Only trials in this state (repeatable).",
    )
    p.add_argument(
        "--sort-by",
        choices=["number", "value"],
        help="number (the default), or value: best first by the first objective (trials "
        "without a value last).",
    )
    p.add_argument(
        "--limit", type=_positive, metavar="N", help="Show at most N trials (after --state)."
    )
    p.add_argument(
        "--offset",
        type=_not_negative,
        default=0,
        metavar="N",
        help="Start at trial number N: earlier trials are not even sent (paging: the "
        "table's note and -o json's nextOffset give the next page's N).",
    )
    p.add_argument(
        "-k",
        "--top",
        type=_positive,
        metavar="K",
        help="The K best trials: --sort-by value --limit K.",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=["table", "json", "yaml"],
        default="table",
        help="json and yaml: every field, values by metric name.",
    )


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return number


def _not_negative(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return number


def _add_result_commands(sub: Subparsers) -> None:
    p = _command(sub, "best", _best, "The best trial's parameters, for scripts and training jobs.")
    p.add_argument(
        "-o",
        "--output",
        choices=["json", "yaml", "env"],
        default="json",
        help='env: `export NAME=value` lines, values shell-quoted; `eval "$(... -o env)"` sets '
        "them. A parameter whose name cannot be a variable exits 2 and prints nothing.",
    )
    p.add_argument(
        "--prefix",
        default="",
        help="Prefix for -o env names (e.g. HP_); names are upper-cased, other characters "
        "than letters, digits and _ become _.",
    )
    p = _command(
        sub, "logs", _logs, "Worker pods' logs (through the API server and the nodes' kubelets)."
    )
    p.add_argument("--tail", type=int, help="Last lines of each pod.")
    p = _command(
        sub,
        "dashboard",
        _dashboard,
        "Port-forward to the study's optuna-dashboard (kubectl port-forward) and print the URL.",
    )
    p.add_argument("--port", type=int, default=8080, help="Local port.")


def _add_create(sub: Subparsers) -> None:
    from optuna_operator.api import Direction, PrunerType, SamplerType

    p = _command(
        sub,
        "create",
        _create,
        "Create a quick study from flags (a YAML file gives every field: kubectl apply). "
        "What is not given is left to the API's defaults.",
    )
    objective = p.add_argument_group("objective (one of)")
    objective.add_argument(
        "--function", help="module:function in the worker image, called with an optuna.Trial."
    )
    objective.add_argument(
        "--from-file",
        metavar="PATH.py:FUNCTION",
        help="A local Python file and its objective function: shipped in the ConfigMap "
        "NAME-objective (created or replaced) as objective.source, so the stock worker "
        "image runs it.",
    )
    objective.add_argument(
        "--command",
        help="A command run per trial, with {param} placeholders (quoted, shell-split).",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="SPEC",
        help="Search-space parameter for --command: name=float:LOW:HIGH[:log], "
        "int:LOW:HIGH[:log] or cat:A,B (repeatable).",
    )
    p.add_argument(
        "--direction",
        action="append",
        choices=[d.value for d in Direction],
        help="Per objective (repeatable; default minimize).",
    )
    p.add_argument("--metric-name", action="append", help="Name per objective (repeatable).")
    p.add_argument("--trials", type=int, help="Trial budget.")
    p.add_argument("--timeout-seconds", type=int, help="Time budget.")
    p.add_argument("--parallelism", type=int, help="Worker pods (API default: 1).")
    p.add_argument("--image", help="Worker image (default: the operator's).")
    p.add_argument(
        "--sampler", choices=[t.value for t in SamplerType], help="Sampler (API default: TPE)."
    )
    p.add_argument(
        "--pruner", choices=[t.value for t in PrunerType], help="Pruner (API default: None)."
    )
    p.add_argument("--seed", type=int, help="Sampler seed.")
    _add_create_options(p)


def _add_create_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-secret",
        help="name[:key] of a Secret with the storage URL (default: the operator's).",
    )
    p.add_argument("--no-dashboard", action="store_true", help="Do not run optuna-dashboard.")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the TuningStudy with only what was given (for Git), create nothing.",
    )
    p.add_argument("--wait", action="store_true", help="Then wait with a live progress line.")
    p.add_argument("--timeout", type=float, help="With --wait: give up after this many seconds.")


def _completion(args: argparse.Namespace) -> int:
    from optuna_operator.formatting import completion_script

    parser = _parser("optuna-operator", operator_commands=True)
    print(completion_script(_completion_spec(parser), args.shell))
    return 0


def _completion_spec(parser: argparse.ArgumentParser) -> dict[str, dict[str, list[str] | None]]:
    """Each subcommand's options ("" holds the top level's): None for a flag, else the
    option's choices (empty: any value); "<study>" when it takes a study's name and "<arg>"
    for a positional with choices. What a shell needs to complete a command line."""
    spec: dict[str, dict[str, list[str] | None]] = {"": {"--help": None, "--version": None}}
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        options: dict[str, list[str] | None] = {}
        for action in command._actions:
            choices = [str(c) for c in action.choices or []]
            for flag in action.option_strings:
                options[flag] = None if action.nargs == 0 else choices
            if not action.option_strings:
                options["<study>" if action.dest == "name" else "<arg>"] = choices
        spec[name] = options
    return spec


def _parser(prog: str, operator_commands: bool) -> argparse.ArgumentParser:
    from optuna_operator import __version__
    from optuna_operator.config import add_run_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        epilog="Exit codes of the user's commands: 0 done; 1 the study Failed or the API "
        "refused; 2 bad arguments; 3 wait timed out; 4 the cluster could not be reached.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    if operator_commands:
        run = sub.add_parser("run", help="Run the operator (kopf).")
        add_run_arguments(run)
        run.set_defaults(func=_run)
        worker = sub.add_parser("worker", help="Run a worker (inside a worker pod).")
        worker.set_defaults(func=_worker)
        crds = sub.add_parser("crds", help="Write the CRD generated from the API models.")
        crds.add_argument("--output-dir", default="crds")
        crds.add_argument("--check", action="store_true", help="Fail if the file differs.")
        crds.set_defaults(func=_crds)
        policy = sub.add_parser(
            "admission-policy",
            help="Write the ValidatingAdmissionPolicy (and binding) generated from admission.py.",
        )
        policy.add_argument("--output-dir", default="deploy")
        policy.add_argument(
            "--chart", action="store_true", help="The policy alone, for the chart's files/."
        )
        policy.add_argument("--check", action="store_true", help="Fail if the file differs.")
        policy.set_defaults(func=_admission_policy)
        migrate = sub.add_parser(
            "migrate",
            help="Move studies of operator 0.1.0 from the shared schema into their namespace's.",
        )
        migrate.add_argument("--namespace", action="append", required=True, help="Repeatable.")
        migrate.add_argument(
            "--default-storage-secret",
            required=True,
            help="namespace/name[:key] of the operator's default storage Secret (admin URL).",
        )
        migrate.add_argument(
            "--include-custom-names",
            action="store_true",
            help="Also move studies whose TuningStudy sets spec.studyName (you vouch that the "
            "study in the shared schema is that namespace's).",
        )
        migrate.add_argument(
            "--delete-source",
            action="store_true",
            help="Delete each study from the shared schema once its copy has every trial.",
        )
        migrate.set_defaults(func=_migrate)
    _add_user_commands(sub)
    return parser


# Exit codes of the user's commands; the parser's epilog lists them.
EXIT_UNREACHABLE = 4


def _dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if not getattr(args, "client_command", False):
        logging.basicConfig(level=logging.INFO)
        code: int = args.func(args)
        return code
    from kubernetes.client import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        code = args.func(args)
    except ApiException as exc:
        print(_refusal(exc, args), file=sys.stderr)
        return 1
    except (HTTPError, ConfigException) as exc:
        # A traceback through urllib3's retries says less than one line (issue 23).
        print(f"{parser.prog} {args.subcommand}: {_unreachable(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ValueError as exc:  # bad flags the models refused (pydantic errors are ValueErrors)
        print(f"{parser.prog} {args.subcommand}: {exc}", file=sys.stderr)
        return 2
    return code


def _refusal(exc: Exception, args: argparse.Namespace) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", "")
    if status == 404 and getattr(args, "name", None):
        where = args.namespace or "the current context namespace"
        return f"TuningStudy {args.name!r} not found in {where}"
    return f"the Kubernetes API answered {status} {reason}: {_api_message(exc)}"


def _api_message(exc: Exception) -> str:
    import json

    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body)["message"]) if body else ""
    except (ValueError, KeyError, TypeError):
        return str(body)


def _unreachable(exc: Exception) -> str:
    """One line for a cluster that cannot be reached or a kubeconfig that names none."""
    import re

    from urllib3.exceptions import MaxRetryError

    if not isinstance(exc, MaxRetryError):
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no usable kubeconfig: {text} (check --kubeconfig, $KUBECONFIG and --context)"
    pool = exc.pool
    where = f"{getattr(pool, 'scheme', 'https')}://{getattr(pool, 'host', '?')}"
    where += f":{pool.port}" if getattr(pool, "port", None) else ""
    found = re.search(r"\[Errno [^\]]*\] ?([^\n]*)", str(exc.reason))
    why = found.group(1) if found else type(exc.reason).__name__
    return f"cannot reach the Kubernetes API at {where}: {why} (is the cluster up? check --context)"


def main(argv: list[str] | None = None) -> int:
    """`optuna-operator ...`: the operator's commands and the user's."""
    return _dispatch(_parser("optuna-operator", operator_commands=True), argv)


def kubectl_main(argv: list[str] | None = None) -> int:
    """`kubectl optuna ...` (the executable kubectl-optuna on PATH): the user's commands."""
    return _dispatch(_parser("kubectl optuna", operator_commands=False), argv)


if __name__ == "__main__":
    sys.exit(main())
