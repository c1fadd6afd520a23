"""Logging as Distribution's ``log`` section sets it: level, formatter, fields.

``text`` is logrus's ``key=value`` line, ``json`` its JSON object (``time``, ``level``,
``msg``), ``logstash`` the logstash event shape (``@timestamp``, ``@version``,
``message``); ``log.fields`` are on every line. Access lines are written by
:mod:`dockyard.api.observe` through the ``dockyard.access`` logger.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

LEVELS = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


# The id of the request being handled, for every line logged while handling it (set by
# the request middleware; each request runs in its own task, so ids never mix).
request_id: ContextVar[str | None] = ContextVar("dockyard_request_id", default=None)


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = getattr(record, "fields", None)
    fields = dict(extra) if isinstance(extra, dict) else {}
    current = request_id.get()
    if current is not None:
        fields.setdefault("http.request.id", current)
    return fields


class TextFormatter(logging.Formatter):
    """``time=... level=info msg="..." key=value``, the shape logrus's text output has."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        parts = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            **self.fields,
            **_record_fields(record),
        }
        if record.exc_info:
            parts["error"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_quote(value)}" for key, value in parts.items())


def _quote(value: Any) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:@+" for c in text):
        return text
    return json.dumps(text)


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            **self.fields,
            **_record_fields(record),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class LogstashFormatter(logging.Formatter):
    """A logstash event: ``@timestamp``, ``@version``, ``level``, ``message`` and the fields."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "@timestamp": _timestamp(record),
            "@version": "1",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            **self.fields,
            **_record_fields(record),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter_for(formatter: str, fields: dict[str, Any]) -> logging.Formatter:
    if formatter == "json":
        return JsonFormatter(fields)
    if formatter == "logstash":
        return LogstashFormatter(fields)
    return TextFormatter(fields)


def setup_logging(level: str, formatter: str, fields: dict[str, Any]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(formatter, fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
