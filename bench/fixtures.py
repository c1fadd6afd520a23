"""The small image every server gets before measuring: a config, a 4 KiB layer, a manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass

import aiohttp

from bench.blobs import OCTET_STREAM, start_upload
from bench.layout import OCI_MANIFEST, digest_of, image_manifest
from bench.servers import BenchError

# Distribution 2.8 refuses to serve an OCI manifest to a client whose Accept header does
# not name the OCI type, so every manifest request sends what docker and podman send.
MANIFEST_ACCEPT = (
    f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json"
)


@dataclass(frozen=True)
class Fixture:
    repo: str
    tag: str
    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def layer_digest(self) -> str:
        return digest_of(self.layer)


def make_fixture(repo: str, layer_size: int = 4096) -> Fixture:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(layer_size)
    return Fixture(repo, "latest", config, layer, image_manifest(config, [layer]))


async def push_bytes(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    location = await start_upload(http, base, repo)
    separator = "&" if "?" in location else "?"
    async with http.put(
        f"{location}{separator}digest={digest}",
        data=data,
        headers={"Content-Type": OCTET_STREAM},
    ) as response:
        if response.status != 201:
            raise BenchError(f"blob upload to {repo}: {response.status} {await response.text()}")
    return digest


async def push_fixture(http: aiohttp.ClientSession, base: str, fixture: Fixture) -> None:
    await push_bytes(http, base, fixture.repo, fixture.config)
    await push_bytes(http, base, fixture.repo, fixture.layer)
    url = f"{base}/v2/{fixture.repo}/manifests/{fixture.tag}"
    async with http.put(
        url, data=fixture.manifest, headers={"Content-Type": OCI_MANIFEST}
    ) as response:
        if response.status != 201:
            raise BenchError(f"manifest PUT {url}: {response.status} {await response.text()}")


async def check_get(
    http: aiohttp.ClientSession, url: str, expected: bytes, headers: dict[str, str] | None = None
) -> None:
    """The load figures only mean something if the URL answers what it should."""
    async with http.get(url, headers=headers) as response:
        body = await response.read()
        if response.status != 200 or body != expected:
            raise BenchError(f"GET {url}: {response.status}, {len(body)} bytes, not the fixture")
    async with http.head(url, headers=headers) as response:
        if response.status != 200:
            raise BenchError(f"HEAD {url}: {response.status}")
