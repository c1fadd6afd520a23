"""The version check endpoint and the headers every response carries."""

from __future__ import annotations

import httpx

from tests.support.api_helpers import (
    API_VERSION,
    API_VERSION_HEADER,
    make_blob,
    push_blob,
    start_upload,
)


def test_version_check_is_200_with_api_version(api: httpx.Client) -> None:
    response = api.get("/v2/")
    assert response.status_code == 200
    assert response.headers[API_VERSION_HEADER] == API_VERSION
    # Distribution answers "{}"; clients only look at the status, but the body must be JSON.
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.json() == {}


def test_version_check_head(api: httpx.Client) -> None:
    response = api.head("/v2/")
    assert response.status_code == 200
    assert response.headers[API_VERSION_HEADER] == API_VERSION
    assert response.content == b""


def test_every_response_carries_api_version_and_configured_headers(api: httpx.Client) -> None:
    """Successes and errors alike carry the version and the ``http.headers`` of the config."""
    blob = make_blob(100)
    digest = push_blob(api, "base/headers", blob)
    location = start_upload(api, "base/headers")
    responses = [
        api.get("/v2/"),
        api.get(f"/v2/base/headers/blobs/{digest}"),
        api.head(f"/v2/base/headers/blobs/{digest}"),
        api.get(location),
        api.get("/v2/base/headers/blobs/sha256:" + "0" * 64),
        api.get("/v2/base/headers/manifests/nope"),
        api.get("/v2/unknown/repo/tags/list"),
        api.get("/v2/_catalog"),
        api.put(location + ("&" if "?" in location else "?") + "digest=sha256:" + "1" * 64),
    ]
    for response in responses:
        request = f"{response.request.method} {response.request.url}"
        assert response.headers.get(API_VERSION_HEADER) == API_VERSION, request
        assert response.headers.get("X-Content-Type-Options") == "nosniff", request
