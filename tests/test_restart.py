"""SIGKILL in the middle of pushes: nothing acknowledged is lost, nothing torn is seen.

A registry process can die at any instant (OOM killer, a node reboot, a deploy that
doesn't drain). Clients resume chunked uploads from the ``Range`` the registry last
acknowledged, and readers (clients, Distribution, garbage collection) must never meet a
half-written link or blob in the data directory.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.images import (
    OCI_MANIFEST,
    Blob,
    make_image,
    patch_chunk,
    push_blob,
    push_manifest,
    serialise,
    sha256_digest,
    start_upload,
    with_digest,
)
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]

LINK = re.compile(rb"sha256:[0-9a-f]{64}")


@pytest.fixture
def restartable(server_factory: ServerFactory) -> ServerProcess:
    """The registry under test, configured so that upload URLs survive a restart.

    Distribution signs the upload state in its URLs with ``http.secret`` and makes up
    a random secret per process when none is configured, so it needs a fixed one to
    resume uploads after a restart at all. Dockyard keeps upload state in storage.
    """
    kind = os.environ.get("DOCKYARD_TEST_TARGET", "dockyard")
    config = {"http": {"secret": "dockyard-restart-test"}} if kind == "distribution" else None
    return server_factory(kind, config=config)


def test_chunked_upload_resumes_after_kill(restartable: ServerProcess) -> None:
    server = restartable
    chunk = 512 * 1024
    data = random.Random("resume").randbytes(3 * chunk + 12_345)
    repository = "restart/resume"

    with httpx.Client(timeout=30) as client:
        url = start_upload(client, server.url, repository)
        url = patch_chunk(client, server.url, url, data[:chunk], 0)
        url = patch_chunk(client, server.url, url, data[chunk : 2 * chunk], chunk)

    server.kill()
    server.start()

    # A new connection pool: the old connections died with the process.
    with httpx.Client(timeout=30) as client:
        status = client.get(url)
        assert status.status_code == 204, status.text
        assert status.headers["Range"] == f"0-{2 * chunk - 1}"
        url = status.headers.get("Location", url)
        if not url.startswith("http"):
            url = server.url + url

        url = patch_chunk(client, server.url, url, data[2 * chunk :], 2 * chunk)
        digest = sha256_digest(data)
        done = client.put(with_digest(url, digest))
        assert done.status_code == 201, done.text
        assert done.headers["Docker-Content-Digest"] == digest

        blob = client.get(f"{server.url}/v2/{repository}/blobs/{digest}")
        assert blob.status_code == 200
        assert blob.content == data
        head = client.head(f"{server.url}/v2/{repository}/blobs/{digest}")
        assert int(head.headers["Content-Length"]) == len(data)

    check_data_directory(server.root)


def numbered_manifests(base: Blob, layers: list[dict[str, object]], count: int) -> list[Blob]:
    """Many distinct manifests over the same blobs (an annotation tells them apart)."""
    manifests = []
    for number in range(count):
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": base.descriptor(),
            "layers": layers,
            "annotations": {"dockyard.test.number": str(number)},
        }
        manifests.append(Blob(OCI_MANIFEST, serialise(document)))
    return manifests


def push_loop(
    url: str,
    repository: str,
    manifests: list[Blob],
    acknowledged: dict[str, Blob],
    errors: list[str],
    start: int,
) -> None:
    """PUT manifests one after another until the server dies under us.

    Only a 201 counts as acknowledged; the request in flight at the kill may or may not
    have landed, which is the point. Any other answer is recorded for the test to fail
    on (an assert in a thread would only warn).
    """
    with httpx.Client(timeout=10) as client:
        for number in range(start, len(manifests), 2):
            tag = f"t{number}"
            try:
                response = push_manifest(client, url, repository, tag, manifests[number])
            except httpx.TransportError:
                return
            if response.status_code != 201:
                errors.append(f"{tag}: {response.status_code} {response.text}")
                return
            acknowledged[tag] = manifests[number]


def test_kill_during_manifest_pushes(restartable: ServerProcess) -> None:
    server = restartable
    repository = "restart/manifests"
    image = make_image("kill-loop", layers=2)
    with httpx.Client(timeout=30) as client:
        for blob in image.blobs:
            push_blob(client, server.url, repository, blob.data)
    layers = [layer.descriptor() for layer in image.layers]
    manifests = numbered_manifests(image.config, layers, 4000)
    by_digest = {m.digest: m for m in manifests}
    rng = random.Random()

    for _round in range(3):
        acknowledged: dict[str, Blob] = {}
        errors: list[str] = []
        threads = [
            threading.Thread(
                target=push_loop,
                args=(server.url, repository, manifests, acknowledged, errors, start),
            )
            for start in (0, 1)
        ]
        for thread in threads:
            thread.start()
        # Kill once a random number of pushes went through: always mid-loop, at a
        # different point each round.
        target = rng.randint(5, 150)
        deadline = time.monotonic() + 60
        while len(acknowledged) < target and time.monotonic() < deadline:
            assert any(t.is_alive() for t in threads), f"push loop ended early: {errors}"
            time.sleep(0.001)
        server.kill()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        assert acknowledged, "nothing was pushed before the kill"

        check_data_directory(server.root)
        server.start()

        with httpx.Client(timeout=30) as client:
            for tag, manifest in acknowledged.items():
                response = client.get(
                    f"{server.url}/v2/{repository}/manifests/{tag}",
                    headers={"Accept": OCI_MANIFEST},
                )
                assert response.status_code == 200, (tag, response.status_code)
                assert response.content == manifest.data, tag

            listed = client.get(f"{server.url}/v2/{repository}/tags/list")
            assert listed.status_code == 200
            for tag in listed.json()["tags"]:
                response = client.get(
                    f"{server.url}/v2/{repository}/manifests/{tag}",
                    headers={"Accept": OCI_MANIFEST},
                )
                # A tag whose push was cut off may be absent; if it answers, it answers
                # with a complete manifest under its true digest.
                assert response.status_code in (200, 404), (tag, response.status_code)
                if response.status_code == 200:
                    digest = sha256_digest(response.content)
                    assert response.headers["Docker-Content-Digest"] == digest
                    assert by_digest[digest].data == response.content

    # After all this the registry still takes pushes for the tags cut off mid-way.
    with httpx.Client(timeout=30) as client:
        for number in range(0, 40):
            response = push_manifest(client, server.url, repository, f"t{number}", manifests[number])
            assert response.status_code == 201, response.text
    check_data_directory(server.root)


def check_data_directory(root: Path) -> None:
    """No torn file is visible in the registry:2 layout.

    Every ``link`` holds a whole ``sha256:<hex>``; every blob's ``data`` hashes to the
    digest its path names; every tag's current link leads to a manifest revision of its
    repository whose blob exists. Upload sessions (``_uploads``) are partial by nature
    and skipped.
    """
    v2 = root / "docker" / "registry" / "v2"
    blobs = v2 / "blobs"
    for path in v2.rglob("*"):
        if "_uploads" in path.parts or not path.is_file():
            continue
        if path.name == "link":
            assert LINK.fullmatch(path.read_bytes()), (path, path.read_bytes())
        elif path.name == "data" and blobs in path.parents:
            digest = "sha256:" + path.parent.name
            assert sha256_digest(path.read_bytes()) == digest, path

    repositories = v2 / "repositories"
    for current in repositories.rglob("_manifests/tags/*/current/link"):
        digest = current.read_text()
        hex_digest = digest.removeprefix("sha256:")
        manifests = current.parents[3]
        assert (manifests / "revisions" / "sha256" / hex_digest / "link").is_file(), current
        assert (blobs / "sha256" / hex_digest[:2] / hex_digest / "data").is_file(), current
