"""What the SDK and the CLI show of a study: a TuningStudy as read from the API, and its
events. Kept apart from client.py so that formatting.py (which renders them) and client.py
(which prints a progress line) each import it and not each other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from optuna_operator.api import TuningStudy, TuningStudyStatus
from optuna_operator.lifecycle.stopping import FINISHED_PHASES

__all__ = ["EventLine", "StudyView"]


@dataclass(frozen=True)
class StudyView:
    """A TuningStudy as read from the API: the typed object and its creation time."""

    study: TuningStudy
    created: datetime | None = None

    @property
    def name(self) -> str:
        return self.study.metadata.name

    @property
    def namespace(self) -> str:
        return self.study.metadata.namespace

    @property
    def status(self) -> TuningStudyStatus:
        return self.study.status

    @property
    def phase(self) -> str:
        return self.study.status.phase or "Pending"

    @property
    def done(self) -> bool:
        return self.phase in FINISHED_PHASES

    def condition(self, type_: str) -> Any:
        """The condition of that type, or None."""
        return next((c for c in self.status.conditions if c.type == type_), None)

    @classmethod
    def from_api(cls, obj: dict[str, Any]) -> StudyView:
        """Parse an object as the API server returns it."""
        created = obj.get("metadata", {}).get("creationTimestamp")
        when = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
        return cls(TuningStudy.model_validate(obj), when)


@dataclass(frozen=True)
class EventLine:
    """One Kubernetes event about a study (reason NewBestTrial, CreatedJob, Succeeded, ...)."""

    time: datetime | None
    type: str
    reason: str
    message: str
    count: int = 1
