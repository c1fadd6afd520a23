"""Logging as Distribution's ``log`` section sets it: level, text/json format, fields."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LEVELS = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = getattr(record, "fields", None)
    return dict(extra) if isinstance(extra, dict) else {}


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


def setup_logging(level: str, formatter: str, fields: dict[str, Any]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(fields) if formatter in ("json", "logstash") else TextFormatter(fields)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))


class AccessLogger(AbstractAccessLogger):
    """One line per request, with what an operator looks for first."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path_qs,
            response.status,
            extra={
                "fields": {
                    "http.request.method": request.method,
                    "http.request.uri": request.path_qs,
                    "http.request.remoteaddr": request.remote,
                    "http.request.useragent": request.headers.get("User-Agent", ""),
                    "http.response.status": response.status,
                    "http.response.written": response.body_length,
                    "http.response.duration": f"{time:.6f}s",
                    # Which worker process answered: requests of one client spread over all.
                    "pid": os.getpid(),
                }
            },
        )
