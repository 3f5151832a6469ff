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
import json
import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage

from optuna_operator.api import GROUP, PLURAL, VERSION, TuningStudy
from optuna_operator.apiserver import ApiError, Request
from optuna_operator.config import SecretKey
from optuna_operator.kube import Cluster
from optuna_operator.storage.admin import ADMIN_SEARCH_PATH, LEGACY_SCHEMA
from optuna_operator.storage.engines import engine_kwargs
from optuna_operator.storage.study_store import OWNER_ATTR
from optuna_operator.storage.tenancy import Tenancy

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


class _Storages:
    """The namespace's schema (target) and, opened only when a legacy study exists, the
    shared schema of 0.1.0 (source)."""

    def __init__(self, target_url: str, admin_url: str) -> None:
        self.target = _storage(target_url)
        self.admin_url = admin_url
        self._source: RDBStorage | None = None

    def source(self) -> RDBStorage:
        # The admin reads `public` only after legacy_study_exists found Optuna's tables
        # there to be its own; the system catalog still resolves first.
        if self._source is None:
            self._source = _storage(self.admin_url, f"{ADMIN_SEARCH_PATH},{LEGACY_SCHEMA}")
        return self._source

    def close(self) -> None:
        for storage in (self._source, self.target):
            if storage is not None:
                storage.engine.dispose()


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
    storages = _Storages(tenancy.ensure(namespace, admin_url).url, admin_url)
    results = []
    try:
        for body in items:
            study = TuningStudy.model_validate(
                {"metadata": body["metadata"], "spec": body.get("spec") or {}}
            )
            outcome = _migrate_one(study, storages, tenancy, include_custom_names, delete_source)
            results.append(Moved(namespace, study.metadata.name, study.study_name, outcome))
    finally:
        storages.close()
    return results


def _migrate_one(
    study: TuningStudy,
    storages: _Storages,
    tenancy: Tenancy,
    include_custom_names: bool,
    delete_source: bool,
) -> str:
    """Copy one TuningStudy's 0.1.0 study into its namespace's schema, recording the
    TuningStudy as its owner; what happened, as the CLI prints it."""
    name, target = study.study_name, storages.target
    if study.spec.storage is not None:
        return "skipped: spec.storage is set (your own database)"
    if study.spec.study_name and not include_custom_names:
        return "skipped: custom studyName (see --include-custom-names)"
    if not tenancy.legacy_study_exists(storages.admin_url, name):
        return "skipped: not in the shared schema"
    source = storages.source()
    source_id = source.get_study_id_from_name(name)
    try:
        target.get_study_id_from_name(name)
        return "skipped: already in the namespace's schema"
    except KeyError:
        pass
    optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target)
    target_id = target.get_study_id_from_name(name)
    owner = {
        "namespace": study.metadata.namespace,
        "name": study.metadata.name,
        "uid": study.metadata.uid or "",
    }
    target.set_study_system_attr(target_id, OWNER_ATTR, owner)
    copied = len(target.get_all_trials(target_id, deepcopy=False))
    if delete_source and copied == len(source.get_all_trials(source_id, deepcopy=False)):
        source.delete_study(source_id)
    return f"moved ({copied} trials)"


class OfficialClient:
    """Cluster's calls over the official client: unlike the operator (apiserver.py), this
    command runs where an admin's kubeconfig is, which may need its plugins (exec,
    auth-provider)."""

    def __init__(self) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        self.api = client.ApiClient()

    def call(self, request: Request) -> tuple[int, Any]:
        """Send one request (Transport.call): the status and the parsed JSON body; an
        error status raises ApiError, as ApiServer.call does."""
        method, url, headers, payload, _ = self.api.param_serialize(
            method=request.method,
            resource_path=request.path,
            query_params=request.query or [],
            header_params={"Content-Type": request.content_type, "Accept": "application/json"},
            body=request.body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=request.timeout
        )
        data = response.read()  # type: ignore[no-untyped-call]
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "", data.decode(errors="replace"))
        return response.status, (json.loads(data) if data else {})

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def run_migrate(args: argparse.Namespace) -> int:
    """The command: kubeconfig (or in-cluster) credentials, one line per TuningStudy."""
    ref = SecretKey.parse(args.default_storage_secret, "default")
    cluster = Cluster(OfficialClient())
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
