"""`optuna-operator run | worker | crds`.

Imports are per command so a worker image needs neither kopf nor the Kubernetes client.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from dataclasses import replace
from pathlib import Path

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    import kopf

    from optuna_operator.config import settings_from_args
    from optuna_operator.handlers import build_registry
    from optuna_operator.logs import configure_logging

    # Replicas get distinct random priorities: the highest acts, the others stand by.
    settings = replace(settings_from_args(args), peering_priority=random.randint(1, 2**30))
    configure_logging(settings.log_format)
    registry = build_registry(settings)
    kopf.run(
        registry=registry,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.peering_priority,
        liveness_endpoint=settings.liveness_endpoint,
    )
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


def main(argv: list[str] | None = None) -> int:
    from optuna_operator.config import add_run_arguments

    parser = argparse.ArgumentParser(prog="optuna-operator")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Run the operator (kopf).")
    add_run_arguments(run)
    run.set_defaults(func=_run)
    worker = sub.add_parser("worker", help="Run a worker (inside a worker pod).")
    worker.set_defaults(func=_worker)
    crds = sub.add_parser("crds", help="Write the CRD generated from the API models.")
    crds.add_argument("--output-dir", default="crds")
    crds.add_argument("--check", action="store_true", help="Fail if the file differs.")
    crds.set_defaults(func=_crds)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
