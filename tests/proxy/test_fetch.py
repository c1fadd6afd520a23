"""A cold blob's fetch: readers get bytes from memory before the spool has them, the
memory it holds is bounded without holding a client to a slow disk (pieces dropped are
fetched again and checked), and a spool that fails stores nothing."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from dockyard import sockets
from dockyard.api.app import create_app
from dockyard.config import load_config
from dockyard.errors import Unavailable
from dockyard.proxy import fetch as fetch_module
from dockyard.proxy import mirror as mirror_module
from dockyard.proxy.claims import PIECE, Claim, FollowedFetch, claim, spool_paths
from dockyard.proxy.fetch import BlobFetch
from dockyard.proxy.mirror import Mirror
from dockyard.proxy.receive import QUEUE_LIMIT, BufferPool
from dockyard.proxy.routing import Route, Target
from dockyard.proxy.upstream import UpstreamClient
from dockyard.registry import Registry
from dockyard.registry.assembly import build_registry
from dockyard.registry.digest import Digest
from dockyard.registry.store_use import store_alone
from dockyard.storage.writes import WRITE_CALL
from tests.support.servers import free_port
from tests.support.syscalls import write_calls

MiB = 1 << 20
WINDOW = 4 * MiB
SIZE = 12 * MiB
# The upstream writes in sizes that do not divide a piece, as a network does.
SEND = 100_000


class HeldSpool(BlobFetch):
    """A fetch whose spool is written only once ``disk`` is set: a disk far slower than
    the network. With ``fail``, the spool fails as on a full disk."""

    disk: asyncio.Event
    fail = False
    # Seconds between verifying the body and storing it: a slow fsync.
    commit_delay = 0.0
    # The most bytes it ever held in memory.
    most_held = 0
    _held = 0
    # Readers that have taken a hold of the spool.
    readers = 0

    async def started(self) -> int:
        fd = await super().started()
        self.readers += 1
        return fd

    @property
    def held(self) -> int:
        return self._held

    @held.setter
    def held(self, value: int) -> None:
        self._held = value
        self.most_held = max(self.most_held, value)

    async def _write_spool(self) -> None:
        await self.disk.wait()
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        await super()._write_spool()

    async def _commit(self) -> None:
        await asyncio.sleep(self.commit_delay)
        await super()._commit()


class Upstream:
    """A blob served in writes of ``SEND`` bytes, honouring ``Range`` like a registry
    does; it can also ignore ranges, send a range's bytes altered, or stall part way
    through until ``stalled`` is set."""

    def __init__(self, data: bytes) -> None:
        self.serve(data)
        self.url = ""
        self.ranges: list[str] = []
        self.ignore_ranges = False
        self.alter_ranges = False
        self.stall_after: int | None = None
        self.stalled = asyncio.Event()
        # Sent in chunks of the chunked transfer coding, with no length.
        self.chunked = False
        # The connection closed after this many bytes of the body.
        self.cut_after: int | None = None

    def serve(self, data: bytes) -> None:
        self.data = data
        self.digest = Digest("sha256", hashlib.sha256(data).hexdigest())

    async def blob(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["digest"] != str(self.digest):
            raise web.HTTPNotFound()
        body, status, headers = self.data, 200, {}
        header = request.headers.get("Range")
        if header is not None:
            self.ranges.append(header)
        if header is not None and not self.ignore_ranges:
            first, last = (int(n) for n in header.removeprefix("bytes=").split("-"))
            body, status = self.data[first : last + 1], 206
            headers["Content-Range"] = f"bytes {first}-{last}/{len(self.data)}"
            if self.alter_ranges:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
        response = web.StreamResponse(status=status, headers=headers)
        if self.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        for offset in range(0, len(body), SEND):
            if header is None and self.stall_after is not None and offset >= self.stall_after:
                await self.stalled.wait()
            if self.cut_after is not None and offset >= self.cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(body[offset : offset + SEND])
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    served = Upstream(os.urandom(SIZE))
    app = web.Application()
    app.router.add_get("/v2/lib/x/blobs/{digest}", served.blob)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    served.url = f"http://127.0.0.1:{port}"
    yield served
    served.stalled.set()  # a stalled answer would hold the server's shutdown
    await runner.cleanup()


def registry_in(path: Path) -> Registry:
    config = path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {path / 'data'}}}}}\n"
        "http: {addr: 127.0.0.1:0}\n"
    )
    return build_registry(load_config(str(config)).config)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return registry_in(tmp_path)


def start_fetch(
    registry: Registry,
    url: str,
    digest: Digest,
    claim: Claim | None = None,
    buffers: BufferPool | None = None,
) -> tuple[HeldSpool, UpstreamClient]:
    """A fetch receiving into ``buffers`` (a pool of its own if not given), as a mirror's
    fetches do."""
    client = UpstreamClient(url)
    target = Target(Route("", client, ttl=0, library=False), "lib/x", "lib/x")
    HeldSpool.disk = asyncio.Event()
    pool = buffers if buffers is not None else BufferPool()
    return HeldSpool(registry, target, digest, lambda _: None, claim, pool), client


@asynccontextmanager
async def held_fetch(
    registry: Registry,
    upstream: Upstream,
    claim: Claim | None = None,
    buffers: BufferPool | None = None,
) -> AsyncIterator[HeldSpool]:
    """A fetch from ``upstream`` whose spool waits for ``disk``; on leaving, even after a
    failed assertion, the spool is let go, every reader's hold released, and the fetch
    has ended."""
    fetch, client = start_fetch(registry, upstream.url, upstream.digest, claim, buffers)
    try:
        yield fetch
    finally:
        fetch.disk.set()
        for _ in range(fetch.readers):
            fetch.release()
        await asyncio.wait_for(asyncio.gather(fetch.task, return_exceptions=True), 30)
        await client.close()


async def fetch_whole(registry: Registry, upstream: Upstream, pool: BufferPool) -> BlobFetch:
    """A fetch through ``pool`` whose reader gets the whole blob, stored in ``registry``."""
    async with held_fetch(registry, upstream, buffers=pool) as fetch:
        fetch.disk.set()
        fd = await fetch.started()
        assert await asyncio.wait_for(read_all(fetch, fd), 30) == upstream.data
        await asyncio.wait_for(fetch.task, 30)
    assert fetch.complete
    assert await registry.blobs.read(upstream.digest) == upstream.data
    return fetch


async def read_all(fetch: BlobFetch | FollowedFetch, fd: int) -> bytes:
    received = bytearray()
    async for piece in fetch.pieces(fd):
        received += piece
    return bytes(received)


@pytest.mark.parametrize("chunked", [False, True], ids=["into-the-pool", "through-aiohttp"])
async def test_a_client_is_not_held_to_a_spool_that_lags_and_memory_stays_bounded(
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    # A body in chunks is read through aiohttp, one of known length into the pool.
    upstream.chunked = chunked
    pool = BufferPool()
    async with held_fetch(registry, upstream, buffers=pool) as fetch:
        fd = await fetch.started()
        # Nothing is on disk, yet the reader gets the whole verified blob.
        received = await asyncio.wait_for(read_all(fetch, fd), 30)
        assert fetch.written == 0 and fetch.verified
        assert received == upstream.data
        # What the spool has not taken was dropped past the window (one piece can be in
        # hand on top of it before one goes).
        assert fetch.most_held <= WINDOW + PIECE
        assert fetch.held <= WINDOW
        assert upstream.ranges == []
        fetch.disk.set()
        await asyncio.wait_for(fetch.task, 30)
    # The dropped pieces came again, in ranges, and the spool holds the blob.
    assert fetch.error is None and fetch.complete
    assert fetch.refetched >= SIZE - WINDOW
    assert upstream.ranges and all(r.startswith("bytes=") for r in upstream.ranges)
    assert fetch.written == SIZE
    assert await registry.blobs.read(upstream.digest) == upstream.data
    assert await registry.repository("lib/x").blobs.is_linked(upstream.digest)
    if chunked:
        assert pool.made == 0
    else:
        # The window's worth of buffers and a few more, each back in the pool.
        assert 0 < pool.made <= (WINDOW + QUEUE_LIMIT) // PIECE + 4
        assert pool.free == pool.made


async def test_a_second_fetch_receives_into_the_buffers_of_the_first(
    upstream: Upstream, tmp_path: Path
) -> None:
    pool = BufferPool()
    made: list[int] = []
    taken: list[int] = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        await fetch_whole(registry_in(tmp_path / name), upstream, pool)
        made.append(pool.made)
        taken.append(pool.taken)
        assert pool.free == pool.made
    # Every buffer the first fetch left is received into again before any new one is
    # made (how many are in use at once depends on how quickly the spool writes).
    assert made[0] > 0
    assert made[1] - made[0] <= (taken[1] - taken[0]) - made[0]


async def test_a_reader_keeps_its_piece_while_the_fetch_goes_on(
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pieces are dropped past a small window while this reader sits on its first one:
    # the buffers they free are received into again, but not the reader's.
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    pool = BufferPool()
    async with held_fetch(registry, upstream, buffers=pool) as fetch:
        fd = await fetch.started()
        pieces = fetch.pieces(fd)
        # What came with the upstream's head is in bytes of its own; the rest is in
        # views of the pool's buffers.
        rest = bytearray()
        kept = await asyncio.wait_for(pieces.__anext__(), 10)
        while not (isinstance(kept, memoryview) and isinstance(kept.obj, bytearray)):
            rest += kept
            kept = await asyncio.wait_for(pieces.__anext__(), 10)
        at = len(rest)
        async with asyncio.timeout(30):
            while not fetch.verified:
                await asyncio.sleep(0.01)
        assert fetch.held <= WINDOW and pool.free > 0 and pool.taken > pool.made
        assert bytes(kept) == upstream.data[at : at + len(kept)]
        # What was dropped behind it comes from the spool once the disk lets it.
        fetch.disk.set()
        rest += kept
        async with asyncio.timeout(30):
            async for piece in pieces:
                rest += piece
        assert bytes(rest) == upstream.data


async def test_a_blob_that_comes_with_the_head_is_stored(
    upstream: Upstream, registry: Registry
) -> None:
    # Likely whole in aiohttp's first receive, so that nothing is left to take over.
    upstream.serve(os.urandom(1000))
    pool = BufferPool()
    await fetch_whole(registry, upstream, pool)
    assert pool.free == pool.made


async def test_a_body_cut_short_is_not_stored_and_its_reader_is_told(
    upstream: Upstream, registry: Registry
) -> None:
    upstream.cut_after = SIZE // 2
    async with held_fetch(registry, upstream) as fetch:
        fetch.disk.set()
        fd = await fetch.started()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(read_all(fetch, fd), 30)
    assert isinstance(fetch.error, Unavailable)
    assert "short" in str(fetch.error.detail)
    assert not await registry.blobs.exists(upstream.digest)
    assert not await registry.repository("lib/x").blobs.is_linked(upstream.digest)


async def test_a_reader_gets_what_arrived_without_waiting_for_a_whole_piece(
    upstream: Upstream, registry: Registry
) -> None:
    # A slow upstream: three writes, then nothing until it is let go.
    upstream.stall_after = 3 * SEND
    async with held_fetch(registry, upstream) as fetch:
        fetch.disk.set()
        fd = await fetch.started()
        pieces = fetch.pieces(fd)
        received = bytearray()
        while len(received) < 3 * SEND:
            received += await asyncio.wait_for(pieces.__anext__(), 10)
        assert len(received) == 3 * SEND < PIECE
        upstream.stalled.set()
        async for piece in pieces:
            received += piece
        await asyncio.wait_for(fetch.task, 30)
    assert bytes(received) == upstream.data
    assert fetch.complete
    assert await registry.blobs.read(upstream.digest) == upstream.data


async def test_the_spool_writes_in_calls_of_at_most_32_kib(
    upstream: Upstream, registry: Registry
) -> None:
    # Calls of a mebibyte would take the page cache's large folios (storage/writes.py).
    before = write_calls()
    async with held_fetch(registry, upstream) as fetch:
        fetch.disk.set()
        fd = await fetch.started()
        assert await asyncio.wait_for(read_all(fetch, fd), 30) == upstream.data
        await asyncio.wait_for(fetch.task, 30)
    assert fetch.complete and fetch.written == SIZE
    # The upstream's sends are not write calls; whatever else wrote only adds to these.
    assert write_calls() - before >= SIZE // WRITE_CALL
    assert await registry.blobs.read(upstream.digest) == upstream.data


async def test_a_late_reader_gets_every_piece_still_in_memory(
    upstream: Upstream, registry: Registry
) -> None:
    # The window holds the whole blob: nothing is dropped, nothing is on disk, and a
    # reader that starts after the last byte finds each piece by its offset in memory.
    async with held_fetch(registry, upstream) as fetch:
        first = await fetch.started()
        late = await fetch.started()
        assert await asyncio.wait_for(read_all(fetch, first), 30) == upstream.data
        assert len(fetch._unwritten) > 1 and fetch.written == 0
        assert await asyncio.wait_for(read_all(fetch, late), 30) == upstream.data
        assert fetch.written == 0 and fetch.refetched == 0
        fetch.disk.set()
        await asyncio.wait_for(fetch.task, 30)
    assert await registry.blobs.read(upstream.digest) == upstream.data


async def test_the_upstreams_connection_reads_a_mebibyte_per_receive(
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []

    def widen_and_note(response: object) -> None:
        sockets.widen_reads(response)
        reads.append(response.connection.transport.max_size)  # type: ignore[attr-defined]

    monkeypatch.setattr(fetch_module, "widen_reads", widen_and_note)
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    fetch = await read_then_release_the_spool(registry, upstream)
    assert fetch.complete and fetch.refetched > 0
    # The ranged GETs of what was dropped; the blob's GET is received into the pool.
    assert len(reads) >= 1 and set(reads) == {sockets.SOCKET_READ}


async def test_a_reader_behind_the_network_waits_for_what_the_spool_fetches_again(
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    async with held_fetch(registry, upstream) as fetch:
        first = await fetch.started()
        late = await fetch.started()
        # The first reader takes everything: the pieces it read are dropped meanwhile.
        assert await asyncio.wait_for(read_all(fetch, first), 30) == upstream.data
        assert fetch.written == 0
        # A reader that starts now finds the start dropped; it gets it once the spool
        # has fetched it again.
        late_read = asyncio.ensure_future(read_all(fetch, late))
        await asyncio.sleep(0.2)
        assert not late_read.done()
        fetch.disk.set()
        assert await asyncio.wait_for(late_read, 30) == upstream.data
        await asyncio.wait_for(fetch.task, 30)
    assert fetch.refetched > 0
    assert await registry.blobs.read(upstream.digest) == upstream.data


@pytest.fixture
def stalls_past_the_window(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    """The upstream, whose body stalls after two windows of 4 MiB, until let go."""
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    upstream.stall_after = 2 * WINDOW
    return upstream


async def received_past(fetch: BlobFetch, offset: int) -> None:
    """Until the fetch has received ``offset`` bytes and dropped some for the spool."""
    async with asyncio.timeout(30):
        while fetch.received < offset or fetch.held > WINDOW or not fetch._spool_behind:
            await asyncio.sleep(0.01)


async def read_while_the_body_stalls(
    upstream: Upstream, fetch: BlobFetch, reader: BlobFetch | FollowedFetch, fd: int
) -> None:
    """A reader only the spool can serve: its first bytes come, fetched again by range,
    while the upstream's body is still stalled; then it gets the whole blob."""
    pieces = reader.pieces(fd)
    received = bytearray(await asyncio.wait_for(pieces.__anext__(), 10))
    assert upstream.ranges and not fetch._received_all
    upstream.stalled.set()
    async for piece in pieces:
        received += piece
    assert bytes(received) == upstream.data


def claimed_spool(registry: Registry, upstream: Upstream) -> Claim:
    paths = spool_paths(registry, upstream.digest)
    assert paths is not None
    held = claim(paths)
    assert held is not None
    return held


async def test_a_spool_a_window_behind_writes_nothing_more_until_the_body_is_in(
    stalls_past_the_window: Upstream, registry: Registry
) -> None:
    upstream = stalls_past_the_window
    # Its writes would take the cores from the receive and the client, while most of
    # what it could write meanwhile would be dropped and fetched again anyway.
    async with held_fetch(registry, upstream, claimed_spool(registry, upstream)) as fetch:
        fd = await fetch.started()
        reader = asyncio.ensure_future(read_all(fetch, fd))
        await received_past(fetch, 2 * WINDOW)
        fetch.disk.set()
        await asyncio.sleep(0.3)
        # Nobody waits for the spool (the reader is at the network's edge), so it has
        # neither written nor fetched anything again while the body is not all in.
        assert fetch.written == 0 and upstream.ranges == []
        upstream.stalled.set()
        assert await asyncio.wait_for(reader, 30) == upstream.data
        await asyncio.wait_for(fetch.task, 30)
    assert fetch.error is None and fetch.complete
    assert fetch.refetched >= SIZE - 2 * WINDOW
    assert await registry.blobs.read(upstream.digest) == upstream.data


async def test_a_reader_behind_a_lagging_spool_has_it_written_while_the_body_comes(
    stalls_past_the_window: Upstream, registry: Registry
) -> None:
    upstream = stalls_past_the_window
    async with held_fetch(registry, upstream) as fetch:
        first = await fetch.started()
        late = await fetch.started()
        await received_past(fetch, 2 * WINDOW)
        fetch.disk.set()
        # The late reader starts where the bytes were dropped: the spool fetches them
        # again for it while the upstream's body is still stalled.
        await read_while_the_body_stalls(upstream, fetch, fetch, late)
        assert await asyncio.wait_for(read_all(fetch, first), 30) == upstream.data
        await asyncio.wait_for(fetch.task, 30)
    assert fetch.complete
    assert await registry.blobs.read(upstream.digest) == upstream.data


async def test_a_follower_in_another_process_has_a_lagging_spool_written_meanwhile(
    stalls_past_the_window: Upstream, registry: Registry
) -> None:
    upstream = stalls_past_the_window
    # A follower reads only the spool, and says so with a shared lock on its size file.
    held = claimed_spool(registry, upstream)
    async with held_fetch(registry, upstream, held) as fetch:
        await received_past(fetch, 2 * WINDOW)
        fetch.disk.set()
        await asyncio.sleep(0.3)
        assert fetch.written == 0 and not held.followed()
        # The follower comes while the spool waits and the upstream sends nothing: the
        # spool notices it by looking again, with nothing in this process to wake it.
        follower = FollowedFetch(registry, "lib/x", upstream.digest, held.paths)
        fd = await asyncio.wait_for(follower.started(), 10)
        try:
            assert held.followed()
            await read_while_the_body_stalls(upstream, fetch, follower, fd)
        finally:
            follower.release()
        await asyncio.wait_for(fetch.task, 30)
    assert fetch.complete


async def read_then_release_the_spool(registry: Registry, upstream: Upstream) -> BlobFetch:
    """A fetch whose one reader gets the whole blob before the spool writes anything;
    returns the fetch once it has ended, stored or not."""
    async with held_fetch(registry, upstream) as fetch:
        fd = await fetch.started()
        # The client's bytes were the upstream's first answer, verified whole.
        assert await asyncio.wait_for(read_all(fetch, fd), 30) == upstream.data
    return fetch


async def test_a_range_fetched_again_that_differs_is_not_stored(
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    upstream.alter_ranges = True
    fetch = await read_then_release_the_spool(registry, upstream)
    assert isinstance(fetch.error, Unavailable)
    assert "does not match" in fetch.error.message
    assert not await registry.blobs.exists(upstream.digest)
    assert not await registry.repository("lib/x").blobs.is_linked(upstream.digest)


async def test_an_upstream_that_ignores_ranges_still_fills_the_spool(
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    upstream.ignore_ranges = True
    fetch = await read_then_release_the_spool(registry, upstream)
    assert fetch.error is None and fetch.complete
    assert upstream.ranges and fetch.refetched > 0
    assert await registry.blobs.read(upstream.digest) == upstream.data


async def test_a_spool_that_fails_ends_the_fetch_and_stores_nothing(
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "UNWRITTEN_WINDOW", WINDOW)
    monkeypatch.setattr(HeldSpool, "fail", True)
    # The body stops coming half way: the spool's failure, not the end of the body, is
    # what the reader meets, as soon as the spool fails (not at the read timeout).
    upstream.stall_after = SIZE // 2
    async with held_fetch(registry, upstream) as fetch:
        fd = await fetch.started()
        pieces = fetch.pieces(fd)
        await asyncio.wait_for(pieces.__anext__(), 10)
        async with asyncio.timeout(10):
            while fetch.received < SIZE // 2:
                await asyncio.sleep(0.01)
        fetch.disk.set()
        with pytest.raises(OSError, match="No space left"):
            async with asyncio.timeout(10):
                async for _ in pieces:
                    pass
    assert fetch.error is not None
    assert not await registry.blobs.exists(upstream.digest)


async def test_the_mirror_reports_the_size_of_each_blob_it_fetched(
    upstream: Upstream, registry: Registry
) -> None:
    # The server's heap trimmer hears of it: a fetch held pieces of it in memory.
    url, data, digest = upstream.url, upstream.data, upstream.digest
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
    upstream: Upstream, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader that has the whole body has told its client the pull succeeded; a shutdown
    # right then must not leave the blob out of the cache.
    monkeypatch.setattr(HeldSpool, "commit_delay", 0.5)
    url, data, digest = upstream.url, upstream.data, upstream.digest
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


def route_to(url: str) -> Route:
    """Every repository to the upstream at ``url``; closing a mirror closes its client."""
    return Route("", UpstreamClient(url), ttl=0, library=False)


async def test_a_fetch_followed_from_another_process_links_the_followers_repository(
    upstream: Upstream, registry: Registry
) -> None:
    # Two mirrors on one store stand for two worker processes: the second follows the
    # first's spool, for a repository of its own that shares the layer.
    upstream.stall_after = SIZE // 2
    route = route_to(upstream.url)
    fetching, following = Mirror(registry, [route]), Mirror(registry, [route])
    try:
        fetch = fetching.fetch(Target(route, "one/app", "lib/x"), upstream.digest)
        assert isinstance(fetch, BlobFetch)
        followed = following.fetch(Target(route, "two/app", "lib/x"), upstream.digest)
        assert isinstance(followed, FollowedFetch)
        fd = await asyncio.wait_for(followed.started(), 30)
        upstream.stalled.set()
        try:
            assert await read_all(followed, fd) == upstream.data
        finally:
            followed.release()
        assert fetch.task.done() and fetch.error is None
    finally:
        upstream.stalled.set()
        await fetching.close()
        await following.close()
    for name in ("one/app", "two/app"):
        assert await registry.repository(name).blobs.is_linked(upstream.digest), name


async def test_readers_joining_a_fetch_through_another_repository_get_it_linked_there(
    upstream: Upstream, registry: Registry
) -> None:
    upstream.stall_after = SIZE // 2
    route = route_to(upstream.url)
    mirror = Mirror(registry, [route])
    try:
        fetch = mirror.fetch(Target(route, "one/app", "lib/x"), upstream.digest)
        joined = mirror.fetch(Target(route, "two/app", "lib/x"), upstream.digest)
        assert joined is fetch
        upstream.stalled.set()
        await asyncio.wait_for(fetch.task, 30)
    finally:
        upstream.stalled.set()
        await mirror.close()
    assert fetch.error is None and fetch.complete
    for name in ("one/app", "two/app"):
        assert await registry.repository(name).blobs.is_linked(upstream.digest), name


class StoredAtShutdown(HeldSpool):
    """A fetch that stores its blob half a second after verifying it (a slow fsync), and
    notes whether a collection could have taken the store to itself right then."""

    store_was_free: list[bool] = []

    async def _commit(self) -> None:
        await asyncio.sleep(0.5)
        async with store_alone(self.registry.driver) as alone:
            self.store_was_free.append(alone)
        await super()._commit()


async def test_stopping_the_server_lets_a_verified_fetch_store_its_blob_first(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole application's shutdown, not the mirror's alone: the store stays open,
    # held against an offline collection, until the fetch has stored and linked the blob.
    monkeypatch.setattr(StoredAtShutdown, "store_was_free", [])
    monkeypatch.setattr(mirror_module, "BlobFetch", StoredAtShutdown)
    StoredAtShutdown.disk = asyncio.Event()
    StoredAtShutdown.disk.set()
    root = tmp_path / "data"
    config_file = tmp_path / "config.yml"
    config_file.write_text(
        f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {root}}}}}\n"
        f"http: {{addr: 127.0.0.1:0}}\nproxy: {{remoteurl: {upstream.url}}}\n"
    )
    config = load_config(str(config_file)).config
    runner = web.AppRunner(create_app(config, background=False))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with ClientSession() as session:
            url = f"http://127.0.0.1:{port}/v2/lib/x/blobs/{upstream.digest}"
            async with session.get(url) as response:
                assert response.status == 200
                assert await response.read() == upstream.data
    finally:
        await asyncio.wait_for(runner.cleanup(), 30)
    assert StoredAtShutdown.store_was_free == [False]
    stored = build_registry(config)
    try:
        assert await stored.blobs.read(upstream.digest) == upstream.data
        assert await stored.repository("lib/x").blobs.is_linked(upstream.digest)
    finally:
        await stored.close()


async def test_closing_the_mirror_stops_a_fetch_still_receiving(
    upstream: Upstream, registry: Registry
) -> None:
    # The body stops coming half way: only cancelling ends this fetch.
    upstream.stall_after = SIZE // 2
    url, digest = upstream.url, upstream.digest
    fetch, client = start_fetch(registry, url, digest)
    mirror = Mirror(registry, [fetch.target.route])
    mirror.fetches[digest] = fetch
    await fetch.started()
    fetch.release()
    assert not fetch.verified
    await asyncio.wait_for(mirror.close(), 10)
    await client.close()
    assert fetch.task.cancelled()
    assert not await registry.blobs.exists(digest)
