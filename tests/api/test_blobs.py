"""Reading and deleting blobs: HEAD, GET, Range reads, DELETE."""

from __future__ import annotations

import httpx

from tests.support.api_helpers import (
    ServerFactory,
    assert_error,
    get_manifest,
    make_blob,
    push_blob,
    push_image,
    sha256_digest,
    start_upload,
    target_kind,
)

UNKNOWN_DIGEST = "sha256:" + "ab" * 32


def test_head_existing_blob(api: httpx.Client) -> None:
    blob = make_blob(3000)
    push_blob(api, "blobs/head", blob)
    response = api.head(f"/v2/blobs/head/blobs/{blob.digest}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "3000"
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert response.content == b""


def test_get_existing_blob_returns_exact_bytes(api: httpx.Client) -> None:
    blob = make_blob(4096)
    push_blob(api, "blobs/get", blob)
    response = api.get(f"/v2/blobs/get/blobs/{blob.digest}")
    assert response.status_code == 200
    assert response.content == blob.data
    assert response.headers["Content-Length"] == "4096"
    assert response.headers["Docker-Content-Digest"] == blob.digest


def test_get_large_blob(api: httpx.Client) -> None:
    """A few MiB, to catch truncation or buffering bugs that small blobs hide."""
    blob = make_blob(3 * 1024 * 1024 + 17)
    push_blob(api, "blobs/large", blob)
    response = api.get(f"/v2/blobs/large/blobs/{blob.digest}")
    assert response.status_code == 200
    assert sha256_digest(response.content) == blob.digest
    assert response.headers["Content-Length"] == str(blob.size)


def test_etag_is_the_digest_and_answers_if_none_match(api: httpx.Client) -> None:
    # Small blobs are read whole, large ones sent with sendfile: the same ETag either way.
    for size in (3000, 3 * 1024 * 1024):
        blob = make_blob(size)
        push_blob(api, "blobs/etag", blob)
        url = f"/v2/blobs/etag/blobs/{blob.digest}"
        response = api.get(url)
        assert response.status_code == 200
        assert response.headers["ETag"] == f'"{blob.digest}"'
        again = api.get(url, headers={"If-None-Match": f'"{blob.digest}"'})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["ETag"] == f'"{blob.digest}"'
        other = api.get(url, headers={"If-None-Match": f'"{UNKNOWN_DIGEST}"'})
        assert other.status_code == 200
        assert other.content == blob.data


def test_unknown_blob_is_blob_unknown(api: httpx.Client) -> None:
    push_blob(api, "blobs/unknown", make_blob(10))
    assert_error(api.get(f"/v2/blobs/unknown/blobs/{UNKNOWN_DIGEST}"), 404, "BLOB_UNKNOWN")


def test_unknown_blob_in_unknown_repository_is_404(api: httpx.Client) -> None:
    response = api.get(f"/v2/never/pushed/blobs/{UNKNOWN_DIGEST}")
    # Distribution says BLOB_UNKNOWN here; NAME_UNKNOWN is as true for a missing repository.
    assert_error(response, 404, "BLOB_UNKNOWN", "NAME_UNKNOWN")


def test_head_unknown_blob_is_404_without_body(api: httpx.Client) -> None:
    response = api.head(f"/v2/blobs/headless/blobs/{UNKNOWN_DIGEST}")
    assert response.status_code == 404
    assert response.content == b""


def test_blob_pushed_to_one_repository_is_not_readable_from_another(api: httpx.Client) -> None:
    blob = make_blob(200)
    push_blob(api, "blobs/owner", blob)
    push_blob(api, "blobs/other", make_blob(10))
    assert_error(api.get(f"/v2/blobs/other/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")
    assert api.head(f"/v2/blobs/other/blobs/{blob.digest}").status_code == 404


def test_range_first_bytes(api: httpx.Client) -> None:
    blob = make_blob(100)
    push_blob(api, "blobs/range", blob)
    response = api.get(f"/v2/blobs/range/blobs/{blob.digest}", headers={"Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.content == blob.data[:10]
    assert response.headers["Content-Range"] == "bytes 0-9/100"
    assert response.headers["Content-Length"] == "10"


def test_range_open_ended(api: httpx.Client) -> None:
    blob = make_blob(100)
    push_blob(api, "blobs/range", blob)
    response = api.get(f"/v2/blobs/range/blobs/{blob.digest}", headers={"Range": "bytes=10-"})
    assert response.status_code == 206
    assert response.content == blob.data[10:]
    assert response.headers["Content-Range"] == "bytes 10-99/100"


def test_range_suffix(api: httpx.Client) -> None:
    blob = make_blob(100)
    push_blob(api, "blobs/range", blob)
    response = api.get(f"/v2/blobs/range/blobs/{blob.digest}", headers={"Range": "bytes=-5"})
    assert response.status_code == 206
    assert response.content == blob.data[-5:]
    assert response.headers["Content-Range"] == "bytes 95-99/100"


def test_range_middle_and_past_end_is_clamped(api: httpx.Client) -> None:
    """RFC 9110: a last-byte-pos past the end means "to the end", not an error."""
    blob = make_blob(100)
    push_blob(api, "blobs/range", blob)
    response = api.get(f"/v2/blobs/range/blobs/{blob.digest}", headers={"Range": "bytes=90-500"})
    assert response.status_code == 206
    assert response.content == blob.data[90:]
    assert response.headers["Content-Range"] == "bytes 90-99/100"


def test_unsatisfiable_range_is_416(api: httpx.Client) -> None:
    blob = make_blob(100)
    push_blob(api, "blobs/range", blob)
    response = api.get(f"/v2/blobs/range/blobs/{blob.digest}", headers={"Range": "bytes=100-"})
    assert response.status_code == 416
    # RFC 9110 15.5.17: the 416 names the current length so the client can recover.
    assert response.headers["Content-Range"] == "bytes */100"


def test_delete_blob_then_404(api: httpx.Client) -> None:
    blob = make_blob(500)
    push_blob(api, "blobs/delete", blob)
    response = api.delete(f"/v2/blobs/delete/blobs/{blob.digest}")
    assert response.status_code == 202
    assert response.content == b""
    assert_error(api.get(f"/v2/blobs/delete/blobs/{blob.digest}"), 404, "BLOB_UNKNOWN")
    assert api.head(f"/v2/blobs/delete/blobs/{blob.digest}").status_code == 404


def test_delete_blob_unlinks_it_from_that_repository_only(api: httpx.Client) -> None:
    blob = make_blob(500)
    push_blob(api, "blobs/first", blob)
    push_blob(api, "blobs/second", blob)
    assert api.delete(f"/v2/blobs/first/blobs/{blob.digest}").status_code == 202
    assert api.head(f"/v2/blobs/first/blobs/{blob.digest}").status_code == 404
    response = api.get(f"/v2/blobs/second/blobs/{blob.digest}")
    assert response.status_code == 200
    assert response.content == blob.data


def test_delete_unknown_blob_is_blob_unknown(api: httpx.Client) -> None:
    push_blob(api, "blobs/delunknown", make_blob(10))
    assert_error(api.delete(f"/v2/blobs/delunknown/blobs/{UNKNOWN_DIGEST}"), 404, "BLOB_UNKNOWN")


def test_get_blob_with_malformed_digest_is_digest_invalid(api: httpx.Client) -> None:
    push_blob(api, "blobs/baddigest", make_blob(10))
    for digest in ("sha256:abc", "sha256:" + "G" * 64):
        response = api.get(f"/v2/blobs/baddigest/blobs/{digest}")
        # Distribution's router only accepts well-formed digests; 404 there is routing.
        assert response.status_code in (400, 404), digest
        if response.status_code == 400:
            assert_error(response, 400, "DIGEST_INVALID")


def test_deletes_disabled_are_unsupported(server_factory: ServerFactory) -> None:
    server = server_factory(
        target_kind(), config={"storage": {"delete": {"enabled": False}}}, name="nodelete"
    )
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        image = push_image(client, "nodelete/repo", "v1")
        layer = image.layers[0]
        assert_error(client.delete(f"/v2/nodelete/repo/blobs/{layer.digest}"), 405, "UNSUPPORTED")
        assert_error(
            client.delete(f"/v2/nodelete/repo/manifests/{image.manifest.digest}"),
            405,
            "UNSUPPORTED",
        )
        # Tag deletion is deletion too (the spec allows 400 or 405; 405 as for the rest).
        assert_error(client.delete("/v2/nodelete/repo/manifests/v1"), 405, "UNSUPPORTED")
        # Cancelling an upload deletes no content, so it stays allowed.
        location = start_upload(client, "nodelete/repo")
        assert client.delete(location).status_code == 204
        # The refusals changed nothing.
        assert client.head(f"/v2/nodelete/repo/blobs/{layer.digest}").status_code == 200
        assert get_manifest(client, "nodelete/repo", "v1").status_code == 200
        assert get_manifest(client, "nodelete/repo", image.manifest.digest).status_code == 200
