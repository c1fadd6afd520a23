"""The registry on S3: real servers (``dockyard serve``, Distribution 2.8.2) on a moto
bucket, real clients (skopeo), digests compared.

Layers of several MiB cross the 5 MiB part size the fixture configures, so pushes go
through multipart uploads and pulls through pre-signed redirects to the S3 server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.s3.fixtures import Start, registries_on
from tests.s3.moto_server import MotoServer, S3Endpoint
from tests.support.images import (
    Image,
    make_image,
    patch_chunk,
    push_blob,
    push_blob_chunked,
    read_oci_layout,
    sha256_digest,
    skopeo,
    start_upload,
    with_digest,
    write_oci_layout,
)
from tests.support.servers import ServerProcess

PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"
MiB = 1 << 20



@pytest.fixture
def bucket(moto_server: MotoServer) -> Iterator[str]:
    yield moto_server.new_bucket()
    moto_server.reset()


@pytest.fixture
def start_on_s3(moto_server: MotoServer, tmp_path: Path) -> Iterator[Start]:
    """Start a registry whose storage is ``bucket`` on the moto server."""
    with registries_on(moto_server, tmp_path) as start:
        yield start


def big_image(seed: str) -> Image:
    # Random (incompressible) content: the first layer is 8 to 16 MiB.
    return make_image(seed, layers=2, files_per_layer=4, file_size=4 * MiB)


def push(registry: ServerProcess, image: Image, reference: str, workdir: Path) -> None:
    source = write_oci_layout(workdir / "push-src", {"v1": image})
    skopeo("copy", PUSH, f"oci:{source}:v1", f"docker://{registry.host}/{reference}")


def assert_pulls(registry: ServerProcess, image: Image, reference: str, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"pull-{registry.port}"
    skopeo("copy", PULL, f"docker://{registry.host}/{reference}", f"oci:{out}:v1")
    pulled = read_oci_layout(out)
    assert pulled.tags == {"v1": image.digest}
    assert set(pulled.blobs) == image.all_digests
    assert pulled.blobs[image.digest] == image.manifest.data
    for blob in image.blobs:
        assert pulled.blobs[blob.digest] == blob.data


def bucket_keys(moto_server: S3Endpoint, bucket: str) -> set[str]:
    client = moto_server.client()
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def assert_distribution_layout(
    endpoint: S3Endpoint, bucket: str, image: Image, repository: str, tag: str
) -> set[str]:
    """The image's blobs and tag where Distribution keeps them, and no upload left
    behind, multipart ones included; the bucket's keys."""
    keys = bucket_keys(endpoint, bucket)
    base = "docker/registry/v2"
    for blob in image.blobs:
        hex_digest = blob.digest.removeprefix("sha256:")
        assert f"{base}/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data" in keys
    assert f"{base}/repositories/{repository}/_manifests/tags/{tag}/current/link" in keys
    assert not any("/_uploads/" in key for key in keys)
    assert endpoint.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    return keys


def test_skopeo_round_trip_through_dockyard_on_s3(
    start_on_s3: Start, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    registry = start_on_s3("dockyard", bucket)
    image = big_image("s3-round-trip")
    assert max(len(layer.data) for layer in image.layers) > 5 * MiB
    push(registry, image, "s3/app:v1", tmp_path)
    assert_pulls(registry, image, "s3/app:v1", tmp_path)

    # Distribution's layout, key for key.
    keys = assert_distribution_layout(moto_server, bucket, image, "s3/app", "v1")
    manifest_hex = image.digest.removeprefix("sha256:")
    base = "docker/registry/v2"
    assert f"{base}/repositories/s3/app/_manifests/revisions/sha256/{manifest_hex}/link" in keys

    # A large blob is served by a redirect to a pre-signed URL on the S3 server.
    layer = max(image.layers, key=lambda blob: len(blob.data))
    response = httpx.get(f"{registry.url}/v2/s3/app/blobs/{layer.digest}")
    assert response.status_code == 307
    location = response.headers["Location"]
    assert location.startswith(moto_server.endpoint + "/")
    assert "X-Amz-Signature=" in location
    assert httpx.get(location).content == layer.data


def test_redirect_disabled_streams_from_s3(start_on_s3: Start, bucket: str, tmp_path: Path) -> None:
    registry = start_on_s3("dockyard", bucket, redirect=False)
    image = big_image("s3-no-redirect")
    push(registry, image, "s3/streamed:v1", tmp_path)
    layer = max(image.layers, key=lambda blob: len(blob.data))
    response = httpx.get(f"{registry.url}/v2/s3/streamed/blobs/{layer.digest}")
    assert response.status_code == 200
    assert response.content == layer.data
    ranged = httpx.get(
        f"{registry.url}/v2/s3/streamed/blobs/{layer.digest}",
        headers={"Range": "bytes=5242870-5242889"},
    )
    assert ranged.status_code == 206
    assert ranged.content == layer.data[5242870:5242890]
    assert_pulls(registry, image, "s3/streamed:v1", tmp_path)


def test_a_bucket_distribution_wrote_is_served_by_dockyard(
    start_on_s3: Start, bucket: str, tmp_path: Path
) -> None:
    distribution = start_on_s3("distribution", bucket)
    image = big_image("s3-from-distribution")
    push(distribution, image, "interop/from-distribution:v1", tmp_path)
    distribution.stop()
    dockyard = start_on_s3("dockyard", bucket)
    assert_pulls(dockyard, image, "interop/from-distribution:v1", tmp_path)
    tags = httpx.get(f"{dockyard.url}/v2/interop/from-distribution/tags/list").json()
    assert tags == {"name": "interop/from-distribution", "tags": ["v1"]}


def test_a_bucket_dockyard_wrote_is_served_by_distribution(
    start_on_s3: Start, bucket: str, tmp_path: Path
) -> None:
    dockyard = start_on_s3("dockyard", bucket)
    image = big_image("s3-from-dockyard")
    push(dockyard, image, "interop/from-dockyard:v1", tmp_path)
    dockyard.stop()
    distribution = start_on_s3("distribution", bucket)
    assert_pulls(distribution, image, "interop/from-dockyard:v1", tmp_path)
    catalog = httpx.get(f"{distribution.url}/v2/_catalog").json()
    assert catalog == {"repositories": ["interop/from-dockyard"]}


def test_garbage_collection_on_s3_frees_exactly_the_deleted_image(
    start_on_s3: Start, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    """The seed's story on a bucket: delete one image by digest, collect while serving."""
    registry = start_on_s3("dockyard", bucket)
    kept = make_image("s3-gc-kept", layers=2)
    dropped = make_image("s3-gc-dropped", layers=2)
    push(registry, kept, "gc/kept:v1", tmp_path / "kept")
    push(registry, dropped, "gc/dropped:v1", tmp_path / "dropped")
    deleted = httpx.delete(f"{registry.url}/v2/gc/dropped/manifests/{dropped.digest}")
    assert deleted.status_code == 202

    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard",
            "garbage-collect",
            str(registry.config_path),
            "--delay",
            "0",
            "--settle",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr + collected.stdout

    def blob_key(digest: str) -> str:
        hex_digest = digest.removeprefix("sha256:")
        return f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"

    keys = bucket_keys(moto_server, bucket)
    assert {blob_key(d) for d in kept.all_digests} <= keys
    assert not {blob_key(d) for d in dropped.all_digests} & keys
    assert not any("/_dockyard/trash/" in key for key in keys)
    assert_pulls(registry, kept, "gc/kept:v1", tmp_path / "after")
    catalog = httpx.get(f"{registry.url}/v2/_catalog").json()
    assert catalog == {"repositories": ["gc/kept"]}


def test_chunked_upload_across_workers_on_s3(
    start_on_s3: Start, bucket: str, moto_server: MotoServer
) -> None:
    """Every request on a new connection, which the kernel may give to either worker:
    each chunk continues, wherever it lands, from the object the last one committed (the
    driver test of resuming from another process makes that deterministic)."""
    registry = start_on_s3("dockyard", bucket, workers=2)
    data = os.urandom(14 * MiB + 11)
    # No kept-alive connections: each request is a new one.
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=60) as client:
        digest = push_blob_chunked(client, registry.url, "s3/chunked", data, 3 * MiB)
        assert digest == sha256_digest(data)
        pulled = client.get(f"{registry.url}/v2/s3/chunked/blobs/{digest}", follow_redirects=True)
    assert pulled.status_code == 200
    assert pulled.content == data
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def bucket_requests(moto_server: MotoServer, bucket: str, since: int) -> list[tuple[str, str]]:
    """(method, key and query) of each request to ``bucket`` that the moto server logged
    after byte ``since`` of its log."""
    with open(moto_server.log_path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    pattern = re.compile(rf'"([A-Z]+) /{re.escape(bucket)}/(\S*) HTTP/[0-9.]+"')
    return pattern.findall(text)


def test_a_chunk_costs_the_bucket_one_look_at_the_session(
    start_on_s3: Start, bucket: str, moto_server: MotoServer
) -> None:
    """Each chunk after the first: the session's start time read, its data looked at
    once, the part, the data's new (empty) tail naming the parts, and the hash state.
    Not a second look at the data, nor at its time object, nor a listing of the parts:
    only completing the upload needs their ETags."""
    registry = start_on_s3("dockyard", bucket, workers=1)
    chunk = 5 * MiB  # the fixture's part size: every chunk one part, the tail empty
    data = os.urandom(4 * chunk)
    with httpx.Client(timeout=60) as client:
        url = start_upload(client, registry.url, "s3/counted")
        for offset in range(0, len(data), chunk):
            logged = moto_server.log_path.stat().st_size
            url = patch_chunk(client, registry.url, url, data[offset : offset + chunk], offset)
            if not offset:
                continue
            requests = bucket_requests(moto_server, bucket, logged)
            kinds = sorted(
                (method, re.sub(r".*/_uploads/[^/]+/", "", key).split("?")[0].split("/")[0])
                for method, key in requests
            )
            assert kinds == [
                ("GET", "startedat"),
                ("HEAD", "data"),
                ("PUT", "data"),  # the part
                ("PUT", "data"),  # the tail
                ("PUT", "hashstates"),
            ], requests
            assert sum("partNumber=" in key for _, key in requests) == 1
        digest = sha256_digest(data)
        finished = client.put(with_digest(url, digest))
        assert finished.status_code == 201, finished.text
        pulled = client.get(f"{registry.url}/v2/s3/counted/blobs/{digest}", follow_redirects=True)
    assert pulled.content == data
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_monolithic_push_sends_its_bytes_to_the_blob_once(
    start_on_s3: Start, bucket: str, moto_server: MotoServer
) -> None:
    """POST, then one PUT with the whole blob: its parts go to the blob's key, not to the
    session's data to be copied from there afterwards."""
    registry = start_on_s3("dockyard", bucket, workers=1)
    data = os.urandom(12 * MiB + 3)  # three parts of the fixture's 5 MiB
    digest = sha256_digest(data)
    with httpx.Client(timeout=60) as client:
        url = start_upload(client, registry.url, "s3/whole")
        logged = moto_server.log_path.stat().st_size
        finished = client.put(with_digest(url, digest), content=data)
        assert finished.status_code == 201, finished.text
        requests = bucket_requests(moto_server, bucket, logged)
        pulled = client.get(f"{registry.url}/v2/s3/whole/blobs/{digest}", follow_redirects=True)
    assert pulled.content == data
    blob_key = f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
    parts = [key for method, key in requests if method == "PUT" and "partNumber=" in key]
    assert len(parts) == 3 and all(blob_key in key for key in parts), requests
    # No whole-object PUT to the blob's key (its time object aside): that would be a
    # copy, or a second upload.
    whole = [key for method, key in requests if method == "PUT" and key.endswith(blob_key)]
    assert [key for key in whole if not key.startswith("~times/")] == [], requests
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_each_worker_reads_a_link_once_and_none_serves_it_once_deleted(
    start_on_s3: Start, bucket: str, moto_server: MotoServer
) -> None:
    """With the in-memory descriptor cache and no Redis, a worker keeps the links it has
    read until a process of the host removes one: redirected GETs cost the bucket one
    link read per worker, and after a DELETE through either worker neither serves it."""
    registry = start_on_s3("dockyard", bucket, blobdescriptor="inmemory")
    with httpx.Client(timeout=60) as client:
        digest = push_blob(client, registry.url, "s3/cached", os.urandom(MiB))
    url = f"{registry.url}/v2/s3/cached/blobs/{digest}"
    link = f"s3/cached/_layers/sha256/{digest[7:]}/link"
    logged = moto_server.log_path.stat().st_size
    # A connection each: the kernel spreads them over both workers.
    for _ in range(20):
        with httpx.Client(timeout=60) as client:
            assert client.get(url).status_code == 307
    reads = [key for method, key in bucket_requests(moto_server, bucket, logged) if link in key]
    assert 1 <= len(reads) <= 2, reads
    with httpx.Client(timeout=60) as client:
        assert client.delete(url).status_code == 202
    for _ in range(10):
        with httpx.Client(timeout=60) as client:
            assert client.get(url).status_code == 404
