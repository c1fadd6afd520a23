"""Access lines and the ``log`` section, read back from a real server's stderr.

One line per request with its id, remote address, user, method, path, repository,
status, bytes and duration; ``log.formatter`` picks text, JSON or logstash;
``log.fields`` are on every line; ``log.accesslog.disabled`` turns the lines off.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard.logs import (
    RecordsFromTemplate,
    TextFormatter,
    TurnBatchingHandler,
    _quote,
    _timestamp,
    formatter_for,
    request_id,
)
from tests.auth.support import basic, htpasswd_config
from tests.support.images import push_blob, sha256_digest
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]

FIELDS = {"service": "registry", "environment": "staging"}
_TEXT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_text(line: str) -> dict[str, str]:
    """A logrus text line, ``key=value`` with JSON-quoted values where needed."""
    return {
        key: json.loads(value) if value.startswith('"') else value
        for key, value in _TEXT_PAIR.findall(line)
    }


def log_entries(server: ServerProcess, formatter: str) -> list[dict[str, Any]]:
    entries = []
    for line in server.log().splitlines():
        if formatter == "text":
            if line.startswith("time="):
                entries.append(parse_text(line))
        elif line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def access_lines(server: ServerProcess, formatter: str) -> list[dict[str, Any]]:
    return [entry for entry in log_entries(server, formatter) if "http.request.id" in entry]


def own_lines(server: ServerProcess, formatter: str, count: int) -> list[dict[str, Any]]:
    """The access lines of this test's requests (not the readiness probe's), once
    ``count`` of them are there: a line is written just after its response is sent."""
    deadline = time.monotonic() + 20
    while True:
        lines = [
            line
            for line in access_lines(server, formatter)
            if line.get("http.request.useragent") in ("log-test/1.0", "log-test/anonymous")
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def do_requests(server: ServerProcess, auth: str | None = None) -> tuple[str, bytes]:
    """GET /v2/, push one blob to logs/app, and look for a missing manifest."""
    headers = {"Authorization": auth} if auth else {}
    data = b"access log test blob\n" * 100
    with httpx.Client(timeout=30, headers={**headers, "User-Agent": "log-test/1.0"}) as client:
        assert client.get(server.url + "/v2/").status_code == 200
        push_blob(client, server.url, "logs/app", data)
        missing = client.get(server.url + "/v2/logs/app/manifests/nope")
        assert missing.status_code == 404
        pulled = client.get(f"{server.url}/v2/logs/app/blobs/{sha256_digest(data)}")
        assert pulled.content == data
    return "logs/app", data


@pytest.mark.parametrize("formatter", ["json", "text", "logstash"])
def test_one_access_line_per_request(server_factory: ServerFactory, formatter: str) -> None:
    server = server_factory(
        config={
            "log": {"level": "warn", "formatter": formatter, "fields": FIELDS},
            "dockyard": {"workers": 2},
        }
    )
    repository, data = do_requests(server)
    lines = own_lines(server, formatter, 5)
    # GET /v2/, POST + PUT of the blob, the missing manifest, the blob pull.
    assert len(lines) == 5, lines
    assert len({line["http.request.id"] for line in lines}) == 5
    message = "message" if formatter == "logstash" else "msg"
    for line in lines:
        for key, expected in FIELDS.items():
            assert line[key] == expected
        assert line["level"] == "info"
        assert line["http.request.remoteaddr"] == "127.0.0.1"
        assert line["http.request.useragent"] == "log-test/1.0"
        assert re.fullmatch(r"\d+\.\d{6}s", str(line["http.response.duration"]))
        assert line[message].startswith(line["http.request.method"] + " ")
        if formatter == "logstash":
            assert line["@version"] == "1"
            assert "@timestamp" in line
        else:
            assert "time" in line
    base, post, put, missing, pull = lines
    assert (base["http.request.method"], base["http.request.uri"]) == ("GET", "/v2/")
    assert int(base["http.response.status"]) == 200
    assert "vars.name" not in base
    assert (post["http.request.method"], int(post["http.response.status"])) == ("POST", 202)
    assert (put["http.request.method"], int(put["http.response.status"])) == ("PUT", 201)
    assert int(put["http.request.contentlength"]) == len(data)
    assert int(missing["http.response.status"]) == 404
    assert missing["http.request.uri"] == "/v2/logs/app/manifests/nope"
    assert int(missing["http.response.written"]) > 0  # the error body
    assert int(pull["http.response.written"]) == len(data)
    for line in (post, put, missing, pull):
        assert line["vars.name"] == repository
    # No user: the registry is open.
    assert all("auth.user.name" not in line for line in lines)


def test_access_lines_name_the_signed_in_user(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    config = htpasswd_config(tmp_path)
    config["log"] = {"formatter": "json", "level": "error"}
    config["dockyard"]["workers"] = 1
    server = server_factory(config=config)
    with httpx.Client(timeout=30, headers={"User-Agent": "log-test/1.0"}) as client:
        anonymous = client.get(server.url + "/v2/")
        assert anonymous.status_code == 401
        signed_in = client.get(
            server.url + "/v2/proj/app/tags/list",
            headers={"Authorization": basic("writer", "writer-pw")},
        )
        assert signed_in.status_code in (200, 404)
    lines = own_lines(server, "json", 2)
    assert len(lines) == 2
    challenged, listed = lines
    assert challenged["http.response.status"] == 401
    assert "auth.user.name" not in challenged
    assert listed["auth.user.name"] == "writer"
    assert listed["vars.name"] == "proj/app"


def test_accesslog_disabled_keeps_other_lines(server_factory: ServerFactory) -> None:
    server = server_factory(
        config={
            "log": {
                "level": "info",
                "formatter": "json",
                "fields": FIELDS,
                "accesslog": {"disabled": True},
            },
            "dockyard": {"workers": 1},
        }
    )
    do_requests(server)
    # A server that logs access lines writes them within this time; this one must not.
    time.sleep(0.5)
    entries = log_entries(server, "json")
    assert access_lines(server, "json") == []
    # The server's own lines still come, with the fields, at the level asked for.
    listening = [entry for entry in entries if entry["msg"].startswith("listening on")]
    assert listening and listening[0]["service"] == "registry"


def test_log_level_filters_the_servers_own_lines(server_factory: ServerFactory) -> None:
    server = server_factory(
        config={"log": {"level": "error", "formatter": "text"}, "dockyard": {"workers": 1}}
    )
    do_requests(server)
    # Access lines are independent of the level, as Distribution's access log is.
    assert len(own_lines(server, "text", 5)) == 5
    entries = log_entries(server, "text")
    assert not [
        entry for entry in entries if entry["level"] == "info" and "http.request.id" not in entry
    ]


@pytest.mark.parametrize("formatter", ["json", "text", "logstash"])
def test_lines_logged_while_handling_a_request_carry_its_id(formatter: str) -> None:
    handler_formatter = formatter_for(formatter, dict(FIELDS))
    record = logging.LogRecord("dockyard", logging.ERROR, __file__, 1, "boom", None, None)
    outside = handler_formatter.format(record)
    token = request_id.set("4f1c-request")
    try:
        inside = handler_formatter.format(record)
    finally:
        request_id.reset(token)
    parse: Callable[[str], dict[str, Any]] = parse_text if formatter == "text" else json.loads
    assert "http.request.id" not in parse(outside)
    assert parse(inside)["http.request.id"] == "4f1c-request"
    assert parse(inside)["service"] == "registry"


def test_a_stopped_worker_has_written_its_last_lines(server_factory: ServerFactory) -> None:
    # Lines wait for the end of the event loop's turn: once the server has stopped, every
    # access line is in its log, written by a later turn or by the worker's flush as it
    # exits. (The unit tests below hold the flush itself.)
    server = server_factory(config={"log": {"formatter": "json"}, "dockyard": {"workers": 2}})
    do_requests(server)
    server.stop()
    lines = [
        line
        for line in access_lines(server, "json")
        if line.get("http.request.useragent") == "log-test/1.0"
    ]
    assert len(lines) == 5, lines


def test_a_value_is_bare_exactly_when_each_character_is_alphanumeric_or_allowed() -> None:
    # The rule logrus's text lines follow here: quoted unless made only of these.
    for code in range(0x110000):
        char = chr(code)
        bare = char.isalnum() or char in "-_./:@+"
        assert (_quote(char) == char) is bare, hex(code)
    assert _quote("") == '""'
    assert _quote("/v2/team/app/manifests/v1.2") == "/v2/team/app/manifests/v1.2"
    assert _quote("GET /v2/ 200") == '"GET /v2/ 200"'
    assert _quote('a"b') == '"a\\"b"'


def test_the_timestamp_is_isoformat_to_the_millisecond() -> None:
    rng = random.Random(5)
    moments = [rng.uniform(0, 4e9) for _ in range(20_000)]
    # Near the edges: a millisecond's, a second's, and rounding to the microsecond.
    for base in (1764692572, 1, 2**31 - 1):
        for fraction in (
            0.0,
            0.0004995,
            0.0005,
            0.1239996,
            0.9994999,
            0.9995,
            0.9999995,
            0.99999951,
        ):
            moments.append(base + fraction)
            moments.append(math.nextafter(base + fraction, 0))
            moments.append(math.nextafter(base + fraction, math.inf))
    record = logging.LogRecord("dockyard", logging.INFO, __file__, 1, "x", None, None)
    for moment in moments:
        record.created = moment
        expected = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
        assert _timestamp(record) == expected, repr(moment)


def _general_text_line(fields: dict[str, Any], record: logging.LogRecord) -> str:
    """What a text line is, key by key: later keys take an earlier key's place."""
    parts = {
        "time": _timestamp(record),
        "level": record.levelname.lower(),
        "msg": record.getMessage(),
        **fields,
        **getattr(record, "fields", {}),
    }
    if record.exc_info:
        parts["error"] = logging.Formatter().formatException(record.exc_info)
    return " ".join(f"{key}={_quote(value)}" for key, value in parts.items())


@pytest.mark.parametrize(
    "fixed",
    [{}, {"service": "registry", "environment": "staging"}, {"msg": "fixed"}, {"error": "x"}],
)
@pytest.mark.parametrize(
    "own",
    [
        {},
        {"http.request.id": "7b0d", "http.request.uri": "/v2/a b", "pid": 4121},
        {"service": "other"},
        {"level": "custom", "vars.name": "team/app"},
        {"error": "own"},
    ],
)
@pytest.mark.parametrize("failed", [False, True])
def test_a_text_line_is_the_same_whichever_way_it_is_made(
    fixed: dict[str, Any], own: dict[str, Any], failed: bool
) -> None:
    exc_info = None
    if failed:
        try:
            raise ValueError("broken")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(
        "dockyard", logging.WARNING, __file__, 1, "%s done", ("it",), exc_info
    )
    record.fields = own
    assert TextFormatter(dict(fixed)).format(record) == _general_text_line(fixed, record)


class _Writes(io.StringIO):
    """A stream that counts the writes it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"dockyard.test.{id(handler)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


def _batched() -> tuple[_Writes, TurnBatchingHandler, logging.Logger]:
    """A logger writing bare messages through a batching handler to a counted stream."""
    stream = _Writes()
    handler = TurnBatchingHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return stream, handler, _logger(handler)


def test_lines_of_one_turn_of_the_loop_go_out_in_one_write_in_order() -> None:
    stream, handler, logger = _batched()

    async def turn() -> None:
        for number in range(5):
            logger.info("line %d", number)
        # Nothing is written before the turn ends.
        assert stream.writes == 0
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stream.writes == 1
        # A line from another thread goes out at once, after those still waiting.
        logger.info("line 5")
        await asyncio.to_thread(logger.info, "from a thread")
        assert stream.getvalue().splitlines()[-2:] == ["line 5", "from a thread"]
        logger.info("last")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(turn())
    finally:
        loop.close()
    # Whatever the loop's last turn left waiting, flushing writes it (a worker flushes
    # before it exits), and nothing twice.
    handler.flush()
    assert stream.getvalue().splitlines() == [
        *(f"line {number}" for number in range(6)),
        "from a thread",
        "last",
    ]
    # Outside any loop a line is written at once.
    writes = stream.writes
    logger.info("no loop")
    assert stream.writes == writes + 1


def test_a_turn_with_many_lines_writes_them_before_its_end() -> None:
    stream, _, logger = _batched()
    line = "x" * 1000

    async def turn() -> None:
        for _ in range(200):
            logger.info(line)
        # 200 KB: written in pieces of the handler's limit, not held for the turn.
        assert stream.writes >= 200_000 // TurnBatchingHandler.LIMIT
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert stream.getvalue() == (line + "\n") * 200


def test_lines_logged_from_threads_at_once_all_arrive_whole() -> None:
    stream, handler, logger = _batched()

    async def many() -> None:
        def log_some(thread: int) -> None:
            for number in range(200):
                logger.info("thread %d line %d", thread, number)

        for number in range(200):
            logger.info("loop line %d", number)
            if number == 100:
                await asyncio.gather(*(asyncio.to_thread(log_some, t) for t in range(4)))
        await asyncio.sleep(0)

    asyncio.run(many())
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1000
    assert [line for line in lines if line.startswith("loop")] == [
        f"loop line {number}" for number in range(200)
    ]
    for thread in range(4):
        assert [line for line in lines if line.startswith(f"thread {thread} ")] == [
            f"thread {thread} line {number}" for number in range(200)
        ]


def test_lines_left_by_a_loop_that_closed_do_not_hold_back_another_loops() -> None:
    stream, _, logger = _batched()

    # A loop that stops in the turn that logged a line leaves it waiting: the write
    # scheduled for its next turn never runs.
    ended = asyncio.new_event_loop()
    ended.call_soon(logger.info, "from a loop now closed")
    ended.call_soon(ended.stop)
    ended.run_forever()
    ended.close()
    assert stream.writes == 0

    async def later() -> None:
        logger.info("from the next loop")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stream.getvalue().splitlines() == ["from a loop now closed", "from the next loop"]

    asyncio.run(later())


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_record_from_the_template_is_what_logging_would_make() -> None:
    kept = _Kept()
    logger = _logger(kept)
    records = RecordsFromTemplate(logger, logging.INFO)
    before = time.time()
    records.log("%s %s %s", ("GET", "/v2/", 200), {"http.route": "base"})
    logger.info("%s %s %s", "GET", "/v2/", 200, extra={"fields": {"http.route": "base"}})
    made, logged = kept.records
    assert made.__dict__.keys() == logged.__dict__.keys()
    assert made.getMessage() == logged.getMessage() == "GET /v2/ 200"
    for name in ("name", "levelno", "levelname", "fields", "process", "processName", "thread"):
        assert getattr(made, name) == getattr(logged, name), name
    assert before <= made.created <= logged.created
    assert made.msecs == int((made.created - int(made.created)) * 1000)
    assert 0 <= logged.relativeCreated - made.relativeCreated < 1000
    # Each record is its own: later ones do not change earlier ones.
    records.log("%s", ("second",), {"http.route": "other"})
    assert made.getMessage() == "GET /v2/ 200" and made.fields == {"http.route": "base"}


def test_records_from_the_template_follow_the_loggers_level_and_logging_disable() -> None:
    kept = _Kept()
    logger = _logger(kept)
    records = RecordsFromTemplate(logger, logging.INFO)
    logger.setLevel(logging.WARNING)
    records.log("quiet", (), {})
    logger.setLevel(logging.INFO)
    logging.disable(logging.INFO)
    try:
        records.log("disabled", (), {})
    finally:
        logging.disable(logging.NOTSET)
    records.log("heard", (), {})
    assert [record.getMessage() for record in kept.records] == ["heard"]
