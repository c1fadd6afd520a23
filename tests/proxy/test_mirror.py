"""Dockyard as a pull-through cache (``proxy`` / ``dockyard.proxy``), end to end.

Every upstream is a real registry on loopback (Dockyard or Distribution), reached
through a counting reverse proxy (``support.CountingProxy``) so the tests can tell
what the mirror asked the upstream, take the upstream away, hold a blob's body back
or corrupt it. Clients are skopeo and plain HTTP.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth.support import htpasswd_config, token_config
from tests.proxy.support import CountingProxy
from tests.support.images import (
    Image,
    make_image,
    make_index,
    push_blob,
    read_oci_layout,
    skopeo,
    skopeo_fails,
    write_oci_layout,
)
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]

PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"


@pytest.fixture
def proxies() -> Iterator[Callable[[ServerProcess], CountingProxy]]:
    started: list[CountingProxy] = []

    def start(upstream: ServerProcess) -> CountingProxy:
        proxy = CountingProxy(upstream.url)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()


def push_image(
    registry: ServerProcess, tmp_path: Path, ref: str, image: Image, *creds: str
) -> None:
    layout = write_oci_layout(tmp_path / f"src-{image.digest[7:19]}", {"v": image})
    skopeo("copy", PUSH, *creds, f"oci:{layout}:v", f"docker://{registry.host}/{ref}")


def pull_image(registry: ServerProcess, out: Path, ref: str) -> dict[str, bytes]:
    """skopeo copy from the registry into an OCI layout; returns its blobs by digest."""
    skopeo("copy", PULL, f"docker://{registry.host}/{ref}", f"oci:{out}:v")
    pulled = read_oci_layout(out)
    return pulled.blobs


def assert_same_image(blobs: dict[str, bytes], image: Image) -> None:
    assert image.digest in blobs
    assert blobs[image.digest] == image.manifest.data
    for blob in image.blobs:
        assert blobs[blob.digest] == blob.data


def mirror_of(
    server_factory: ServerFactory, upstream_url: str, ttl: str | None = None, **extra: Any
) -> ServerProcess:
    proxy: dict[str, Any] = {"remoteurl": upstream_url}
    if ttl is not None:
        proxy["ttl"] = ttl
    return server_factory("dockyard", config={"proxy": proxy, **extra}, name="mirror")


UPSTREAM_KINDS = ["dockyard", "distribution"]


@pytest.mark.parametrize("kind", UPSTREAM_KINDS)
def test_pull_through_then_served_locally(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
    kind: str,
) -> None:
    upstream = server_factory(kind, name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url)
    image = make_image(f"through-{kind}", layers=3)
    push_image(upstream, tmp_path, "team/app:v1", image)

    assert_same_image(pull_image(mirror, tmp_path / "first", "team/app:v1"), image)
    assert counter.count("GET", f"/blobs/{image.blobs[-1].digest}") == 1
    fetched = counter.count()
    assert fetched > 0

    # Again, by tag and by digest: all from the cache, nothing reaches the upstream.
    assert_same_image(pull_image(mirror, tmp_path / "second", "team/app:v1"), image)
    assert_same_image(pull_image(mirror, tmp_path / "third", f"team/app@{image.digest}"), image)
    assert counter.count() == fetched

    # Stored as a push would have stored it: the cache is an ordinary repository.
    tags = httpx.get(f"{mirror.url}/v2/team/app/tags/list").json()
    assert tags["tags"] == ["v1"]
    # Unknown upstream: the client's error is the upstream's.
    response = httpx.get(f"{mirror.url}/v2/team/app/manifests/nope")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_cached_tag_is_served_while_the_upstream_is_down(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url, ttl="1s")
    image = make_image("outage")
    push_image(upstream, tmp_path, "team/app:v1", image)
    assert_same_image(pull_image(mirror, tmp_path / "first", "team/app:v1"), image)

    counter.go_down()
    # Past the ttl the tag is due for a check the upstream cannot answer.
    time.sleep(1.5)
    assert_same_image(pull_image(mirror, tmp_path / "second", "team/app:v1"), image)
    assert_same_image(pull_image(mirror, tmp_path / "third", f"team/app@{image.digest}"), image)
    # What was never cached cannot be served.
    response = httpx.get(f"{mirror.url}/v2/team/other/manifests/v1")
    assert response.status_code == 503
    assert response.json()["errors"][0]["code"] == "UNAVAILABLE"

    counter.come_back()
    assert_same_image(pull_image(mirror, tmp_path / "fourth", "team/app:v1"), image)


def test_tag_is_revalidated_after_ttl(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url, ttl="3s")
    old, new = make_image("ttl-old"), make_image("ttl-new")
    push_image(upstream, tmp_path, "team/app:latest", old)
    push_image(upstream, tmp_path, "team/app:next", new)
    assert_same_image(pull_image(mirror, tmp_path / "first", "team/app:latest"), old)

    # The tag moves upstream (one manifest PUT); within the ttl the mirror does not ask.
    moved = httpx.put(
        f"{upstream.url}/v2/team/app/manifests/latest",
        content=new.manifest.data,
        headers={"Content-Type": new.manifest.media_type},
    )
    assert moved.status_code == 201
    heads = counter.count("HEAD", "/manifests/latest")
    assert_same_image(pull_image(mirror, tmp_path / "second", "team/app:latest"), old)
    assert counter.count("HEAD", "/manifests/latest") == heads

    time.sleep(3.5)
    assert_same_image(pull_image(mirror, tmp_path / "third", "team/app:latest"), new)
    assert counter.count("HEAD", "/manifests/latest") == heads + 1
    # The new image's layers came from the upstream; the old one's stayed cached.
    assert counter.count("GET", f"/blobs/{new.layers[0].digest}") == 1
    assert counter.count("GET", f"/blobs/{old.layers[0].digest}") == 1


def test_unused_content_expires_and_garbage_collection_frees_it(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(
        server_factory, counter.url, ttl="1s", dockyard={"gc": {"delay": "0s", "settle": "1s"}}
    )
    image = make_image("expiry")
    push_image(upstream, tmp_path, "team/app:v1", image)
    pull_image(mirror, tmp_path / "first", "team/app:v1")
    v2 = mirror.root / "docker" / "registry" / "v2"
    revision = v2 / "repositories/team/app/_manifests/revisions/sha256" / image.digest[7:]
    layer = image.layers[0].digest[7:]
    assert revision.exists()
    assert (v2 / "blobs/sha256" / layer[:2] / layer / "data").exists()

    deadline = time.monotonic() + 60
    while revision.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not revision.exists(), "the expired manifest is still there"
    assert not (v2 / "repositories/team/app/_manifests/tags/v1").exists()

    collect = subprocess.run(
        [sys.executable, "-m", "dockyard", "garbage-collect", str(mirror.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert collect.returncode == 0, collect.stderr
    assert not (v2 / "blobs/sha256" / layer[:2] / layer).exists(), collect.stdout

    # Pulled again, it comes back from the upstream.
    assert_same_image(pull_image(mirror, tmp_path / "second", "team/app:v1"), image)


BIG = 256 << 20
CLIENTS = 10


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_pulls_of_a_cold_blob_fetch_it_once_and_stream(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    workers: int,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    # With two workers the kernel spreads the clients over both: one fetches, the
    # other follows its spool.
    mirror = mirror_of(server_factory, counter.url, dockyard={"workers": workers})
    data = os.urandom(BIG)
    expected = hashlib.sha256(data).hexdigest()
    with httpx.Client(timeout=120) as client:
        digest = push_blob(client, upstream.url, "big/blob", data)
    del data

    # The upstream's body stops one MiB short of the end until every client has bytes.
    counter.gate_path = f"/blobs/{digest}"
    started = threading.Semaphore(0)
    results: list[tuple[int, str, int]] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            hasher = hashlib.sha256()
            size = 0
            first = True
            with httpx.stream(
                "GET", f"{mirror.url}/v2/big/blob/blobs/{digest}", timeout=120
            ) as response:
                for chunk in response.iter_bytes():
                    if first and chunk:
                        first = False
                        started.release()
                    hasher.update(chunk)
                    size += len(chunk)
                results.append((response.status_code, hasher.hexdigest(), size))
        except Exception as error:  # noqa: BLE001 - reported below, with the others
            errors.append(error)
            started.release()

    threads = [threading.Thread(target=pull) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for _ in range(CLIENTS):
        assert started.acquire(timeout=120), "a client received nothing while the fetch ran"
    # Every client is receiving while the upstream body is incomplete.
    assert not counter.gate.is_set()
    assert not errors, errors
    counter.gate.set()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert results == [(200, expected, BIG)] * CLIENTS
    # One fetch of the blob; a disk slower than the network may have had its spool ask
    # for parts of it again, by range.
    assert counter.count("GET", f"/blobs/{digest}", whole=True) == 1
    fetched = counter.count("GET", f"/blobs/{digest}")

    # Stored: the next pull is local.
    with httpx.stream("GET", f"{mirror.url}/v2/big/blob/blobs/{digest}", timeout=120) as response:
        hasher = hashlib.sha256()
        for chunk in response.iter_bytes():
            hasher.update(chunk)
    assert hasher.hexdigest() == expected
    assert counter.count("GET", f"/blobs/{digest}") == fetched


@pytest.mark.parametrize("workers", [1, 2])
def test_a_cold_blob_pulled_through_two_repositories_at_once_is_linked_into_both(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    workers: int,
) -> None:
    # Two images sharing a base layer, pulled at the same time: the pulls through the
    # second repository join the fetch the first started (or follow it from another
    # worker), and the store must say the layer is in both, as Distribution reads it.
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url, dockyard={"workers": workers})
    data = os.urandom(4 << 20)
    with httpx.Client(timeout=60) as client:
        digest = push_blob(client, upstream.url, "one/app", data)
        assert push_blob(client, upstream.url, "two/app", data) == digest
    counter.gate_path = f"/blobs/{digest}"
    receiving = threading.Semaphore(0)
    results: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []

    def pull(name: str) -> None:
        try:
            body = bytearray()
            url = f"{mirror.url}/v2/{name}/blobs/{digest}"
            with httpx.stream("GET", url, timeout=120) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    if chunk and not body:
                        receiving.release()
                    body += chunk
            results.append((name, bytes(body)))
        except Exception as error:  # noqa: BLE001 - reported below, with the others
            errors.append(error)
            receiving.release()

    first = threading.Thread(target=pull, args=("one/app",))
    first.start()
    assert receiving.acquire(timeout=60), "the first pull received nothing"
    # The first pull has bytes and the fetch is held short of its end: these join it.
    others = [threading.Thread(target=pull, args=("two/app",)) for _ in range(4)]
    for thread in others:
        thread.start()
    for _ in others:
        assert receiving.acquire(timeout=60), "a pull through two/app received nothing"
    assert not counter.gate.is_set() and not errors, errors
    counter.gate.set()
    for thread in [first, *others]:
        thread.join(120)
    assert not errors, errors
    assert sorted(results) == [("one/app", data)] + [("two/app", data)] * 4
    assert counter.count("GET", f"/blobs/{digest}", whole=True) == 1
    mirror.stop()

    distribution = server_factory("distribution", root=mirror.root, name="distribution")
    for name in ("one/app", "two/app"):
        response = httpx.get(f"{distribution.url}/v2/{name}/blobs/{digest}", timeout=60)
        assert response.status_code == 200, name
        assert response.content == data


def test_content_that_does_not_match_its_digest_is_not_stored(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url)
    image = make_image("corrupt")
    push_image(upstream, tmp_path, "team/app:v1", image)
    layer = image.layers[0]
    counter.corrupt_path = f"/blobs/{layer.digest}"

    url = f"{mirror.url}/v2/team/app/blobs/{layer.digest}"
    # The last byte waits for verification, which fails: the body is cut short.
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", url) as response:
        assert response.status_code == 200
        for _ in response.iter_bytes():
            pass
    blob_dir = (
        mirror.root / "docker/registry/v2/blobs/sha256" / layer.digest[7:9] / layer.digest[7:]
    )
    assert not blob_dir.exists()

    counter.corrupt_path = None
    response = httpx.get(f"{mirror.url}/v2/team/app/blobs/{layer.digest}")
    assert response.status_code == 200
    assert response.content == layer.data
    # The client has every byte once the body's length is reached; the commit follows.
    deadline = time.monotonic() + 30
    while not blob_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blob_dir.exists()


def test_pushes_to_a_mirror_are_refused_unless_the_prefix_is_local(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = server_factory(
        "dockyard",
        config={
            "dockyard": {
                "proxy": [
                    {"prefix": "hub", "remoteurl": counter.url},
                    {"prefix": "hub/ours", "local": True},
                ]
            }
        },
        name="mirror",
    )
    image = make_image("push")
    for name in ("hub/team/app", "hub/single"):
        response = httpx.post(f"{mirror.url}/v2/{name}/blobs/uploads/")
        assert response.status_code == 405
        assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
        response = httpx.put(
            f"{mirror.url}/v2/{name}/manifests/v1",
            content=image.manifest.data,
            headers={"Content-Type": image.manifest.media_type},
        )
        assert response.status_code == 405
        assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
        response = httpx.delete(f"{mirror.url}/v2/{name}/manifests/{image.digest}")
        assert response.status_code == 405
    stderr = skopeo_fails(
        "copy",
        PUSH,
        f"oci:{write_oci_layout(tmp_path / 'src', {'v': image})}:v",
        f"docker://{mirror.host}/hub/team/app:v1",
    )
    assert "405" in stderr or "unsupported" in stderr.lower()
    # skopeo asks whether the blobs exist (which the mirror answers from upstream);
    # nothing is written anywhere.
    assert counter.count("POST") == counter.count("PUT") == counter.count("PATCH") == 0

    # A local prefix inside the mirrored one, and names outside every prefix, take pushes.
    for name in ("hub/ours/app", "elsewhere/app"):
        push_image(mirror, tmp_path, f"{name}:v1", image)
        assert_same_image(
            pull_image(mirror, tmp_path / name.replace("/", "-"), f"{name}:v1"), image
        )
    assert counter.count(contains="/ours/") == counter.count(contains="/elsewhere/") == 0


def test_upstreams_by_prefix_with_implied_library(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    first = server_factory("dockyard", name="first")
    second = server_factory(UPSTREAM_KINDS[-1], name="second")
    first_counter, second_counter = proxies(first), proxies(second)
    mirror = server_factory(
        "dockyard",
        config={
            "dockyard": {
                "proxy": [
                    {"prefix": "docker.io", "remoteurl": first_counter.url, "library": True},
                    {"prefix": "quay.example", "remoteurl": second_counter.url},
                ]
            }
        },
        name="mirror",
    )
    alpine, app, other = make_image("alpine"), make_image("app"), make_image("other")
    push_image(first, tmp_path, "library/alpine:3", alpine)
    push_image(first, tmp_path, "team/app:1", app)
    push_image(second, tmp_path, "org/other:2", other)

    assert_same_image(pull_image(mirror, tmp_path / "a", "docker.io/alpine:3"), alpine)
    assert_same_image(pull_image(mirror, tmp_path / "b", "docker.io/library/alpine:3"), alpine)
    assert_same_image(pull_image(mirror, tmp_path / "c", "docker.io/team/app:1"), app)
    assert_same_image(pull_image(mirror, tmp_path / "d", "quay.example/org/other:2"), other)
    assert second_counter.count("GET", "/v2/library/") == 0
    assert first_counter.count(contains="/v2/org/") == 0
    assert second_counter.count(contains="/v2/org/other/") > 0
    # No prefix matches: an ordinary local repository, no upstream asked.
    response = httpx.get(f"{mirror.url}/v2/alpine/manifests/3")
    assert response.status_code == 404


@pytest.mark.parametrize("scheme", ["token", "basic"])
def test_upstream_with_auth(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
    scheme: str,
) -> None:
    upstream_dir = tmp_path / "upstream-auth"
    upstream_dir.mkdir()
    config = token_config(upstream_dir) if scheme == "token" else htpasswd_config(upstream_dir)
    upstream = server_factory("dockyard", config=config, name="upstream")
    counter = proxies(upstream)
    image = make_image("token")
    push_image(upstream, tmp_path, "proj/app:v1", image, "--dest-creds", "writer:writer-pw")

    mirror = server_factory(
        "dockyard",
        config={"proxy": {"remoteurl": counter.url, "username": "reader", "password": "reader-pw"}},
        name="mirror",
    )
    assert_same_image(pull_image(mirror, tmp_path / "first", "proj/app:v1"), image)
    # The token flow ran through the upstream's own token service.
    assert counter.count("GET", "/auth/token") >= (1 if scheme == "token" else 0)
    assert counter.count(contains="/v2/proj/app/blobs/") >= len(image.blobs)

    # Without credentials the upstream refuses, and so does the mirror.
    anonymous = server_factory(
        "dockyard", config={"proxy": {"remoteurl": counter.url}}, name="anonymous"
    )
    response = httpx.get(f"{anonymous.url}/v2/proj/app/manifests/v1")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_multi_platform_index_through_the_mirror(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url)
    index = make_index("mirror-multi")
    layout = write_oci_layout(tmp_path / "src", {"v": index})
    skopeo("copy", "--all", PUSH, f"oci:{layout}:v", f"docker://{upstream.host}/team/multi:1")

    skopeo(
        "copy", "--all", PULL, f"docker://{mirror.host}/team/multi:1", f"oci:{tmp_path / 'all'}:v"
    )
    pulled = read_oci_layout(tmp_path / "all")
    assert pulled.tags == {"v": index.digest}
    assert set(pulled.blobs) == index.all_digests
    fetched = counter.count()

    # One platform, as `docker pull` on an arm64 host: the cached index resolves it.
    skopeo(
        "--override-os",
        "linux",
        "--override-arch",
        "arm64",
        "copy",
        PULL,
        f"docker://{mirror.host}/team/multi:1",
        f"oci:{tmp_path / 'arm64'}:v",
    )
    arm64 = next(i for i in index.images if i.platform["architecture"] == "arm64")
    assert read_oci_layout(tmp_path / "arm64").tags == {"v": arm64.digest}
    assert counter.count() == fetched


def test_garbage_collection_keeps_cached_manifests_whose_blobs_were_never_pulled(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(
        server_factory, counter.url, dockyard={"gc": {"delay": "0s", "settle": "1s"}}
    )
    image = make_image("gc-partial")
    push_image(upstream, tmp_path, "team/app:v1", image)
    config = image.config
    # The manifest and the config only, as a client that inspects an image fetches them.
    assert httpx.get(f"{mirror.url}/v2/team/app/manifests/v1").status_code == 200
    assert httpx.get(f"{mirror.url}/v2/team/app/blobs/{config.digest}").status_code == 200

    collect = subprocess.run(
        [sys.executable, "-m", "dockyard", "garbage-collect", str(mirror.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert collect.returncode == 0, collect.stderr
    v2 = mirror.root / "docker/registry/v2"
    assert (v2 / "blobs/sha256" / config.digest[7:9] / config.digest[7:] / "data").exists()
    fetched = counter.count()
    assert_same_image(pull_image(mirror, tmp_path / "out", "team/app:v1"), image)
    # Only the layers were still missing.
    assert counter.count() == fetched + len(image.layers)


def test_distribution_serves_what_the_mirror_cached(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
    tmp_path: Path,
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url)
    image = make_image("layout")
    push_image(upstream, tmp_path, "team/app:v1", image)
    pull_image(mirror, tmp_path / "first", "team/app:v1")
    mirror.stop()

    distribution = server_factory("distribution", root=mirror.root, name="distribution")
    assert_same_image(pull_image(distribution, tmp_path / "second", "team/app:v1"), image)


def test_range_request_for_a_blob_not_cached_yet(
    server_factory: ServerFactory,
    proxies: Callable[[ServerProcess], CountingProxy],
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    counter = proxies(upstream)
    mirror = mirror_of(server_factory, counter.url, dockyard={"workers": 1})
    data = os.urandom(3 << 20)
    with httpx.Client() as client:
        digest = push_blob(client, upstream.url, "team/app", data)
    url = f"{mirror.url}/v2/team/app/blobs/{digest}"

    # As a client resuming a download: only the part asked for, while all is fetched.
    response = httpx.get(url, headers={"Range": "bytes=1048000-2097999"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 1048000-2097999/{len(data)}"
    assert response.content == data[1048000:2098000]
    deadline = time.monotonic() + 30
    blob = mirror.root / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    while not blob.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blob.read_bytes() == data
    response = httpx.get(url, headers={"Range": "bytes=-10"})
    assert response.status_code == 206
    assert response.content == data[-10:]
    assert counter.count("GET", f"/blobs/{digest}") == 1
