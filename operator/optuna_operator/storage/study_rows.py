"""An Optuna study's own rows (its id, directions and system attributes, the schema's
version), read and written with plain SQL in the operator process.

These are the RDBStorage calls a reconcile makes on every study it resumes; answering them
here keeps Optuna (and numpy with it) out of the operator's memory. What needs Optuna itself
(creating a study and its tables, deleting one, failing stale trials) runs in the operator's
child process (optuna_child.py) on the same tables.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

__all__ = ["StudyRows"]


class StudyRows:
    """One storage URL's study rows, on an unpooled engine: what RDBStorage answers for
    these calls, without Optuna. Values are stored as Optuna stores them (json.dumps)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def schema_version(self) -> str | None:
        """The Alembic revision of the storage's Optuna tables; None when they were never
        created (no `alembic_version` table where the search path looks)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return str(value) if value is not None else None

    def get_study_id_from_name(self, study_name: str) -> int:
        """The study's id; KeyError when there is none of that name (as RDBStorage)."""
        with self.engine.connect() as conn:
            study_id = conn.execute(
                text("SELECT study_id FROM studies WHERE study_name = :name"), {"name": study_name}
            ).scalar()
        if study_id is None:
            raise KeyError(f"No such study {study_name}.")
        return int(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT key, value_json FROM study_system_attributes WHERE study_id = :sid"),
                {"sid": study_id},
            ).all()
        return {key: json.loads(value) for key, value in rows}

    def get_study_directions(self, study_id: int) -> list[str]:
        """The names of Optuna's StudyDirection members ('MINIMIZE', 'MAXIMIZE'), in
        objective order; contract.from_optuna_direction reads them."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT direction FROM study_directions WHERE study_id = :sid "
                    "ORDER BY objective"
                ),
                {"sid": study_id},
            ).all()
        return [_enum_name(direction) for (direction,) in rows]

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        """Write one system attribute; KeyError when the study does not exist."""
        encoded = json.dumps(value)
        try:
            with self.engine.begin() as conn:
                found = conn.execute(
                    text("SELECT 1 FROM studies WHERE study_id = :sid"), {"sid": study_id}
                ).first()
                if found is None:
                    raise KeyError(f"No study with study_id {study_id} exists.")
                updated = conn.execute(
                    text(
                        "UPDATE study_system_attributes SET value_json = :value "
                        "WHERE study_id = :sid AND key = :key"
                    ),
                    {"sid": study_id, "key": key, "value": encoded},
                ).rowcount
                if not updated:
                    conn.execute(
                        text(
                            "INSERT INTO study_system_attributes (study_id, key, value_json) "
                            "VALUES (:sid, :key, :value)"
                        ),
                        {"sid": study_id, "key": key, "value": encoded},
                    )
        except IntegrityError:
            # Another writer added the same key meanwhile: RDBStorage ignores this too.
            pass


def _enum_name(value: object) -> str:
    """A stored enum as its member's name, whether the driver gives a string or an enum."""
    return str(getattr(value, "name", value))
