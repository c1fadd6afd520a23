"""Logging as Distribution's ``log`` section sets it: level, formatter, fields.

``text`` is logrus's ``key=value`` line, ``json`` its JSON object (``time``, ``level``,
``msg``), ``logstash`` the logstash event shape (``@timestamp``, ``@version``,
``message``); ``log.fields`` are on every line. Access lines are written by
:mod:`dockyard.api.observe` through the ``dockyard.access`` logger.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sys
import threading
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import asyncio

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


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _timestamp(record: logging.LogRecord) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, with
    the date and time of day made once per second rather than once per line."""
    created = record.created
    seconds = math.floor(created)
    # Rounded to the microsecond half to even first, as ``fromtimestamp`` does.
    micro = round((created - seconds) * 1e6)
    if micro >= 1_000_000:
        seconds += 1
        micro -= 1_000_000
    return f"{_second(seconds)}.{micro // 1000:03d}+00:00"


# The id of the request being handled, for every line logged while handling it (set by
# the request middleware; each request runs in its own task, so ids never mix): the id,
# or the request's record, whose str() makes it when a line first asks.
request_id: ContextVar[object | None] = ContextVar("dockyard_request_id", default=None)


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = getattr(record, "fields", None)
    fields = dict(extra) if isinstance(extra, dict) else {}
    current = request_id.get()
    if current is not None:
        fields.setdefault("http.request.id", str(current))
    return fields


class TextFormatter(logging.Formatter):
    """``time=... level=info msg="..." key=value``, the shape logrus's text output has."""

    # Keys every line starts with, before ``log.fields``.
    LEADING = frozenset({"time", "level", "msg"})

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields
        # ``log.fields`` never change: quoted once, unless one of them takes the place
        # of a leading key (the general path below keeps that case as it was).
        self._fixed: str | None = None
        if self.LEADING.isdisjoint(fields):
            self._fixed = "".join(f" {key}={_quote(value)}" for key, value in fields.items())

    def format(self, record: logging.LogRecord) -> str:
        own = _record_fields(record)
        if (
            self._fixed is not None
            and self.LEADING.isdisjoint(own)
            and self.fields.keys().isdisjoint(own)
            and not (record.exc_info and ("error" in own or "error" in self.fields))
        ):
            # The same line as the general path, which a line's own fields could reorder
            # only by sharing a key with the leading or fixed ones.
            line = (
                f"time={_timestamp(record)} level={_quote(record.levelname.lower())}"
                f" msg={_quote(record.getMessage())}{self._fixed}"
            )
            if own:
                line += "".join(f" {key}={_quote(value)}" for key, value in own.items())
            if record.exc_info:
                line += f" error={_quote(self.formatException(record.exc_info))}"
            return line
        parts = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            **self.fields,
            **own,
        }
        if record.exc_info:
            parts["error"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_quote(value)}" for key, value in parts.items())


# A value made only of these goes out bare, any other quoted. ``\w`` is exactly the
# characters ``str.isalnum`` accepts, and the underscore. One match per value: a check
# character by character cost more than the rest of an access line together.
_BARE = re.compile(r"[\w\-./:@+]+")


def _quote(value: Any) -> str:
    text = str(value)
    if _BARE.fullmatch(text):
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


class RecordsFromTemplate:
    """Records of one logger at one level from one place in the code, each a copy of a
    template made once with the rest of what changes set on it: ``Logger.info`` would
    look up the caller's frame and work out file, module, thread and process names again
    for every line, and a worker logs one access line per request."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger = logger
        self.level = level
        template = logger.makeRecord(logger.name, level, __file__, 0, "", (), None)
        self._template = dict(template.__dict__)
        # Where logging's own clock starts, for ``relativeCreated``.
        self._start = template.created - template.relativeCreated / 1000

    def log(self, msg: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        now = time.time()
        record = logging.LogRecord.__new__(logging.LogRecord)
        record.__dict__.update(self._template)
        record.msg = msg
        record.args = args
        record.created = now
        record.msecs = int((now - int(now)) * 1000) + 0.0
        record.relativeCreated = (now - self._start) * 1000
        record.thread = threading.get_ident()
        record.fields = fields
        self.logger.handle(record)


class TurnBatchingHandler(logging.StreamHandler[TextIO]):
    """Writes the lines an event loop's thread logs during one turn of the loop in one
    write, at the start of the next turn; lines from any other thread go out at once,
    after those waiting, so the stream keeps the order they were logged in.

    Under load a worker ends many requests per turn, each with its access line: one
    system call each cost more than formatting the line.
    """

    # Past this many waiting characters they are written without waiting for the turn.
    LIMIT = 64 * 1024

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._waiting_size = 0
        # The loop whose next turn writes the waiting lines. A line from another loop
        # schedules its own write: the first may have closed before its next turn.
        self._writing_loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (``Handler.handle``).
        try:
            line = self.format(record) + self.terminator
            loop: asyncio.AbstractEventLoop | None = None
            # No loop runs where asyncio was never imported, as in the workers' small
            # parent, which logs rarely and need not load it for that.
            imported = sys.modules.get("asyncio")
            if imported is not None:
                try:
                    loop = imported.get_running_loop()
                except RuntimeError:
                    pass
            self._waiting.append(line)
            self._waiting_size += len(line)
            if loop is None or self._waiting_size >= self.LIMIT:
                self._write_waiting()
            elif loop is not self._writing_loop:
                loop.call_soon(self.flush)
                self._writing_loop = loop
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - a handler reports its own failures, as logging's do
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_waiting()
        except Exception:  # noqa: BLE001 - see below
            # A stream that cannot be written (a reader gone) loses the lines, as each
            # line's own write would have lost it; the loop's turn goes on.
            self._waiting.clear()
            self._waiting_size = 0
        finally:
            self.release()

    def _write_waiting(self) -> None:
        self._writing_loop = None
        if not self._waiting:
            return
        text = "".join(self._waiting)
        self._waiting.clear()
        self._waiting_size = 0
        self.stream.write(text)
        self.stream.flush()


def setup_logging(level: str, formatter: str, fields: dict[str, Any]) -> None:
    handler = TurnBatchingHandler(sys.stderr)
    handler.setFormatter(formatter_for(formatter, fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
