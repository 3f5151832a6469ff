"""Creating, resuming and deleting the Optuna study of a TuningStudy, and who owns it.

An Optuna study records the TuningStudy that created or adopted it (OWNER_ATTR): a study of
another TuningStudy is never resumed, changed or deleted from here, and one made outside the
operator is taken over only on request (spec.adoptExistingStudy).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from optuna_operator.api import Direction
from optuna_operator.contract import (
    STUDY_ATTR_PREFIX,
    STUDY_START_TIME_ATTR,
    WARM_START_ATTR,
    WARM_START_COUNT_ATTR,
    from_optuna_direction,
    to_optuna_direction,
)

__all__ = [
    "LEGACY_ATTR",
    "OWNER_ATTR",
    "Claimed",
    "DirectionsMismatchError",
    "NewStudy",
    "NotOwnedError",
    "Owner",
    "WarmStartError",
    "claim_study",
    "create_study",
    "delete_owned_study",
    "find_or_create_study",
]

log = logging.getLogger(__name__)

# The TuningStudy (namespace, name, uid) that created or adopted the study.
OWNER_ATTR = f"{STUDY_ATTR_PREFIX}owner"
# Written by every operator version since 0.1.0, which recorded no owner.
LEGACY_ATTR = f"{STUDY_ATTR_PREFIX}operator_version"


class DirectionsMismatchError(Exception):
    """The spec's directions differ from those the Optuna study was created with."""


class WarmStartError(Exception):
    """The study named by spec.warmStart cannot be copied from."""


class NotOwnedError(Exception):
    """The study belongs to another TuningStudy, or was made outside the operator and the
    spec does not opt into adopting it; the message says which."""


@dataclass(frozen=True)
class Owner:
    """The TuningStudy an Optuna study belongs to, as recorded in its system attrs."""

    namespace: str
    name: str
    uid: str

    def to_attr(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    def same_resource(self, attr: object) -> bool:
        """Whether `attr` names this namespace/name (a re-created resource has a new uid)."""
        return (
            isinstance(attr, dict)
            and attr.get("namespace") == self.namespace
            and attr.get("name") == self.name
        )


@dataclass(frozen=True)
class NewStudy:
    """What a study is created with: written once, never changed afterwards."""

    name: str
    directions: tuple[Direction, ...]
    metric_names: list[str] | None = None
    enqueue: list[dict[str, Any]] | None = None
    warm_start: str | None = None
    warm_start_max: int | None = None  # copy at most this many, the most recent


@dataclass(frozen=True)
class Claimed:
    """What resuming a study tells: when it started, how many trials warm start copied."""

    start_time: datetime
    copied: int


def _warm_start_trials(
    storage: RDBStorage, source_name: str, n_objectives: int, most: int | None
) -> list[FrozenTrial]:
    """The COMPLETE trials of another study (the `most` recent ones), as new trials marked
    with where they came from."""
    try:
        source = optuna.load_study(study_name=source_name, storage=storage)
    except KeyError:
        raise WarmStartError(
            f"spec.warmStart.studyName {source_name!r} does not exist in this storage"
        ) from None
    if len(source.directions) != n_objectives:
        raise WarmStartError(
            f"spec.warmStart.studyName {source_name!r} has {len(source.directions)} objectives, "
            f"this study {n_objectives}"
        )
    complete = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    chosen = sorted(complete, key=lambda t: t.number)[-most:] if most else complete
    return [
        optuna.trial.create_trial(
            params=t.params,
            distributions=t.distributions,
            values=t.values,
            user_attrs={**t.user_attrs, WARM_START_ATTR: f"{source_name}#{t.number}"},
        )
        for t in chosen
    ]


def create_study(storage: RDBStorage, new: NewStudy) -> int | None:
    """The new study's id; None when another process created it first (only the creator
    may record itself as the owner)."""
    history = (
        _warm_start_trials(storage, new.warm_start, len(new.directions), new.warm_start_max)
        if new.warm_start
        else []
    )
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=new.name,
            directions=[to_optuna_direction(d) for d in new.directions],
        )
    except optuna.exceptions.DuplicatedStudyError:
        return None
    if new.metric_names:
        with warnings.catch_warnings():
            # Experimental since Optuna 3.2 and unchanged since; the dashboard uses it.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(new.metric_names)
    # Copied before anything is enqueued: the sampler sees the history from trial one.
    study.add_trials(history)
    storage.set_study_system_attr(study._study_id, WARM_START_COUNT_ATTR, len(history))
    for params in new.enqueue or []:
        study.enqueue_trial(params, skip_if_exists=True)
    log.info("Created Optuna study %s (%d trials copied)", new.name, len(history))
    return study._study_id


def find_or_create_study(
    storage: RDBStorage, new: NewStudy, before_create: Callable[[], None] | None
) -> tuple[int, bool]:
    """The study's id, and whether this call created it. `before_create` runs before a
    study is created and may refuse by raising."""
    try:
        return storage.get_study_id_from_name(new.name), False
    except KeyError:
        pass
    if before_create is not None:
        before_create()
    created_id = create_study(storage, new)
    if created_id is None:  # another reconcile created it meanwhile
        return storage.get_study_id_from_name(new.name), False
    return created_id, True


def _check_owner(name: str, owner: Owner, recorded: object, adopt: bool) -> None:
    """Raise NotOwnedError unless `owner` may resume the study that records `recorded`."""
    if owner.same_resource(recorded):
        return
    if isinstance(recorded, dict):
        raise NotOwnedError(
            f"Optuna study {name!r} belongs to TuningStudy "
            f"{recorded.get('namespace')}/{recorded.get('name')}; it is not resumed, changed "
            "or deleted from here: set spec.studyName to a new name"
        )
    if not adopt:
        raise NotOwnedError(
            f"Optuna study {name!r} already exists and was not created by a TuningStudy; set "
            "spec.adoptExistingStudy to true to take it over, or spec.studyName to a new name"
        )


def claim_study(
    storage: RDBStorage,
    study_id: int,
    new: NewStudy,
    attrs: dict[str, Any],
    owner: Owner | None,
    *,
    adopt: bool,
    created: bool,
) -> Claimed:
    """Check that the study may be resumed by `owner` with these directions, record the
    owner and `attrs`, and return when it started and how many trials warm start copied.
    `adopt`: a study that records no owner may be taken over; `created`: this process just
    created it."""
    system_attrs = storage.get_study_system_attrs(study_id)
    if owner is not None and not created:
        # Studies of operator 0.1.0 record no owner: the TuningStudy naming one claims it
        # once, as 0.1.0 would have resumed it.
        legacy = LEGACY_ATTR in system_attrs
        _check_owner(new.name, owner, system_attrs.get(OWNER_ATTR), adopt or legacy)
    stored = tuple(from_optuna_direction(d) for d in storage.get_study_directions(study_id))
    if stored != new.directions:
        raise DirectionsMismatchError(
            f"Optuna study {new.name!r} already exists with directions "
            f"{[d.value for d in stored]}, but the spec asks for "
            f"{[d.value for d in new.directions]}; set spec.studyName to a new name"
        )
    wanted: dict[str, Any] = {OWNER_ATTR: owner.to_attr()} if owner is not None else {}
    wanted.update({STUDY_ATTR_PREFIX + key: value for key, value in attrs.items()})
    for key, value in wanted.items():
        if system_attrs.get(key) != value:
            storage.set_study_system_attr(study_id, key, value)
    start = system_attrs.get(STUDY_START_TIME_ATTR)
    if start is None:
        # A study made outside the operator: its time budget starts now, once, so the
        # workers' deadline (part of their pod template) stays put.
        start = datetime.now(UTC).isoformat()
        storage.set_study_system_attr(study_id, STUDY_START_TIME_ATTR, start)
    copied = system_attrs.get(WARM_START_COUNT_ATTR, 0)
    return Claimed(datetime.fromisoformat(start), copied if isinstance(copied, int) else 0)


def delete_owned_study(storage: RDBStorage, name: str, owner: Owner | None) -> bool:
    """Delete the study; with an `owner`, only when it records exactly that owner (uid
    included: a resource that never ran it does not drop it). False when nothing was
    deleted."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return False
    if owner is not None:
        recorded = storage.get_study_system_attrs(study_id).get(OWNER_ATTR)
        if recorded != owner.to_attr():
            log.info("Kept Optuna study %s: it is not this resource's", name)
            return False
    storage.delete_study(study_id)
    log.info("Deleted Optuna study %s", name)
    return True
