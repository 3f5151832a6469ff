"""Log formatting for the operator: plain text or one JSON object per line.

Kopf attaches the object a message is about as `k8s_ref`; both formats show it, so a line
such as "Handler 'delete-study' succeeded" says which study it was.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["configure_logging"]


def _object(record: logging.LogRecord) -> dict[str, Any] | None:
    ref = getattr(record, "k8s_ref", None)
    return ref if isinstance(ref, dict) else None


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ref = _object(record)
        if ref is not None:
            where = (
                f"{ref.get('namespace')}/{ref.get('name')}"
                if ref.get("namespace")
                else ref.get("name")
            )
            record = logging.makeLogRecord(record.__dict__)
            record.msg = f"[{ref.get('kind')} {where}] {record.msg}"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = _object(record)
        if ref is not None:
            entry["object"] = {k: ref.get(k) for k in ("kind", "namespace", "name")}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
