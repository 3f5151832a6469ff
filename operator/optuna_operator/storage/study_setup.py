"""Creating, resuming and deleting the Optuna study of a TuningStudy, and who owns it.

An Optuna study records the TuningStudy that created or adopted it (OWNER_ATTR): a study of
another TuningStudy is never resumed, changed or deleted from here, and one made outside the
operator is taken over only on request (spec.adoptExistingStudy).

The checks here read and write a study's rows through StudyRecords: plain SQL in the
operator process (study_rows.py), RDBStorage in its Optuna child (optuna_child.py), which
creates studies (warm start included) and deletes them. No Optuna import here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Protocol

from optuna_operator.api import Direction
from optuna_operator.contract import (
    STUDY_ATTR_PREFIX,
    STUDY_START_TIME_ATTR,
    WARM_START_COUNT_ATTR,
    from_optuna_direction,
)

__all__ = [
    "LEGACY_ATTR",
    "OPTUNA_VERSION",
    "OWNER_ATTR",
    "Claimed",
    "DeletableRecords",
    "DirectionsMismatchError",
    "NewStudy",
    "NotOwnedError",
    "Owner",
    "StudyRecords",
    "WarmStartError",
    "claim_study",
    "delete_owned_study",
    "find_or_create_study",
]

log = logging.getLogger(__name__)

# The TuningStudy (namespace, name, uid) that created or adopted the study.
OWNER_ATTR = f"{STUDY_ATTR_PREFIX}owner"
# Written by every operator version since 0.1.0, which recorded no owner.
LEGACY_ATTR = f"{STUDY_ATTR_PREFIX}operator_version"
# The Optuna installed beside the operator, which its child creates studies with: read from
# the distribution's metadata, the same as optuna.__version__ without importing Optuna.
OPTUNA_VERSION = metadata.version("optuna")


class StudyRecords(Protocol):
    """The RDBStorage calls the checks here make (study_rows.StudyRows answers them in the
    operator process; directions may come back as Optuna's enum or its members' names)."""

    def get_study_id_from_name(self, study_name: str) -> int: ...

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]: ...

    def get_study_directions(self, study_id: int) -> Any: ...

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None: ...


class DeletableRecords(StudyRecords, Protocol):
    """RDBStorage in the Optuna child: deleting a study goes through Optuna's cascades."""

    def delete_study(self, study_id: int) -> None: ...


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

    @classmethod
    def from_attr(cls, attr: dict[str, str]) -> Owner:
        return cls(attr["namespace"], attr["name"], attr["uid"])

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

    def to_json(self) -> dict[str, Any]:
        """As the Optuna child reads it (directions by value)."""
        return {**asdict(self), "directions": [d.value for d in self.directions]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NewStudy:
        return cls(**{**raw, "directions": tuple(Direction(d) for d in raw["directions"])})


@dataclass(frozen=True)
class Claimed:
    """What resuming a study tells: when it started, how many trials warm start copied."""

    start_time: datetime
    copied: int


def find_or_create_study(
    storage: StudyRecords,
    new: NewStudy,
    before_create: Callable[[], None] | None,
    create: Callable[[NewStudy], int | None],
) -> tuple[int, bool]:
    """The study's id, and whether this call created it. `before_create` runs before a
    study is created and may refuse by raising; `create` makes it (the Optuna child's
    create_study: None when another process created it first)."""
    try:
        return storage.get_study_id_from_name(new.name), False
    except KeyError:
        pass
    if before_create is not None:
        before_create()
    created_id = create(new)
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
    storage: StudyRecords,
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


def delete_owned_study(storage: DeletableRecords, name: str, owner: Owner | None) -> bool:
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
