"""`optuna-operator migrate`: move studies of operator 0.1.0 into their namespace's schema.

Operator 0.1.0 kept every study without spec.storage under the one admin credential (in its
search_path, usually `public`). Since tenancy, each namespace's studies live in its own
schema; the operator refuses to start a new, empty study over one that is still in the
shared schema (StorageReady=False, LegacyStudyNotMigrated). This command copies such
studies, trials and attributes included (optuna.copy_study), into the schema of the
namespace whose TuningStudy names them, and records that TuningStudy as the owner.

Only default study names (`<namespace>.<name>`) are moved unless `--include-custom-names`:
0.1.0 recorded no namespace, so a custom studyName says nothing about whose study it is.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage

from optuna_operator.api import GROUP, PLURAL, VERSION, TuningStudy
from optuna_operator.config import SecretKey
from optuna_operator.kube import Cluster
from optuna_operator.storage.engines import engine_kwargs
from optuna_operator.storage.study_store import OWNER_ATTR
from optuna_operator.storage.tenancy import ADMIN_SEARCH_PATH, LEGACY_SCHEMA, Tenancy

__all__ = ["Moved", "migrate_namespace", "run_migrate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Moved:
    """What happened to one TuningStudy's study."""

    namespace: str
    name: str
    study_name: str
    outcome: str  # moved | skipped: <why>


def _storage(url: str, search_path: str | None = None) -> RDBStorage:
    kwargs = engine_kwargs(url, "optuna-operator-migrate", None, search_path=search_path)
    return RDBStorage(url, engine_kwargs=kwargs)


def migrate_namespace(
    cluster: Cluster,
    tenancy: Tenancy,
    admin_url: str,
    namespace: str,
    include_custom_names: bool = False,
    delete_source: bool = False,
) -> list[Moved]:
    """Move the 0.1.0 studies of one namespace's TuningStudies; idempotent."""
    items: list[dict[str, Any]] = (
        cluster.get_cluster_object(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}") or {}
    ).get("items", [])
    if not items:
        return []
    creds = tenancy.ensure(namespace, admin_url)
    target = _storage(creds.url)
    source: RDBStorage | None = None  # opened only when a legacy study exists
    results = []
    try:
        for body in items:
            study = TuningStudy.model_validate(
                {"metadata": body["metadata"], "spec": body.get("spec") or {}}
            )
            name = study.study_name

            def result(outcome: str, study: TuningStudy = study, name: str = name) -> Moved:
                return Moved(namespace, study.metadata.name, name, outcome)

            if study.spec.storage is not None:
                results.append(result("skipped: spec.storage is set (your own database)"))
                continue
            if study.spec.study_name and not include_custom_names:
                results.append(result("skipped: custom studyName (see --include-custom-names)"))
                continue
            if not tenancy.legacy_study_exists(admin_url, name):
                results.append(result("skipped: not in the shared schema"))
                continue
            # The admin reads `public` only after legacy_study_exists found Optuna's tables
            # there to be its own; the system catalog still resolves first.
            source = source or _storage(admin_url, f"{ADMIN_SEARCH_PATH},{LEGACY_SCHEMA}")
            source_id = source.get_study_id_from_name(name)
            try:
                target.get_study_id_from_name(name)
                results.append(result("skipped: already in the namespace's schema"))
                continue
            except KeyError:
                pass
            optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target)
            target_id = target.get_study_id_from_name(name)
            owner = {
                "namespace": namespace,
                "name": study.metadata.name,
                "uid": study.metadata.uid or "",
            }
            target.set_study_system_attr(target_id, OWNER_ATTR, owner)
            copied = len(target.get_all_trials(target_id, deepcopy=False))
            if delete_source and copied == len(source.get_all_trials(source_id, deepcopy=False)):
                source.delete_study(source_id)
            results.append(result(f"moved ({copied} trials)"))
    finally:
        for storage in (source, target):
            if storage is not None:
                storage.engine.dispose()
    return results


def run_migrate(args: argparse.Namespace) -> int:
    """The command: kubeconfig (or in-cluster) credentials, one line per TuningStudy."""
    from optuna_operator.handlers import api_client

    ref = SecretKey.parse(args.default_storage_secret, "default")
    cluster = Cluster(api_client())
    tenancy = Tenancy(cluster)
    try:
        admin_url = cluster.read_secret_value(ref.namespace, ref.name, ref.key)
        if not admin_url:
            print(f"Secret {ref.namespace}/{ref.name} has no key {ref.key!r}")
            return 2
        for namespace in args.namespace:
            for moved in migrate_namespace(
                cluster,
                tenancy,
                admin_url,
                namespace,
                include_custom_names=args.include_custom_names,
                delete_source=args.delete_source,
            ):
                print(f"{moved.namespace}/{moved.name}: {moved.study_name}: {moved.outcome}")
    finally:
        tenancy.close()
        cluster.close()
    return 0
