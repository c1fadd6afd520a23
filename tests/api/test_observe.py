"""Route names and repositories of request paths, as the access log and metrics see them."""

from __future__ import annotations

import uuid

import pytest

from dockyard.api import observe, routes
from dockyard.api.observe import classify, new_request_id
from dockyard.errors import NameUnknown, Unsupported
from dockyard.metrics import ROUTES

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
