"""Access lines and the ``log`` section, read back from a real server's stderr.

One line per request with its id, remote address, user, method, path, repository,
status, bytes and duration; ``log.formatter`` picks text, JSON or logstash;
``log.fields`` are on every line; ``log.accesslog.disabled`` turns the lines off.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard.logs import formatter_for, request_id
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
