"""Route names and repositories of request paths, as the access log and metrics see them,
and the record each request gets."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from dockyard import logs
from dockyard.api import observe, routes
from dockyard.api.app import create_app
from dockyard.api.observe import classify, new_request_id
from dockyard.config.model import Config
from dockyard.errors import NameUnknown, Unsupported
from dockyard.metrics import ROUTES
from dockyard.schema import validate

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("path", "route", "repository"),
    [
        ("/v2", "base", None),
        ("/v2/", "base", None),
        ("/v2/_catalog", "catalog", None),
        ("/v2/team/app/tags/list", "tags", "team/app"),
        ("/v2/team/app/manifests/v1", "manifest", "team/app"),
        (f"/v2/team/app/manifests/{DIGEST}", "manifest", "team/app"),
        ("/v2/team/app/blobs/uploads/", "blob_upload", "team/app"),
        ("/v2/team/app/blobs/uploads/0b4e-11", "blob_upload", "team/app"),
        (f"/v2/team/app/blobs/{DIGEST}", "blob", "team/app"),
        # A repository named like a route's suffix is told apart as the router does.
        (f"/v2/a/blobs/blobs/{DIGEST}", "blob", "a/blobs"),
        ("/v2/a/manifests/manifests/v1", "manifest", "a/manifests"),
        (f"/v2/team/app/referrers/{DIGEST}", "referrers", "team/app"),
        ("/v2/_dockyard/gc", "extension", None),
        ("/v2/_dockyard/repositories/team/app", "extension", "team/app"),
        ("/ui/", "ui", None),
        ("/ui/repositories/team/app", "ui", None),
        ("/", "ui", None),
        ("/auth/token", "auth", None),
        ("/debug/health", "health", None),
        ("/favicon.ico", "other", None),
        ("/v2/nothing-here", "other", None),
    ],
)
def test_classify(path: str, route: str, repository: str | None) -> None:
    assert classify(path) == (route, repository)
    assert route in ROUTES


def test_classify_under_a_prefix() -> None:
    assert classify("/registry/v2/team/app/tags/list", "/registry") == ("tags", "team/app")
    assert classify("/registry/auth/token", "/registry") == ("auth", None)
    assert classify("/elsewhere/v2/", "/registry") == ("other", None)


def test_paths_classified_and_routed_are_remembered_only_when_short() -> None:
    name = "team/" + "n" * (routes.REMEMBERED_PATH_LENGTH - 40)
    short = f"{name}/manifests/v1"
    long = f"{name}/{'x' * 40}/manifests/v1"
    assert len(short) <= routes.REMEMBERED_PATH_LENGTH < len(f"/v2/{long}")
    observe._remembered_classification.cache_clear()
    routes._remembered_match.cache_clear()
    for _ in range(2):
        assert classify(f"/v2/{short}") == ("manifest", name)
        assert classify(f"/v2/{long}") == ("manifest", f"{name}/{'x' * 40}")
        assert routes.resolve(short, "HEAD") == (
            routes.manifests.get_manifest,
            {"name": name, "reference": "v1"},
        )
        assert routes.resolve(long, "GET")[1]["name"] == f"{name}/{'x' * 40}"
        # What is remembered is the match: the method is checked every time.
        with pytest.raises(Unsupported):
            routes.resolve(short, "POST")
        with pytest.raises(NameUnknown):
            routes.resolve(f"{name}/nothing", "GET")
    classified = observe._remembered_classification.cache_info()
    matched = routes._remembered_match.cache_info()
    assert (classified.currsize, classified.hits) == (1, 1)
    # Both short paths are kept, the unknown one too; every later match is a hit.
    assert (matched.currsize, matched.hits) == (2, 4)
    for number in range(routes.PATHS_REMEMBERED + 10):
        classify(f"/v2/team/app{number}/tags/list")
        routes.resolve(f"team/app{number}/tags/list", "GET")
    assert observe._remembered_classification.cache_info().currsize == routes.PATHS_REMEMBERED
    assert routes._remembered_match.cache_info().currsize == routes.PATHS_REMEMBERED


def test_routes_match_the_raw_path_and_decode_each_parameter() -> None:
    # An encoded slash stays inside its parameter (the tag's own check refuses it later),
    # and a remembered match hands out the decoded value as the first one did.
    for _ in range(2):
        endpoint, params = routes.resolve("team/app%2Dx/manifests/a%2Fb", "GET")
        assert endpoint is routes.manifests.get_manifest
        assert params == {"name": "team/app-x", "reference": "a/b"}
        params["name"] = "changed"
    assert routes.resolve("team/blobs/blobs/uploads/u%2F1", "PATCH")[1] == {
        "name": "team/blobs",
        "upload_id": "u/1",
    }


def test_request_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    # Every variant digit occurs: the random bits below the variant's are kept.
    assert {text[19] for text in ids} == set("89ab")


def test_a_line_logged_while_handling_a_request_makes_its_id_once() -> None:
    info = observe.RequestInfo()
    formatter = logs.formatter_for("json", {})
    record = logging.LogRecord("dockyard", logging.ERROR, __file__, 1, "boom", None, None)
    token = logs.request_id.set(info)
    try:
        lines = [json.loads(formatter.format(record)) for _ in range(2)]
    finally:
        logs.request_id.reset(token)
    assert [line["http.request.id"] for line in lines] == [info.id, info.id]
    assert uuid.UUID(info.id).version == 4


@asynccontextmanager
async def observed(root: Path, emit: bool) -> AsyncIterator[tuple[TestServer, observe.Activity]]:
    """The app on a filesystem store at ``root``, served as a worker serves it: with the
    access logger, writing lines or not."""
    config = validate(
        Config, {"version": "0.1", "storage": {"filesystem": {"rootdirectory": str(root)}}}
    )
    app = create_app(config, background=False)
    activity = app[observe.ACTIVITY]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(
        access_log=observe.access_logger(),
        access_log_class=observe.request_logger("", emit, None, activity),
    )
    try:
        yield server, activity
    finally:
        await server.close()


async def test_a_request_id_is_made_only_when_something_asks_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Made for every request, a random id was the larger part of what the record cost.
    made: list[str] = []

    def counted() -> str:
        made.append(new_request_id())
        return made[-1]

    monkeypatch.setattr(observe, "new_request_id", counted)
    paths = ["/v2/", "/v2/team/app/manifests/latest", "/v2/team/app/tags/list"]
    caplog.set_level(logging.INFO, logger=observe.ACCESS_LOGGER)
    for emit in (False, True):
        async with observed(tmp_path / str(emit), emit) as (server, activity):
            async with aiohttp.ClientSession() as http:
                for path in paths:
                    async with http.get(server.make_url(path)) as response:
                        await response.read()
            # Each request's activity ended once its response had been sent.
            for _ in range(100):
                if activity.count == 0:
                    break
                await asyncio.sleep(0.01)
            assert activity.count == 0
        if not emit:
            # No access line and nothing logged: no id made.
            assert made == []
    # With access lines, one id per request, the one its line carries.
    lines = [record for record in caplog.records if record.name == observe.ACCESS_LOGGER]
    assert [getattr(line, "fields")["http.request.id"] for line in lines] == made
    assert len(set(made)) == len(paths)
    assert [getattr(line, "fields")["http.route"] for line in lines] == ["base", "manifest", "tags"]
    assert [getattr(line, "fields").get("vars.name") for line in lines] == [
        None,
        "team/app",
        "team/app",
    ]
