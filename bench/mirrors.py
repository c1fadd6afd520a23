"""Pull-through mirrors: one Dockyard upstream, a Dockyard and a Distribution mirror of it.

Both mirrors get Distribution's ``proxy.remoteurl`` section pointing at the same upstream
instance, so the upstream's share of a cold pull is the same for both and only the mirror
differs. Every repetition pushes a new image (the fixture's config and a blob with a new
digest) to the upstream under a new tag, so the first pull through each mirror is cold.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import blobs
from bench.fixtures import MANIFEST_ACCEPT, push_bytes
from bench.layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, V2, digest_of
from bench.payload import Blob
from bench.servers import DISTRIBUTION, DOCKYARD, BenchError, RegistryServer
from bench.source import DockyardSource

REPO = "bench/mirror"


@dataclass
class Mirrors:
    upstream: RegistryServer
    mirrors: list[RegistryServer]

    @property
    def servers(self) -> list[RegistryServer]:
        """In start-up order: the upstream before the mirrors of it."""
        return [self.upstream, *self.mirrors]


def build(scratch: Path, workers: int | None, source: DockyardSource) -> Mirrors:
    env = source.env()
    upstream = RegistryServer(
        DOCKYARD, scratch / "mirror-upstream", None, source.path, env, role="upstream"
    )
    proxy = {"proxy": {"remoteurl": upstream.url}}
    mirrors = [
        RegistryServer(
            DOCKYARD, scratch / "mirror-dockyard", workers, source.path, env, proxy, "mirror"
        ),
        RegistryServer(
            DISTRIBUTION, scratch / "mirror-distribution", config_extra=proxy, role="mirror"
        ),
    ]
    return Mirrors(upstream, mirrors)


def manifest_for(config: bytes, layer: Blob) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


async def push_image(
    http: aiohttp.ClientSession, base: str, tag: str, config: bytes, layer: Blob
) -> bytes:
    """The config, the layer and a manifest naming both, under ``tag``; the manifest."""
    await push_bytes(http, base, REPO, config)
    await blobs.push_monolithic(http, base, REPO, layer)
    manifest = manifest_for(config, layer)
    url = f"{base}/v2/{REPO}/manifests/{tag}"
    async with http.put(url, data=manifest, headers={"Content-Type": OCI_MANIFEST}) as response:
        if response.status != 201:
            raise BenchError(f"manifest PUT {url}: {response.status} {await response.text()}")
    return manifest


def manifest_url(server: RegistryServer, tag: str) -> str:
    return f"{server.url}/v2/{REPO}/manifests/{tag}"


def blob_url(server: RegistryServer, digest: str) -> str:
    return f"{server.url}/v2/{REPO}/blobs/{digest}"


async def get_manifest(
    http: aiohttp.ClientSession, server: RegistryServer, tag: str, expected: bytes
) -> None:
    url = manifest_url(server, tag)
    async with http.get(url, headers={"Accept": MANIFEST_ACCEPT}) as response:
        body = await response.read()
    if response.status != 200 or body != expected:
        raise BenchError(f"{server.label}: GET {url}: {response.status}, not the pushed manifest")


def _blob_paths(root: Path, digest: str) -> tuple[Path, Path]:
    hex_ = digest.split(":", 1)[1]
    data = root / V2 / "blobs" / "sha256" / hex_[:2] / hex_ / "data"
    link = root / V2 / "repositories" / REPO / "_layers" / "sha256" / hex_ / "link"
    return data, link


async def wait_cached(server: RegistryServer, blob: Blob, timeout: float) -> None:
    """Until the mirror has the whole blob in its store and linked into the repository.

    The client can have its last byte before the mirror has committed the blob (and
    Distribution stores it in the background), so the warm pull waits for this.
    """
    data, link = _blob_paths(server.root, blob.digest)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if data.stat().st_size == blob.size and link.exists():
                return
        except OSError:
            pass
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{server.label}: {blob.digest} not stored within {timeout:.0f}s")
        await asyncio.sleep(0.02)


def discard(servers: list[RegistryServer], blob: Blob) -> None:
    """Remove the blob's data from every store: its digest never recurs."""
    for server in servers:
        data, _ = _blob_paths(server.root, blob.digest)
        shutil.rmtree(data.parent, ignore_errors=True)
