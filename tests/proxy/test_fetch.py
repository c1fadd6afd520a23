"""A cold blob's fetch: readers get bytes from memory before the spool has them, the
memory it holds is bounded, and a spool that fails ends the fetch for every reader."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dockyard.config import load_config
from dockyard.proxy import fetch as fetch_module
from dockyard.proxy.fetch import BlobFetch
from dockyard.proxy.mirror import Mirror
from dockyard.proxy.routing import Route, Target
from dockyard.proxy.upstream import UpstreamClient
from dockyard.registry import Registry
from dockyard.registry.assembly import build_registry
from dockyard.registry.digest import Digest
from tests.support.servers import free_port

MiB = 1 << 20
WINDOW = 4 * MiB
SIZE = 12 * MiB


class HeldSpool(BlobFetch):
    """A fetch whose spool is written only once ``disk`` is set: a disk far slower than
    the network. With ``fail``, the spool fails as on a full disk."""

    disk: asyncio.Event
    fail = False
    # Seconds between verifying the body and storing it: a slow fsync.
    commit_delay = 0.0

    async def _write_spool(self, hasher: Any) -> None:
        await self.disk.wait()
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        await super()._write_spool(hasher)

    async def _commit(self) -> None:
        await asyncio.sleep(self.commit_delay)
        await super()._commit()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, bytes, Digest]]:
    data = os.urandom(SIZE)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())

    async def blob(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        for offset in range(0, len(data), 256 * 1024):
            await response.write(data[offset : offset + 256 * 1024])
        return response

    app = web.Application()
    app.router.add_get(f"/v2/lib/x/blobs/{digest}", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", data, digest
    await runner.cleanup()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        "http: {addr: 127.0.0.1:0}\n"
    )
    return build_registry(load_config(str(config)).config)


def start_fetch(registry: Registry, url: str, digest: Digest) -> tuple[HeldSpool, UpstreamClient]:
    client = UpstreamClient(url)
    target = Target(Route("", client, ttl=0, library=False), "lib/x", "lib/x")
    HeldSpool.disk = asyncio.Event()
    return HeldSpool(registry, target, digest, lambda _: None), client


async def test_readers_are_served_from_memory_while_the_spool_lags(
    upstream: tuple[str, bytes, Digest], registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    url, data, digest = upstream
    fetch, client = start_fetch(registry, url, digest)
    fd = await fetch.started()
    received = bytearray()
    pieces = fetch.pieces(fd)
    try:
        # Nothing is on disk, yet the reader gets what the window holds.
        while len(received) < WINDOW:
            received += await asyncio.wait_for(pieces.__anext__(), 10)
        assert fetch.written == 0
        await asyncio.sleep(0.2)
        # The upstream is read no further than the window, plus the piece in hand (a piece
        # is at least PIECE bytes, as many as had arrived).
        _, in_hand = fetch._unwritten[-1]
        assert fetch.received - len(in_hand) - fetch.written <= WINDOW
        assert fetch.received < SIZE
        fetch.disk.set()
        async for piece in pieces:
            received += piece
    finally:
        fetch.disk.set()  # a failed assertion must not leave the fetch waiting forever
        fetch.release()
        await fetch.task
        await client.close()
    assert bytes(received) == data
    assert fetch.written == SIZE
    assert await registry.blobs.read(digest) == data
    assert await registry.repository("lib/x").blobs.is_linked(digest)


async def test_a_spool_that_fails_ends_the_fetch_and_stores_nothing(
    upstream: tuple[str, bytes, Digest], registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    monkeypatch.setattr(HeldSpool, "fail", True)
    url, _, digest = upstream
    fetch, client = start_fetch(registry, url, digest)
    fd = await fetch.started()
    pieces = fetch.pieces(fd)
    try:
        await asyncio.wait_for(pieces.__anext__(), 10)
        fetch.disk.set()
        with pytest.raises(OSError, match="No space left"):
            async for _ in pieces:
                pass
    finally:
        fetch.disk.set()
        fetch.release()
        await asyncio.wait_for(fetch.task, 10)
        await client.close()
    assert fetch.error is not None
    assert not await registry.blobs.exists(digest)


async def test_the_mirror_reports_the_size_of_each_blob_it_fetched(
    upstream: tuple[str, bytes, Digest], registry: Registry
) -> None:
    # The server's heap trimmer hears of it: a fetch held pieces of it in memory.
    url, data, digest = upstream
    client = UpstreamClient(url)
    route = Route("", client, ttl=0, library=False)
    sizes: list[int] = []
    mirror = Mirror(registry, [route], sizes.append)
    try:
        fetch = mirror.fetch(Target(route, "lib/x", "lib/x"), digest)
        assert isinstance(fetch, BlobFetch)
        await asyncio.wait_for(fetch.task, 30)
    finally:
        await mirror.close()
    assert sizes == [len(data)]
    assert await registry.blobs.read(digest) == data


async def test_closing_the_mirror_lets_a_verified_fetch_store_its_blob(
    upstream: tuple[str, bytes, Digest], registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader that has the whole body has told its client the pull succeeded; a shutdown
    # right then must not leave the blob out of the cache.
    monkeypatch.setattr(HeldSpool, "commit_delay", 0.5)
    url, data, digest = upstream
    fetch, client = start_fetch(registry, url, digest)
    mirror = Mirror(registry, [fetch.target.route])
    mirror.fetches[digest] = fetch
    fetch.disk.set()
    fd = await fetch.started()
    received = bytearray()
    try:
        async for piece in fetch.pieces(fd):
            received += piece
    finally:
        fetch.release()
    assert fetch.verified and not fetch.task.done()
    await asyncio.wait_for(mirror.close(), 30)
    await client.close()
    assert bytes(received) == data
    assert fetch.error is None and fetch.complete
    assert await registry.blobs.read(digest) == data
    assert await registry.repository("lib/x").blobs.is_linked(digest)


async def test_closing_the_mirror_stops_a_fetch_still_receiving(
    upstream: tuple[str, bytes, Digest], registry: Registry
) -> None:
    url, _, digest = upstream
    fetch, client = start_fetch(registry, url, digest)
    mirror = Mirror(registry, [fetch.target.route])
    mirror.fetches[digest] = fetch
    await fetch.started()
    fetch.release()
    assert not fetch.verified
    # The disk never takes the spool: only cancelling ends this fetch.
    await asyncio.wait_for(mirror.close(), 10)
    await client.close()
    assert fetch.task.cancelled()
    assert not await registry.blobs.exists(digest)
