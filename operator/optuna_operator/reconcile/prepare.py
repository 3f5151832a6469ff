"""Step 1, prepare: what the database must hold before it can be read. The namespace's
PostgreSQL roles, schema and Secret (default storage) and the Optuna study itself are set up
here on first sight, and only checked afterwards (cached): observing a study that does not
exist yet has nothing to read, so this is the one step before observe that may write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from optuna_operator.api import TuningStudy
from optuna_operator.apiserver import ApiError
from optuna_operator.config import OPERATOR_VERSION, OperatorSettings
from optuna_operator.kube import Cluster
from optuna_operator.lifecycle.conditions import Reason
from optuna_operator.reconcile.model import StorageProblem, StorageRef
from optuna_operator.storage.study_store import OPTUNA_VERSION, Owner, StoreRegistry, StudyHandle
from optuna_operator.storage.tenancy import Tenancy, TenancyError, TenantLimits

__all__ = ["SECRET_TTL_SECONDS", "Prepared", "Preparer", "owner_of"]

# Secret values read for storage URLs are reused this long: a rotated password reaches new
# workers within a minute, and running studies do not GET a Secret on every refresh.
SECRET_TTL_SECONDS = 60.0


def owner_of(study: TuningStudy) -> Owner:
    """The owner record of a TuningStudy, kept with its Optuna study."""
    meta = study.metadata
    return Owner(meta.namespace, meta.name, meta.uid or "")


@dataclass(frozen=True)
class Prepared:
    """The storage a study uses and its Optuna study, both known to exist."""

    storage: StorageRef
    handle: StudyHandle


class Preparer:
    """Step 1, prepare: resolves a study's storage (the user's Secret, or the namespace's own
    role set up with the admin URL) and creates or resumes its Optuna study. Holds the
    tenancy and the small Secret cache shared across studies."""

    def __init__(self, cluster: Cluster, stores: StoreRegistry, settings: OperatorSettings) -> None:
        self.cluster = cluster
        self.stores = stores
        self.settings = settings
        # A rotated password leaves its old URL behind: drop its storage and caches.
        self.tenancy = Tenancy(
            cluster,
            on_rotate=lambda url: self.stores.drop_url(url),
            pooler=settings.worker_pooler,
            limits=TenantLimits(
                connection_limit=settings.tenant_connection_limit,
                statement_timeout_ms=settings.tenant_statement_timeout_ms,
                idle_in_transaction_timeout_ms=settings.tenant_idle_in_transaction_timeout_ms,
            ),
        )
        # (namespace, name, key) -> (value, read at monotonic time)
        self._secrets: dict[tuple[str, str, str], tuple[str | None, float]] = {}

    def prepare(self, study: TuningStudy) -> Prepared:
        """The study's storage and Optuna study, set up when missing; raises on storage
        problems (a condition says why)."""
        storage = self.resolve_storage(study)
        warm = study.spec.warm_start
        handle = self.stores.ensure_study(
            storage.url,
            study.study_name,
            list(study.spec.directions),
            study.spec.metric_names,
            study.spec.enqueue_trials,
            {
                "generation": study.metadata.generation,
                "operator_version": OPERATOR_VERSION,
                "optuna_version": OPTUNA_VERSION,
            },
            warm_start=warm.study_name if warm else None,
            warm_start_max=warm.max_trials if warm else None,
            owner=owner_of(study),
            adopt=study.spec.adopt_existing_study,
            before_create=(lambda: self._refuse_legacy(study)) if storage.tenant else None,
        )
        return Prepared(storage, handle)

    def forget(self, study: TuningStudy) -> None:
        """Drop what is cached for a deleted study; its namespace's credentials are read
        again (a namespace re-created under the same name must not reuse the old ones)."""
        self.tenancy.forget(study.metadata.namespace)

    def close(self) -> None:
        """Close the admin engines."""
        self.tenancy.close()

    def resolve_storage(self, study: TuningStudy) -> StorageRef:
        """The storage URL of a study and the Secret its pods read it from: the user's
        Secret (spec.storage), or the namespace's own role, set up with the admin URL."""
        namespace = study.metadata.namespace
        if study.spec.storage is not None:
            ref = study.spec.storage.secret_ref
            url = self._read_secret(namespace, ref.name, ref.key)
            return StorageRef(ref.name, ref.key, url)
        try:
            creds = self.tenancy.ensure(namespace, self._admin_url())
        except TenancyError as exc:
            raise StorageProblem(Reason(exc.reason), exc.message) from None
        return StorageRef(creds.secret, creds.url_key, creds.url, tenant=creds)

    def _admin_url(self) -> str:
        default = self.settings.default_storage
        if default is None:
            raise StorageProblem(
                Reason.NO_STORAGE_CONFIGURED,
                "spec.storage is unset and the operator has no default storage; set "
                "spec.storage.secretRef to a Secret holding a postgresql+psycopg2:// URL",
            )
        return self._read_secret(default.namespace, default.name, default.key)

    def _read_secret(self, namespace: str, name: str, key: str) -> str:
        cache_key = (namespace, name, key)
        cached = self._secrets.get(cache_key)
        if cached is not None and time.monotonic() - cached[1] < SECRET_TTL_SECONDS:
            value = cached[0]
        else:
            try:
                value = self.cluster.read_secret_value(namespace, name, key)
            except ApiError as exc:
                if exc.status in (403, 404):
                    self._secrets.pop(cache_key, None)
                    raise StorageProblem(
                        Reason.SECRET_NOT_FOUND,
                        f"Secret {name} not found in namespace {namespace}; create it with key "
                        f"{key!r} holding the storage URL",
                    ) from None
                raise
            if value:  # a missing key is looked up again next time: the user may add it
                self._secrets[cache_key] = (value, time.monotonic())
        if not value:
            raise StorageProblem(
                Reason.SECRET_KEY_MISSING,
                f"Secret {name} in namespace {namespace} has no key {key!r}; set "
                "spec.storage.secretRef.key or add the key",
            )
        return value

    def _refuse_legacy(self, study: TuningStudy) -> None:
        """A study of operator 0.1.0 still under the admin role is not shadowed by a new,
        empty one: the user is told to migrate it."""
        try:
            legacy = self.tenancy.legacy_study_exists(self._admin_url(), study.study_name)
        except TenancyError as exc:
            raise StorageProblem(Reason(exc.reason), exc.message) from None
        if not legacy:
            return
        raise StorageProblem(
            Reason.LEGACY_STUDY_NOT_MIGRATED,
            f"Optuna study {study.study_name} was made by operator 0.1.0 in the shared schema; "
            f"move it into namespace {study.metadata.namespace}'s schema with `optuna-operator "
            f"migrate --namespace {study.metadata.namespace}` (README: Upgrading from 0.1.0)",
        )
