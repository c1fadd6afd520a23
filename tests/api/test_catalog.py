"""Listing repositories: order, nested names, ``n``/``last`` pagination, limits."""

from __future__ import annotations

import httpx

from tests.support.api_helpers import assert_error, parse_link, push_image

REPOSITORIES = ["c", "a/b/c", "b", "a", "d/e"]


def populate(client: httpx.Client) -> None:
    for name in REPOSITORIES:
        push_image(client, name, "v1", layer_count=1, layer_size=64)


def test_empty_catalog(api: httpx.Client) -> None:
    response = api.get("/v2/_catalog")
    assert response.status_code == 200
    assert response.json() == {"repositories": []}


def test_catalog_lists_every_repository_sorted(api: httpx.Client) -> None:
    populate(api)
    response = api.get("/v2/_catalog")
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.json() == {"repositories": ["a", "a/b/c", "b", "c", "d/e"]}
    assert "Link" not in response.headers


def test_catalog_pagination_with_link_headers(api: httpx.Client) -> None:
    populate(api)
    first = api.get("/v2/_catalog", params={"n": 2})
    assert first.status_code == 200
    assert first.json() == {"repositories": ["a", "a/b/c"]}
    # Distribution writes "?last=a%2Fb%2Fc&n=2"; the order of the parameters is free.
    assert parse_link(first.headers["Link"]) == ("/v2/_catalog", {"n": ["2"], "last": ["a/b/c"]})

    link = first.headers["Link"]
    second = api.get(link[1 : link.index(">")])
    assert second.status_code == 200
    assert second.json() == {"repositories": ["b", "c"]}
    assert parse_link(second.headers["Link"]) == ("/v2/_catalog", {"n": ["2"], "last": ["c"]})

    last = api.get("/v2/_catalog", params={"n": 2, "last": "c"})
    assert last.status_code == 200
    assert last.json() == {"repositories": ["d/e"]}
    assert "Link" not in last.headers


def test_catalog_last_is_exclusive(api: httpx.Client) -> None:
    populate(api)
    response = api.get("/v2/_catalog", params={"n": 10, "last": "a"})
    assert response.json() == {"repositories": ["a/b/c", "b", "c", "d/e"]}


def test_catalog_n_at_the_limit(api: httpx.Client) -> None:
    populate(api)
    response = api.get("/v2/_catalog", params={"n": 1000})
    assert response.status_code == 200
    assert response.json()["repositories"] == ["a", "a/b/c", "b", "c", "d/e"]


def test_catalog_n_above_maxentries_is_pagination_number_invalid(api: httpx.Client) -> None:
    # catalog.maxentries defaults to 1000, as in Distribution.
    assert_error(api.get("/v2/_catalog", params={"n": 1001}), 400, "PAGINATION_NUMBER_INVALID")


def test_catalog_invalid_n_is_pagination_number_invalid(api: httpx.Client) -> None:
    # Distribution 2.8 silently ignores a non-numeric n; 3.x (and the tags list) refuse it.
    for n in ("abc", "-1"):
        assert_error(api.get("/v2/_catalog", params={"n": n}), 400, "PAGINATION_NUMBER_INVALID")
