"""Builders and checks shared by the black-box HTTP tests in ``tests/api``.

Everything here talks to a registry only over HTTP (plus reading its data directory
for the on-disk layout and path-escape checks), so the same tests run against Dockyard
and, with ``DOCKYARD_TEST_TARGET=distribution``, against Distribution 2.8.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from tests.support.servers import ServerProcess

# Tests that fail against Debian's Distribution 2.8.2 because it predates or ignores a
# rule of the OCI distribution spec v1.1 that Dockyard follows. Running the suite with
# DOCKYARD_TEST_TARGET=distribution is expected to fail exactly these (node ids).
DISTRIBUTION_28_KNOWN_FAILURES: frozenset[str] = frozenset(
    {
        # Single-POST monolithic upload: 2.8 ignores ?digest= on POST and answers 202.
        "tests/api/test_uploads.py::test_monolithic_single_post_creates_blob",
        "tests/api/test_uploads.py::test_single_post_with_wrong_digest_stores_nothing",
        # 2.8 ignores Content-Range on PATCH: no 416 for out-of-order or retried chunks,
        # no SIZE_INVALID when the range and the body disagree.
        "tests/api/test_uploads.py::test_out_of_order_chunk_is_416_and_upload_continues",
        "tests/api/test_uploads.py::test_retried_chunk_is_416_and_status_still_reports_progress",
        "tests/api/test_uploads.py::test_chunk_whose_range_disagrees_with_its_length_is_size_invalid",
        # 2.8 needs its signed _state query parameter: an upload URL without it (an id
        # alone, as a client that kept only the id would build) is BLOB_UPLOAD_INVALID.
        "tests/api/test_uploads.py::test_unknown_upload_ids_are_blob_upload_unknown",
        # Go's ServeContent in 2.8 sends a 416 whose Content-Length still claims the
        # whole blob and closes the connection early.
        "tests/api/test_blobs.py::test_unsatisfiable_range_is_416",
        # 2.8 has no limit on manifest size (the spec asks for 413 past the limit).
        "tests/api/test_manifests.py::test_oversized_manifest_is_413",
        # 2.8 routes only tags matching its pattern: others get a plain-text 404.
        "tests/api/test_manifests.py::test_invalid_tags_are_tag_invalid",
        # 2.8 has no tag deletion (DELETE by tag is UNSUPPORTED there).
        "tests/api/test_manifests.py::test_delete_by_tag_removes_only_the_tag",
        # 2.8 knows nothing of subject / OCI-Subject / the referrers API.
        "tests/api/test_manifests.py::test_put_with_subject_returns_oci_subject_header",
        "tests/api/test_referrers.py::test_referrers_lists_manifests_with_that_subject",
        "tests/api/test_referrers.py::test_referrers_of_a_subject_never_pushed",
        "tests/api/test_referrers.py::test_referrers_artifact_type_filter",
        "tests/api/test_referrers.py::test_referrers_of_unknown_subject_is_empty_index",
        "tests/api/test_referrers.py::test_referrers_invalid_digest_is_400",
        "tests/api/test_referrers.py::test_referrers_index_without_artifact_type",
        "tests/api/test_referrers.py::test_deleted_referrer_disappears",
        "tests/api/test_referrers.py::test_referrers_are_scoped_to_the_repository",
        # 2.8 ignores n and last on the tags list.
        "tests/api/test_tags.py::test_tags_pagination_with_link_headers",
        "tests/api/test_tags.py::test_tags_n_zero_is_empty_without_link",
        "tests/api/test_tags.py::test_tags_last_without_n",
        "tests/api/test_tags.py::test_tags_invalid_n_is_pagination_number_invalid",
        # 2.8 returns tags in directory order; the spec wants them sorted.
        "tests/api/test_tags.py::test_tags_are_listed_in_lexical_order",
        # 2.8 answers NAME_UNKNOWN for a repository with manifests but no tags yet.
        "tests/api/test_tags.py::test_tags_of_repository_with_only_untagged_manifests",
        # 2.8 ignores a non-numeric or negative n on the catalog (3.x refuses it).
        "tests/api/test_catalog.py::test_catalog_invalid_n_is_pagination_number_invalid",
        # 2.8 fails names over 255 characters with 500 UNKNOWN instead of NAME_INVALID,
        # and accepts an upper-case first component as a registry host name.
        "tests/api/test_paths.py::test_invalid_names_are_refused[too-long]",
        "tests/api/test_paths.py::test_invalid_names_are_refused[too-long-components]",
        "tests/api/test_paths.py::test_invalid_names_are_refused[upper-case]",
        "tests/api/test_paths.py::test_name_invalid_error_body",
    }
)

ServerFactory = Callable[..., ServerProcess]


def target_kind() -> str:
    """Which registry the suite runs against: the ``registry`` fixture's choice."""
    return os.environ.get("DOCKYARD_TEST_TARGET", "dockyard")


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# Distribution 2.8 only serves a manifest kind the client says it accepts, so every
# manifest GET/HEAD in the suite names all four kinds.
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"

API_VERSION_HEADER = "Docker-Distribution-Api-Version"
API_VERSION = "registry/2.0"

EMPTY_JSON = b"{}"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512_digest(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


@dataclass(frozen=True)
class Blob:
    """Bytes with their digest and the media type a manifest would list them with."""

    data: bytes
    media_type: str = OCI_LAYER

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def make_blob(size: int = 2048, media_type: str = OCI_LAYER) -> Blob:
    return Blob(random_bytes(size), media_type)


def make_config(media_type: str = OCI_CONFIG) -> Blob:
    """A small, unique image config (unique so each test's manifests have new digests)."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {"nonce": os.urandom(8).hex()}},
    }
    return Blob(json.dumps(config, sort_keys=True).encode(), media_type)


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes; the registry must store and serve them unchanged."""

    body: bytes
    media_type: str
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.body)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def size(self) -> int:
        return len(self.body)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def _encode(document: Mapping[str, Any]) -> bytes:
    # Indented on purpose: a registry that re-serialises JSON would change the digest.
    return json.dumps(document, indent=3).encode()


def oci_manifest(
    config: Blob,
    layers: Iterable[Blob] = (),
    *,
    artifact_type: str | None = None,
    subject: Manifest | Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Manifest:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if subject is not None:
        document["subject"] = (
            subject.descriptor() if isinstance(subject, Manifest) else dict(subject)
        )
    if annotations:
        document["annotations"] = dict(annotations)
    return Manifest(_encode(document), OCI_MANIFEST, artifact_type, dict(annotations or {}))


def docker_manifest(config: Blob, layers: Iterable[Blob]) -> Manifest:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return Manifest(_encode(document), DOCKER_MANIFEST)


def _platform(index: int) -> dict[str, str]:
    return [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}][
        index % 2
    ]


def oci_index(
    children: Iterable[Manifest],
    *,
    artifact_type: str | None = None,
    subject: Manifest | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Manifest:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child.descriptor(platform=_platform(i)) for i, child in enumerate(children)],
    }
    if artifact_type is not None:
        document["artifactType"] = artifact_type
    if subject is not None:
        document["subject"] = subject.descriptor()
    if annotations:
        document["annotations"] = dict(annotations)
    return Manifest(_encode(document), OCI_INDEX, artifact_type, dict(annotations or {}))


def docker_manifest_list(children: Iterable[Manifest]) -> Manifest:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [child.descriptor(platform=_platform(i)) for i, child in enumerate(children)],
    }
    return Manifest(_encode(document), DOCKER_MANIFEST_LIST)


def with_query(url: str, **params: str) -> str:
    """Add query parameters to an upload Location, keeping the ones it already has.

    Locations may carry state the registry needs (Distribution's ``_state``), so they
    are extended, never rebuilt.
    """
    return url + ("&" if "?" in url else "?") + urlencode(params)


def start_upload(client: httpx.Client, repo: str) -> str:
    """POST a new upload session and return its Location."""
    response = client.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def push_blob(client: httpx.Client, repo: str, blob: Blob | bytes) -> str:
    """Upload a blob with POST then PUT (the form every registry supports); its digest."""
    data = blob.data if isinstance(blob, Blob) else blob
    digest = sha256_digest(data)
    location = start_upload(client, repo)
    response = client.put(
        with_query(location, digest=digest),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    return digest


def put_manifest(
    client: httpx.Client,
    repo: str,
    reference: str,
    manifest: Manifest,
    content_type: str | None = None,
) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{reference}",
        content=manifest.body,
        headers={"Content-Type": content_type or manifest.media_type},
    )


def push_manifest(client: httpx.Client, repo: str, reference: str, manifest: Manifest) -> None:
    response = put_manifest(client, repo, reference, manifest)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == manifest.digest


def get_manifest(
    client: httpx.Client, repo: str, reference: str, method: str = "GET"
) -> httpx.Response:
    return client.request(
        method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )


@dataclass(frozen=True)
class Image:
    config: Blob
    layers: tuple[Blob, ...]
    manifest: Manifest


def push_image(
    client: httpx.Client,
    repo: str,
    tag: str | None = None,
    *,
    docker: bool = False,
    layer_count: int = 2,
    layer_size: int = 1024,
) -> Image:
    """Push config and layers, then the manifest (by tag, or by digest when no tag)."""
    config = make_config(DOCKER_CONFIG if docker else OCI_CONFIG)
    layer_type = DOCKER_LAYER if docker else OCI_LAYER
    layers = tuple(make_blob(layer_size, layer_type) for _ in range(layer_count))
    for blob in (config, *layers):
        push_blob(client, repo, blob)
    manifest = docker_manifest(config, layers) if docker else oci_manifest(config, layers)
    push_manifest(client, repo, tag or manifest.digest, manifest)
    return Image(config, layers, manifest)


def push_artifact(
    client: httpx.Client,
    repo: str,
    subject: Manifest | Mapping[str, Any],
    artifact_type: str | None,
    annotations: Mapping[str, str] | None = None,
    config_media_type: str = OCI_EMPTY,
) -> Manifest:
    """Push an OCI 1.1 artifact manifest (empty config, one small layer) by digest."""
    config = Blob(EMPTY_JSON, config_media_type)
    layer = make_blob(64, "application/vnd.example.data.v1")
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    manifest = oci_manifest(
        config, [layer], artifact_type=artifact_type, subject=subject, annotations=annotations
    )
    push_manifest(client, repo, manifest.digest, manifest)
    return manifest


def assert_error(response: httpx.Response, status: int, *codes: str) -> dict[str, Any]:
    """The response is ``status`` with the spec's JSON error body naming one of ``codes``."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers[API_VERSION_HEADER] == API_VERSION
    content_type = response.headers.get("Content-Type", "")
    assert content_type.split(";")[0].strip() == "application/json", content_type
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("errors"), list), body
    assert body["errors"], body
    for error in body["errors"]:
        assert isinstance(error.get("code"), str) and re.fullmatch(r"[A-Z_]+", error["code"]), error
        assert isinstance(error.get("message"), str), error
    assert body["errors"][0]["code"] in codes, (body, codes)
    return body


def parse_link(header: str) -> tuple[str, dict[str, list[str]]]:
    """Split an RFC 5988 ``Link: <url>; rel="next"`` header into path and query."""
    match = re.fullmatch(r'<([^>]+)>;\s*rel="next"', header.strip())
    assert match, header
    parts = urlsplit(match.group(1))
    return parts.path, parse_qs(parts.query, keep_blank_values=True)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(
    base_url: str,
    method: str,
    raw_path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> RawResponse:
    """Send a request whose path goes on the wire byte for byte.

    httpx removes ``..`` segments before sending; path-traversal tests need them kept.
    """
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        connection.putrequest(method, raw_path, skip_accept_encoding=True)
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in all_headers.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        data = response.read()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def snapshot(directory: Path, exclude: Path | None = None) -> set[Path]:
    """Every path under ``directory`` (skipping ``exclude``), to compare before and after."""
    found: set[Path] = set()
    for path in directory.rglob("*"):
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        found.add(path)
    return found


def registry_v2(root: Path) -> Path:
    return root / "docker" / "registry" / "v2"
