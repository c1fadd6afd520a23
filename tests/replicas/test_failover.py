"""A replica SIGKILLed in the middle of a chunked push: the client carries on through
nginx, and nothing half-written is ever visible.

Two moments: between two PATCHes (the replica that acknowledged the last one dies), and
in the middle of a PATCH body (the replica receiving it dies with part of the chunk
read). The client does what the OCI distribution spec allows after a failed request:
``GET`` the upload URL, read ``Range``, continue from its end. Until the closing PUT,
no replica admits the blob exists and the bucket has nothing of it under ``blobs/``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.replicas.clients import ResumableUpload
from tests.replicas.harness import Cluster, Replica
from tests.support.images import sha256_digest

MiB = 1 << 20
CHUNK = MiB
KILLED_AT = 2 * CHUNK  # two PATCHes acknowledged before the kill


def receiving(cluster: Cluster, timeout: float = 30.0) -> Replica:
    """The one replica with an upload request receiving data now (its own metrics)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [r for r in cluster.alive() if r.uploads_in_flight() > 0]
        if len(busy) == 1:
            return busy[0]
        assert len(busy) < 2, [r.number for r in busy]
        time.sleep(0.02)
    raise AssertionError("no replica is receiving the PATCH")


def last_to_answer(cluster: Cluster, upload_path: str, patches: int) -> Replica:
    """The replica that acknowledged the latest PATCH of the upload (access logs)."""
    lines = cluster.access_matching(
        lambda line: line.method == "PATCH" and line.uri.split("?")[0] == upload_path, patches
    )
    assert len(lines) == patches, lines
    latest = max(lines, key=lambda line: line.logged_at)
    return cluster.replicas[latest.replica - 1]


def assert_not_visible(cluster: Cluster, repository: str, digest: str) -> None:
    """No surviving replica has the blob, and the bucket has nothing of it in blobs/."""
    with httpx.Client(timeout=30) as client:
        for replica in cluster.alive():
            head = client.head(f"{replica.url}/v2/{repository}/blobs/{digest}")
            assert head.status_code == 404, (replica.number, head.status_code, head.headers)
            get = client.get(f"{replica.url}/v2/{repository}/blobs/{digest}")
            assert get.status_code == 404, (replica.number, get.status_code)
    assert cluster.blob_keys(digest) == set()


@pytest.mark.parametrize("moment", ["between_patches", "mid_patch"])
def test_replica_killed_during_a_chunked_push(cluster: Cluster, moment: str) -> None:
    data = random.Random(f"failover-{moment}").randbytes(6 * MiB + 777)
    digest = sha256_digest(data)
    repository = f"replicas/failover-{moment.replace('_', '-')}"
    killed: list[Replica] = []

    def body_for(offset: int, chunk: bytes) -> bytes | Iterator[bytes]:
        if moment != "mid_patch" or offset != KILLED_AT or killed:
            return chunk

        def body() -> Iterator[bytes]:
            half = len(chunk) // 2
            yield chunk[:half]
            # Half the chunk is on its way; the replica nginx gave it to is reading it.
            victim = receiving(cluster)
            victim.kill()
            killed.append(victim)
            yield chunk[half:]

        return body()

    with httpx.Client(timeout=60) as client:
        upload = ResumableUpload(client, cluster.url, repository, data, CHUNK)
        upload.start()
        upload_path = upload.url.removeprefix(cluster.url).split("?")[0]
        assert upload.send(until=KILLED_AT, body_for=body_for) == KILLED_AT
        assert upload.failures == []

        if moment == "between_patches":
            victim = last_to_answer(cluster, upload_path, KILLED_AT // CHUNK)
            victim.kill()
            killed.append(victim)
            assert_not_visible(cluster, repository, digest)

        # The rest, through nginx; the mid-PATCH kill happens in the first of these.
        assert upload.send(body_for=body_for) == len(data)
        assert len(killed) == 1
        victim = killed[0]
        assert not victim.alive()
        print(f"\nreplica {victim.number} killed ({moment}); client saw: {upload.failures}")
        if moment == "mid_patch":
            # The torn PATCH failed for the client, which asked where to go on from.
            assert upload.failures, "the PATCH the replica died in did not fail"
            assert any(
                line.method == "GET" and line.uri.split("?")[0] == upload_path
                for line in cluster.access()
            ), "the client did not ask for the upload's Range"
        assert upload.restarts == 0

        # Everything sent, nothing closed: still invisible everywhere.
        assert_not_visible(cluster, repository, digest)

        done = upload.finish()
        assert done.status_code == 201, (done.status_code, done.text)
        assert done.headers["Docker-Content-Digest"] == digest

        # Every surviving replica, and nginx, serve exactly the bytes pushed.
        for url in [cluster.url, *(replica.url for replica in cluster.alive())]:
            got = client.get(f"{url}/v2/{repository}/blobs/{digest}", follow_redirects=True)
            assert got.status_code == 200, (url, got.status_code)
            assert sha256_digest(got.content) == digest, url
            head = client.head(f"{url}/v2/{repository}/blobs/{digest}")
            assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)

    # The killed replica comes back and serves it too.
    victim.start(timeout=60.0)
    with httpx.Client(timeout=60, follow_redirects=True) as client:
        got = client.get(f"{victim.url}/v2/{repository}/blobs/{digest}")
        assert got.status_code == 200
        assert sha256_digest(got.content) == digest
    keys = cluster.keys()
    assert len(cluster.blob_keys(digest)) == 1
    assert not any(f"/{repository}/_uploads/" in key for key in keys), "upload left behind"
