"""Pushing blobs: monolithic, chunked and streamed uploads, status, cancel, mount."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import httpx

from tests.support.api_helpers import (
    assert_error,
    make_blob,
    push_blob,
    sha256_digest,
    sha512_digest,
    start_upload,
    with_query,
)

OCTET = {"Content-Type": "application/octet-stream"}


def path_of(location: str) -> str:
    """Locations may be absolute or relative (spec); compare their paths."""
    return urlsplit(location).path


def patch_chunk(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(
        location,
        content=data,
        headers={**OCTET, "Content-Range": f"{start}-{start + len(data) - 1}"},
    )


def assert_blob(client: httpx.Client, repo: str, digest: str, data: bytes) -> None:
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200, response.text
    assert response.content == data


def test_post_starts_an_upload_session(api: httpx.Client) -> None:
    response = api.post("/v2/uploads/start/blobs/uploads/", headers={"Content-Length": "0"})
    assert response.status_code == 202
    upload_id = response.headers["Docker-Upload-UUID"]
    assert upload_id
    assert path_of(response.headers["Location"]) == f"/v2/uploads/start/blobs/uploads/{upload_id}"
    assert response.headers["Range"] == "0-0"
    assert response.headers["Content-Length"] == "0"


def test_each_post_gets_its_own_session(api: httpx.Client) -> None:
    first = start_upload(api, "uploads/distinct")
    second = start_upload(api, "uploads/distinct")
    assert path_of(first) != path_of(second)


def test_monolithic_single_post_creates_blob(api: httpx.Client) -> None:
    blob = make_blob(1500)
    response = api.post(
        "/v2/uploads/single/blobs/uploads/",
        params={"digest": blob.digest},
        content=blob.data,
        headers=OCTET,
    )
    assert response.status_code == 201, response.text
    assert path_of(response.headers["Location"]) == f"/v2/uploads/single/blobs/{blob.digest}"
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert_blob(api, "uploads/single", blob.digest, blob.data)


def test_single_post_with_wrong_digest_stores_nothing(api: httpx.Client) -> None:
    blob = make_blob(1500)
    claimed = sha256_digest(b"something else")
    response = api.post(
        "/v2/uploads/singlebad/blobs/uploads/",
        params={"digest": claimed},
        content=blob.data,
        headers=OCTET,
    )
    assert_error(response, 400, "DIGEST_INVALID")
    assert api.head(f"/v2/uploads/singlebad/blobs/{claimed}").status_code == 404
    assert api.head(f"/v2/uploads/singlebad/blobs/{blob.digest}").status_code == 404


def test_post_then_put_with_body(api: httpx.Client) -> None:
    blob = make_blob(2500)
    location = start_upload(api, "uploads/monolithic")
    response = api.put(with_query(location, digest=blob.digest), content=blob.data, headers=OCTET)
    assert response.status_code == 201
    assert path_of(response.headers["Location"]) == f"/v2/uploads/monolithic/blobs/{blob.digest}"
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert_blob(api, "uploads/monolithic", blob.digest, blob.data)


def test_empty_blob(api: httpx.Client) -> None:
    """Zero bytes is a valid blob (the OCI empty descriptor's cousin); clients push it."""
    location = start_upload(api, "uploads/empty")
    digest = sha256_digest(b"")
    response = api.put(with_query(location, digest=digest), content=b"", headers=OCTET)
    assert response.status_code == 201
    head = api.head(f"/v2/uploads/empty/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "0"


def test_chunked_upload(api: httpx.Client) -> None:
    blob = make_blob(3000)
    location = start_upload(api, "uploads/chunked")

    first = patch_chunk(api, location, blob.data[:1000], 0)
    assert first.status_code == 202
    assert first.headers["Range"] == "0-999"
    assert first.headers["Content-Length"] == "0"
    assert path_of(first.headers["Location"]) == path_of(location)
    assert first.headers["Docker-Upload-UUID"] == path_of(location).rsplit("/", 1)[1]

    second = patch_chunk(api, first.headers["Location"], blob.data[1000:2000], 1000)
    assert second.status_code == 202
    assert second.headers["Range"] == "0-1999"

    status = api.get(second.headers["Location"])
    assert status.status_code == 204
    assert status.headers["Range"] == "0-1999"
    assert path_of(status.headers["Location"]) == path_of(location)
    assert status.content == b""

    third = patch_chunk(api, status.headers["Location"], blob.data[2000:], 2000)
    assert third.status_code == 202
    assert third.headers["Range"] == "0-2999"

    done = api.put(with_query(third.headers["Location"], digest=blob.digest))
    assert done.status_code == 201
    assert path_of(done.headers["Location"]) == f"/v2/uploads/chunked/blobs/{blob.digest}"
    assert done.headers["Docker-Content-Digest"] == blob.digest
    assert_blob(api, "uploads/chunked", blob.digest, blob.data)


def test_chunked_upload_with_last_chunk_in_put(api: httpx.Client) -> None:
    blob = make_blob(2000)
    location = start_upload(api, "uploads/lastinput")
    first = patch_chunk(api, location, blob.data[:1200], 0)
    assert first.status_code == 202
    done = api.put(
        with_query(first.headers["Location"], digest=blob.digest),
        content=blob.data[1200:],
        headers={**OCTET, "Content-Range": "1200-1999"},
    )
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == blob.digest
    assert_blob(api, "uploads/lastinput", blob.digest, blob.data)


def test_chunked_upload_of_a_few_mebibytes(api: httpx.Client) -> None:
    blob = make_blob(4 * 1024 * 1024 + 3)
    location = start_upload(api, "uploads/bigchunks")
    chunk = 1024 * 1024
    for start in range(0, blob.size, chunk):
        response = patch_chunk(api, location, blob.data[start : start + chunk], start)
        assert response.status_code == 202, response.text
        end = min(start + chunk, blob.size) - 1
        assert response.headers["Range"] == f"0-{end}"
        location = response.headers["Location"]
    done = api.put(with_query(location, digest=blob.digest))
    assert done.status_code == 201
    head = api.head(f"/v2/uploads/bigchunks/blobs/{blob.digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(blob.size)
    response = api.get(f"/v2/uploads/bigchunks/blobs/{blob.digest}")
    assert sha256_digest(response.content) == blob.digest


def test_streamed_patch_without_content_range(api: httpx.Client) -> None:
    blob = make_blob(3000)
    location = start_upload(api, "uploads/streamed")
    first = api.patch(location, content=blob.data[:1700], headers=OCTET)
    assert first.status_code == 202
    assert first.headers["Range"] == "0-1699"
    # A second streamed PATCH appends where the first stopped.
    second = api.patch(first.headers["Location"], content=blob.data[1700:], headers=OCTET)
    assert second.status_code == 202
    assert second.headers["Range"] == "0-2999"
    done = api.put(with_query(second.headers["Location"], digest=blob.digest))
    assert done.status_code == 201
    assert_blob(api, "uploads/streamed", blob.digest, blob.data)


def test_status_of_a_fresh_upload(api: httpx.Client) -> None:
    location = start_upload(api, "uploads/fresh")
    status = api.get(location)
    assert status.status_code == 204
    # Distribution's convention for "nothing yet", which clients accept.
    assert status.headers["Range"] == "0-0"
    assert status.headers["Docker-Upload-UUID"] == path_of(location).rsplit("/", 1)[1]


def test_last_chunk_out_of_order_in_put_is_416_and_stores_nothing(api: httpx.Client) -> None:
    blob = make_blob(2000)
    location = start_upload(api, "uploads/lastoutoforder")
    first = patch_chunk(api, location, blob.data[:1200], 0)
    assert first.status_code == 202
    finishing = with_query(first.headers["Location"], digest=blob.digest)
    late = api.put(
        finishing, content=blob.data[1300:], headers={**OCTET, "Content-Range": "1300-1999"}
    )
    assert_error(late, 416, "RANGE_INVALID")
    assert api.head(f"/v2/uploads/lastoutoforder/blobs/{blob.digest}").status_code == 404
    status = api.get(first.headers["Location"])
    assert status.headers["Range"] == "0-1199"
    done = api.put(
        finishing, content=blob.data[1200:], headers={**OCTET, "Content-Range": "1200-1999"}
    )
    assert done.status_code == 201, done.text
    assert_blob(api, "uploads/lastoutoforder", blob.digest, blob.data)


def test_out_of_order_chunk_is_416_and_upload_continues(api: httpx.Client) -> None:
    blob = make_blob(300)
    location = start_upload(api, "uploads/outoforder")
    skipped = patch_chunk(api, location, blob.data[100:200], 100)
    assert_error(skipped, 416, "RANGE_INVALID")

    status = api.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"

    first = patch_chunk(api, status.headers["Location"], blob.data[:100], 0)
    assert first.status_code == 202
    assert first.headers["Range"] == "0-99"
    # A gap after the first chunk is just as out of order.
    gap = patch_chunk(api, first.headers["Location"], blob.data[150:200], 150)
    assert_error(gap, 416, "RANGE_INVALID")

    second = patch_chunk(api, first.headers["Location"], blob.data[100:], 100)
    assert second.status_code == 202
    assert second.headers["Range"] == "0-299"
    done = api.put(with_query(second.headers["Location"], digest=blob.digest))
    assert done.status_code == 201
    assert_blob(api, "uploads/outoforder", blob.digest, blob.data)


def test_retried_chunk_is_416_and_status_still_reports_progress(api: httpx.Client) -> None:
    """The conformance suite's sequence: resend chunk 1 on the first Location, then recover."""
    blob = make_blob(200)
    first_location = start_upload(api, "uploads/retried")
    first = patch_chunk(api, first_location, blob.data[:100], 0)
    assert first.status_code == 202
    assert first.headers["Range"] == "0-99"

    retried = patch_chunk(api, first_location, blob.data[:100], 0)
    assert_error(retried, 416, "RANGE_INVALID")
    overlapping = patch_chunk(api, first.headers["Location"], blob.data[50:150], 50)
    assert_error(overlapping, 416, "RANGE_INVALID")

    status = api.get(first_location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-99"
    second = patch_chunk(api, status.headers["Location"], blob.data[100:], 100)
    assert second.status_code == 202
    assert second.headers["Range"] == "0-199"
    done = api.put(with_query(second.headers["Location"], digest=blob.digest))
    assert done.status_code == 201
    assert_blob(api, "uploads/retried", blob.digest, blob.data)


def test_chunk_whose_range_disagrees_with_its_length_is_size_invalid(api: httpx.Client) -> None:
    location = start_upload(api, "uploads/sizeinvalid")
    response = api.patch(location, content=b"x" * 50, headers={**OCTET, "Content-Range": "0-99"})
    # As Distribution 3: the range is in order, but the body is not the range's length.
    assert_error(response, 400, "SIZE_INVALID")


def test_digest_mismatch_on_put_stores_nothing(api: httpx.Client) -> None:
    blob = make_blob(1000)
    claimed = sha256_digest(b"not these bytes")
    location = start_upload(api, "uploads/mismatch")
    response = api.put(with_query(location, digest=claimed), content=blob.data, headers=OCTET)
    assert_error(response, 400, "DIGEST_INVALID")
    assert api.head(f"/v2/uploads/mismatch/blobs/{claimed}").status_code == 404
    assert api.head(f"/v2/uploads/mismatch/blobs/{blob.digest}").status_code == 404


def test_chunked_digest_mismatch_stores_nothing(api: httpx.Client) -> None:
    blob = make_blob(1000)
    location = start_upload(api, "uploads/chunkmismatch")
    first = patch_chunk(api, location, blob.data, 0)
    assert first.status_code == 202
    claimed = sha256_digest(blob.data[:-1])
    response = api.put(with_query(first.headers["Location"], digest=claimed))
    assert_error(response, 400, "DIGEST_INVALID")
    assert api.head(f"/v2/uploads/chunkmismatch/blobs/{claimed}").status_code == 404
    assert api.head(f"/v2/uploads/chunkmismatch/blobs/{blob.digest}").status_code == 404


def test_put_without_digest_is_digest_invalid(api: httpx.Client) -> None:
    blob = make_blob(100)
    location = start_upload(api, "uploads/nodigest")
    response = api.put(location, content=blob.data, headers=OCTET)
    assert_error(response, 400, "DIGEST_INVALID")
    assert api.head(f"/v2/uploads/nodigest/blobs/{blob.digest}").status_code == 404


def test_unsupported_algorithm_is_digest_invalid(api: httpx.Client) -> None:
    blob = make_blob(100)
    location = start_upload(api, "uploads/md5")
    response = api.put(
        with_query(location, digest="md5:" + "0" * 32), content=blob.data, headers=OCTET
    )
    # The spec's code for a digest the registry cannot verify; Distribution agrees.
    assert_error(response, 400, "DIGEST_INVALID")


def test_malformed_digests_are_digest_invalid(api: httpx.Client) -> None:
    blob = make_blob(100)
    for digest in ("sha256:zz", "sha256", "nonsense", "sha256:" + "a" * 63, ":" + "a" * 64):
        location = start_upload(api, "uploads/malformed")
        response = api.put(with_query(location, digest=digest), content=blob.data, headers=OCTET)
        assert_error(response, 400, "DIGEST_INVALID")
    assert api.head(f"/v2/uploads/malformed/blobs/{blob.digest}").status_code == 404


def test_sha512_blob_upload(api: httpx.Client) -> None:
    blob = make_blob(700)
    digest = sha512_digest(blob.data)
    location = start_upload(api, "uploads/sha512")
    response = api.put(with_query(location, digest=digest), content=blob.data, headers=OCTET)
    assert response.status_code == 201, response.text
    # The spec lets the registry answer with its canonical digest, which may be sha256.
    assert response.headers["Docker-Content-Digest"] in (digest, blob.digest)
    fetched = api.get(f"/v2/uploads/sha512/blobs/{digest}")
    assert fetched.status_code == 200
    assert fetched.content == blob.data


def test_cancel_upload(api: httpx.Client) -> None:
    patched = patch_chunk(api, start_upload(api, "uploads/cancel"), b"partial data", 0)
    assert patched.status_code == 202
    location = patched.headers["Location"]
    response = api.delete(location)
    assert response.status_code == 204
    assert_error(api.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(patch_chunk(api, location, b"more", 12), 404, "BLOB_UPLOAD_UNKNOWN")
    digest = sha256_digest(b"partial data")
    assert_error(api.put(with_query(location, digest=digest)), 404, "BLOB_UPLOAD_UNKNOWN")
    assert api.head(f"/v2/uploads/cancel/blobs/{digest}").status_code == 404


def test_completed_upload_is_gone(api: httpx.Client) -> None:
    blob = make_blob(100)
    location = start_upload(api, "uploads/completed")
    done = api.put(with_query(location, digest=blob.digest), content=blob.data, headers=OCTET)
    assert done.status_code == 201
    assert_error(api.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_unknown_upload_ids_are_blob_upload_unknown(api: httpx.Client) -> None:
    push_blob(api, "uploads/unknown", make_blob(10))
    digest = sha256_digest(b"x")
    for upload_id in (str(uuid.uuid4()), "garbage", "..%2F..%2Fetc"):
        base = f"/v2/uploads/unknown/blobs/uploads/{upload_id}"
        assert_error(api.get(base), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(
            api.patch(base, content=b"x", headers={**OCTET, "Content-Range": "0-0"}),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        assert_error(
            api.put(f"{base}?digest={digest}", content=b"x", headers=OCTET),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        assert_error(api.delete(base), 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_session_belongs_to_its_repository(api: httpx.Client) -> None:
    location = start_upload(api, "uploads/mine")
    push_blob(api, "uploads/theirs", make_blob(10))
    other = path_of(location).replace("/v2/uploads/mine/", "/v2/uploads/theirs/")
    blob = make_blob(50)
    response = api.put(with_query(other, digest=blob.digest), content=blob.data, headers=OCTET)
    assert response.status_code == 404
    assert api.head(f"/v2/uploads/theirs/blobs/{blob.digest}").status_code == 404


def test_mount_from_repository_that_has_the_blob(api: httpx.Client) -> None:
    blob = make_blob(800)
    push_blob(api, "uploads/mountsource", blob)
    response = api.post(
        "/v2/uploads/mounttarget/blobs/uploads/",
        params={"mount": blob.digest, "from": "uploads/mountsource"},
    )
    assert response.status_code == 201
    assert path_of(response.headers["Location"]) == f"/v2/uploads/mounttarget/blobs/{blob.digest}"
    assert response.headers["Docker-Content-Digest"] == blob.digest
    assert_blob(api, "uploads/mounttarget", blob.digest, blob.data)
    # The source keeps its link.
    assert_blob(api, "uploads/mountsource", blob.digest, blob.data)


def test_mount_from_repository_without_the_blob_starts_an_upload(api: httpx.Client) -> None:
    blob = make_blob(800)
    push_blob(api, "uploads/holder", blob)
    push_blob(api, "uploads/emptyhanded", make_blob(10))
    response = api.post(
        "/v2/uploads/mountmiss/blobs/uploads/",
        params={"mount": blob.digest, "from": "uploads/emptyhanded"},
    )
    assert response.status_code == 202
    location = response.headers["Location"]
    assert path_of(location).startswith("/v2/uploads/mountmiss/blobs/uploads/")
    assert response.headers["Docker-Upload-UUID"]
    # Not mounted: the blob is not readable in the target until it is uploaded there.
    assert api.head(f"/v2/uploads/mountmiss/blobs/{blob.digest}").status_code == 404
    done = api.put(with_query(location, digest=blob.digest), content=blob.data, headers=OCTET)
    assert done.status_code == 201
    assert_blob(api, "uploads/mountmiss", blob.digest, blob.data)


def test_mount_from_unknown_repository_starts_an_upload(api: httpx.Client) -> None:
    blob = make_blob(80)
    push_blob(api, "uploads/somewhere", blob)
    response = api.post(
        "/v2/uploads/mountnorepo/blobs/uploads/",
        params={"mount": blob.digest, "from": "never/existed"},
    )
    assert response.status_code == 202
    assert path_of(response.headers["Location"]).startswith(
        "/v2/uploads/mountnorepo/blobs/uploads/"
    )


def test_mount_without_from_starts_an_upload(api: httpx.Client) -> None:
    response = api.post(
        "/v2/uploads/mountnofrom/blobs/uploads/", params={"mount": "sha256:" + "0" * 64}
    )
    assert response.status_code == 202
    assert path_of(response.headers["Location"]).startswith(
        "/v2/uploads/mountnofrom/blobs/uploads/"
    )
