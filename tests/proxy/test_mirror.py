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

from tests.auth.support import token_config
from tests.proxy.support import CountingProxy
from tests.support.images import (
    Image,
    make_image,
    push_blob,
    read_oci_layout,
    skopeo,
    skopeo_fails,
    write_oci_layout,
)
from tests.support.servers import ServerProcess, distribution_available

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


def push_image(registry: ServerProcess, tmp_path: Path, ref: str, image: Image, *creds: str) -> None:
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


UPSTREAM_KINDS = ["dockyard"] + (["distribution"] if distribution_available() else [])


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
