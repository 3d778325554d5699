"""Structured logs: text or JSON lines, and one line per finished request."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

REQUEST_LOGGER = "splitserve.requests"
_FIELDS = "fields"  # the LogRecord attribute that carries structured fields


class TextFormatter(logging.Formatter):
    """The usual one-line format, with structured fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: Mapping[str, Any] = getattr(record, _FIELDS, {})
        return " ".join([line, *(f"{k}={v}" for k, v in fields.items())])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            **getattr(record, _FIELDS, {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Sets up the root logger on stderr; called once by the entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def log_request(fields: Mapping[str, Any]) -> None:
    """Writes the one line a finished request gets."""
    logging.getLogger(REQUEST_LOGGER).info("request finished", extra={_FIELDS: dict(fields)})
