"""Every error is the spec's JSON body, with its code's status, on GET and HEAD alike."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support.api_helpers import (
    API_VERSION,
    API_VERSION_HEADER,
    OCI_MANIFEST,
    Image,
    assert_error,
    make_blob,
    make_config,
    oci_manifest,
    push_blob,
    push_image,
    put_manifest,
    sha256_digest,
    start_upload,
    with_query,
)

REPO = "errors/repo"
UNKNOWN = "sha256:" + "9" * 64

Case = Callable[[httpx.Client, Image], httpx.Response]


def _cancelled_upload(client: httpx.Client, _: Image) -> httpx.Response:
    location = start_upload(client, REPO)
    assert client.delete(location).status_code == 204
    return client.get(location)


def _digest_mismatch(client: httpx.Client, _: Image) -> httpx.Response:
    location = start_upload(client, REPO)
    return client.put(with_query(location, digest=sha256_digest(b"other")), content=b"data")


def _missing_blob_in_manifest(client: httpx.Client, _: Image) -> httpx.Response:
    config = make_config()
    push_blob(client, REPO, config)
    return put_manifest(client, REPO, "broken", oci_manifest(config, [make_blob(10)]))


CASES: dict[str, tuple[Case, int, str]] = {
    "blob-unknown": (lambda c, _: c.get(f"/v2/{REPO}/blobs/{UNKNOWN}"), 404, "BLOB_UNKNOWN"),
    "manifest-unknown-tag": (
        lambda c, _: c.get(f"/v2/{REPO}/manifests/nosuchtag"),
        404,
        "MANIFEST_UNKNOWN",
    ),
    "manifest-unknown-digest": (
        lambda c, _: c.get(f"/v2/{REPO}/manifests/{UNKNOWN}"),
        404,
        "MANIFEST_UNKNOWN",
    ),
    "name-unknown": (lambda c, _: c.get("/v2/errors/none/tags/list"), 404, "NAME_UNKNOWN"),
    "upload-unknown": (_cancelled_upload, 404, "BLOB_UPLOAD_UNKNOWN"),
    "digest-invalid": (_digest_mismatch, 400, "DIGEST_INVALID"),
    "digest-missing": (
        lambda c, _: c.put(start_upload(c, REPO), content=b"data"),
        400,
        "DIGEST_INVALID",
    ),
    "manifest-invalid": (
        lambda c, _: c.put(
            f"/v2/{REPO}/manifests/bad", content=b"{", headers={"Content-Type": OCI_MANIFEST}
        ),
        400,
        "MANIFEST_INVALID",
    ),
    "manifest-blob-unknown": (_missing_blob_in_manifest, 400, "MANIFEST_BLOB_UNKNOWN"),
    "manifest-digest-invalid": (
        lambda c, image: put_manifest(c, REPO, UNKNOWN, image.manifest),
        400,
        "DIGEST_INVALID",
    ),
    "blob-delete-unknown": (
        lambda c, _: c.delete(f"/v2/{REPO}/blobs/{UNKNOWN}"),
        404,
        "BLOB_UNKNOWN",
    ),
    "manifest-delete-unknown": (
        lambda c, _: c.delete(f"/v2/{REPO}/manifests/{UNKNOWN}"),
        404,
        "MANIFEST_UNKNOWN",
    ),
    "pagination-number-invalid": (
        lambda c, _: c.get("/v2/_catalog", params={"n": 5000}),
        400,
        "PAGINATION_NUMBER_INVALID",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_body_and_status(api: httpx.Client, case: str) -> None:
    image = push_image(api, REPO, "v1")
    make_request, status, code = CASES[case]
    body = assert_error(make_request(api, image), status, code)
    assert len(body["errors"]) >= 1
    assert body["errors"][0]["message"]


@pytest.mark.parametrize(
    "path",
    [
        f"/v2/{REPO}/blobs/{UNKNOWN}",
        f"/v2/{REPO}/manifests/nosuchtag",
        f"/v2/{REPO}/manifests/{UNKNOWN}",
    ],
)
def test_head_errors_have_status_and_headers_but_no_body(api: httpx.Client, path: str) -> None:
    push_image(api, REPO, "v1")
    response = api.head(path)
    assert response.status_code == 404
    assert response.content == b""
    assert response.headers[API_VERSION_HEADER] == API_VERSION
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
