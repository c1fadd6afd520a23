"""Listing tags: order, ``n``/``last`` pagination and ``Link`` headers, errors."""

from __future__ import annotations

import httpx

from tests.support.api_helpers import (
    assert_error,
    parse_link,
    push_image,
    push_manifest,
)


def tag_repository(client: httpx.Client, repo: str, tags: list[str]) -> None:
    image = push_image(client, repo, tags[0])
    for tag in tags[1:]:
        push_manifest(client, repo, tag, image.manifest)


def test_tags_are_listed_in_lexical_order(api: httpx.Client) -> None:
    # Lower case only, so "lexical" and "ASCIIbetical" (both allowed by the spec) agree.
    tags = ["v2", "v10", "latest", "1.0", "a_b", "a-b", "a.b", "0"]
    tag_repository(api, "tags/sorted", tags)
    response = api.get("/v2/tags/sorted/tags/list")
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.json() == {"name": "tags/sorted", "tags": sorted(tags)}
    assert "Link" not in response.headers


def test_tags_pagination_with_link_headers(api: httpx.Client) -> None:
    tag_repository(api, "tags/paged", ["e", "c", "a", "d", "b"])
    first = api.get("/v2/tags/paged/tags/list", params={"n": 2})
    assert first.status_code == 200
    assert first.json() == {"name": "tags/paged", "tags": ["a", "b"]}
    path, query = parse_link(first.headers["Link"])
    assert path == "/v2/tags/paged/tags/list"
    assert query == {"n": ["2"], "last": ["b"]}

    second = api.get(first.headers["Link"][1 : first.headers["Link"].index(">")])
    assert second.status_code == 200
    assert second.json()["tags"] == ["c", "d"]
    assert parse_link(second.headers["Link"]) == (
        "/v2/tags/paged/tags/list",
        {"n": ["2"], "last": ["d"]},
    )

    last = api.get("/v2/tags/paged/tags/list", params={"n": 2, "last": "d"})
    assert last.status_code == 200
    assert last.json()["tags"] == ["e"]
    assert "Link" not in last.headers


def test_tags_n_larger_than_the_list(api: httpx.Client) -> None:
    tag_repository(api, "tags/fewer", ["x", "y"])
    response = api.get("/v2/tags/fewer/tags/list", params={"n": 10})
    assert response.json()["tags"] == ["x", "y"]
    assert "Link" not in response.headers


def test_tags_n_zero_is_empty_without_link(api: httpx.Client) -> None:
    tag_repository(api, "tags/zero", ["x", "y"])
    response = api.get("/v2/tags/zero/tags/list", params={"n": 0})
    assert response.status_code == 200
    assert response.json() == {"name": "tags/zero", "tags": []}
    assert "Link" not in response.headers


def test_tags_last_without_n(api: httpx.Client) -> None:
    tag_repository(api, "tags/lastonly", ["a", "b", "c", "d"])
    response = api.get("/v2/tags/lastonly/tags/list", params={"last": "b"})
    assert response.status_code == 200
    assert response.json()["tags"] == ["c", "d"]


def test_tags_of_unknown_repository_is_name_unknown(api: httpx.Client) -> None:
    assert_error(api.get("/v2/tags/never/pushed/tags/list"), 404, "NAME_UNKNOWN")


def test_tags_invalid_n_is_pagination_number_invalid(api: httpx.Client) -> None:
    tag_repository(api, "tags/badn", ["a"])
    for n in ("abc", "-1", "1.5"):
        response = api.get("/v2/tags/badn/tags/list", params={"n": n})
        assert_error(response, 400, "PAGINATION_NUMBER_INVALID")


def test_tags_of_repository_with_only_untagged_manifests(api: httpx.Client) -> None:
    push_image(api, "tags/untagged")
    response = api.get("/v2/tags/untagged/tags/list")
    # The repository exists, so the spec wants 200 and an empty list (Distribution 2.8
    # answers NAME_UNKNOWN because it has no tags directory yet).
    assert response.status_code == 200
    assert response.json() == {"name": "tags/untagged", "tags": []}
