"""The reconcile loop of one study: prepare -> observe -> decide -> act -> status."""

from __future__ import annotations

from datetime import UTC, datetime

from optuna_operator.api import TuningStudy
from optuna_operator.config import OperatorSettings
from optuna_operator.kube import Cluster
from optuna_operator.reconcile.act import Actor
from optuna_operator.reconcile.decide import decide
from optuna_operator.reconcile.model import Children, Outcome, StorageProblem
from optuna_operator.reconcile.observe import Observer
from optuna_operator.reconcile.prepare import Preparer, owner_of
from optuna_operator.reconcile.status import (
    build_status,
    storage_failure,
    storage_failure_status,
)
from optuna_operator.storage.study_store import (
    DirectionsMismatchError,
    NotOwnedError,
    StorageError,
    StoreRegistry,
    WarmStartError,
)

__all__ = ["Reconciler"]

# What prepare and observe raise when the storage or the study cannot be used: a condition says why.
STORAGE_PROBLEMS = (
    StorageProblem,
    StorageError,
    DirectionsMismatchError,
    WarmStartError,
    NotOwnedError,
)


class Reconciler:
    """Runs the five steps for one study at a time; holds the clients and the caches shared
    across studies (safe under concurrent reconciles)."""

    def __init__(self, cluster: Cluster, stores: StoreRegistry, settings: OperatorSettings) -> None:
        self.cluster = cluster
        self.stores = stores
        self.settings = settings
        self.preparer = Preparer(cluster, stores, settings)
        self.observer = Observer(cluster, stores, settings)
        self.actor = Actor(cluster, stores)

    def reconcile(
        self, study: TuningStudy, children: Children, now: datetime | None = None
    ) -> Outcome:
        """Prepare, observe, decide, act, and build the status of one study."""
        now = now or datetime.now(UTC)
        try:
            prepared = self.preparer.prepare(study)
            observed = self.observer.observe(study, prepared, children, now)
        except STORAGE_PROBLEMS as exc:
            status, events = storage_failure_status(study, *storage_failure(exc))
            return Outcome(status, events, retry=True)
        plan = decide(study, observed, self.settings.status_interval)
        acted = self.actor.act(study, observed, plan)
        status, events = build_status(study, observed, plan, acted)
        return Outcome(
            status,
            events,
            storage_url=observed.storage.url if observed.storage else None,
            requeue_after=plan.requeue_after,
            retry=acted.rejected is not None,
            applied=acted.applied,
            deleted=acted.deleted,
        )

    def delete_study(self, study: TuningStudy) -> bool:
        """Delete the Optuna study (deletionPolicy Delete) when this resource owns it; False
        when it did not exist or belongs to someone else."""
        storage = self.preparer.resolve_storage(study)
        return self.stores.delete_study(storage.url, study.study_name, owner_of(study))

    def forget(self, study: TuningStudy) -> None:
        """Drop what is cached for a deleted study; its namespace's credentials are read
        again (a namespace being deleted deletes its studies, and one re-created under the
        same name must not reuse the old credentials or schema)."""
        self.preparer.forget(study)
        self.actor.forget(study)
        self.stores.forget(study.study_name)

    def close(self) -> None:
        """Close what the reconciler opened itself (the admin engines)."""
        self.preparer.close()
