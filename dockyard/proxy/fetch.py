"""One blob fetched from an upstream once, streamed to every client that asks meanwhile.

The fetch runs in its own task, independent of the requests that started or joined it
(a client that goes away does not stop it). It hashes the upstream's bytes as they
arrive (into buffers used again, ``receive``) and appends them to a spool file; readers
get what the disk has from the spool and what it has not yet from memory, so each
client receives bytes as soon as they arrive, whether it came first or joined late.

A disk slower than the network holds nobody back, and memory stays bounded: past
``UNWRITTEN_WINDOW`` bytes held for the spool, the oldest pieces already hashed are
dropped, and the spool fetches them again from the upstream (one ranged GET per run of
dropped pieces) when it gets to them, writing each only if the blob's hash, taken up
from where it stood before the piece, comes to what it came to after it. Only a reader
that lags behind the network waits for those. A spool that has fallen that far behind
writes nothing more until the whole body is in, unless a reader waits for bytes only the
spool can give: its writes would take CPU from the receive, the hash and the clients on
the same cores, while most of what it could write meanwhile would be dropped and fetched
again anyway. The client's stream then ends as soon as the network allows, and the rest
of the spool is fetched again after it.

When the upstream's body is complete and its digest matches, readers may have the last
byte; once the spool has every byte it becomes the blob in one move (filesystem
storage) or is copied into the storage driver, and is linked into the repository. On a
mismatch, or if the upstream or the spool fails, nothing is stored and every reader
that has not had the whole verified blob is cut short, so no client takes a wrong body
for complete.

Readers share the spool's file descriptor, so the move that commits it does not
disturb them. With storage in a local directory the spool is named by the digest and
claimed with a file lock, so other worker processes follow it instead of fetching
again (``claims``); elsewhere each process fetches at most once.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from dockyard.errors import BlobUnknown, Unavailable
from dockyard.proxy.claims import INCOMING, PIECE, POLL, Claim
from dockyard.proxy.receive import BufferPool, PooledBody, ReceiveBuffer, take_body
from dockyard.proxy.routing import Target
from dockyard.proxy.upstream import UPSTREAM_UNKNOWN, UpstreamUnavailable
from dockyard.registry import Registry
from dockyard.registry.digest import Digest, new_hasher
from dockyard.sockets import widen_reads
from dockyard.storage.writes import pwrite_all

log = logging.getLogger("dockyard.proxy")

# Bytes held in memory per fetch for the spool (and for the hash) before the oldest
# pieces are dropped, to be fetched again.
UNWRITTEN_WINDOW = 32 << 20


@dataclass(slots=True)
class _Piece:
    """Received bytes the spool does not have yet: in memory, or dropped to bound the
    memory (``data`` None), when the spool fetches them again and checks them: the
    blob's hash state ``before`` the piece, given the bytes fetched again, must come to
    the digest it had ``after`` it."""

    offset: int
    size: int
    data: bytes | memoryview | None
    # The receive buffer ``data`` is a view of, if it is one: held twice, by the hash
    # lane until it has hashed the piece and by the spool until it has written or
    # dropped it, so that the buffer is received into again only once both are done.
    lease: ReceiveBuffer | None = None
    # Set by the hash lane: dropping a piece costs no hash of its own.
    before: hashlib._Hash | None = None
    after: bytes = b""
    # Taken by the spool writer: it is not dropped any more.
    writing: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.size

    def release(self) -> None:
        """One holder (the hash lane, the spool) is done with its bytes."""
        if self.lease is not None:
            self.lease.release()


class BlobFetch:
    def __init__(
        self,
        registry: Registry,
        target: Target,
        digest: Digest,
        done: Callable[[BlobFetch], None],
        claim: Claim | None = None,
        buffers: BufferPool | None = None,
    ) -> None:
        self.registry = registry
        self.target = target
        self.digest = digest
        # Every repository a reader asked for the blob through: a pull of the same layer
        # in another repository joins this fetch, and the blob is linked into each.
        self.repositories = {target.name}
        self.size: int | None = None
        # Bytes received so far, how many of them are hashed, and how many are in the
        # spool file; the pieces past ``written`` are in ``_unwritten``, ``held`` bytes
        # of them in memory.
        self.received = 0
        self.hashed = 0
        self.written = 0
        self.held = 0
        self._unwritten: collections.deque[_Piece] = collections.deque()
        # Those of them whose bytes are in memory, oldest first: where a piece to drop is
        # found without stepping over every piece dropped before it.
        self._in_memory: collections.deque[_Piece] = collections.deque()
        self._to_hash: asyncio.Queue[_Piece | None] = asyncio.Queue()
        # The upstream's whole body has been received.
        self._received_all = False
        # Bytes the spool fetched again, because the disk fell behind the network.
        self.refetched = 0
        # The spool fell a whole window behind the network: it waits for the end of the
        # body, unless readers wait for what only it can give (``_readers_behind``).
        self._spool_behind = False
        self._readers_behind = 0
        self.complete = False
        # The whole body is received and matches its digest: readers may have it all,
        # while the spool is still being written, made durable and stored.
        self.verified = False
        self.error: Exception | None = None
        self._changed = asyncio.Condition()
        self._started = asyncio.Event()
        self._fd: int | None = None
        self._users = 0
        self._done = done
        self._storage_path: str | None = None
        self._spool_path = ""
        self._claim = claim
        # Where the upstream's body is received, when aiohttp can hand it over.
        self._buffers = buffers
        self.task = asyncio.get_running_loop().create_task(self._run())

    # --- the fetch ---------------------------------------------------------------------

    def _open_spool(self) -> None:
        name = str(uuid.uuid4())
        storage_path = f"{INCOMING}/{name}"
        local = self.registry.driver.local_path(storage_path)
        if self._claim is not None:
            # Other processes follow this spool: its size first, then the named file.
            self._claim.announce_size(self.size)
            self._storage_path = self._claim.paths.storage_part
            self._spool_path = self._claim.paths.part
        elif local is not None:
            os.makedirs(os.path.dirname(local), exist_ok=True)
            self._storage_path, self._spool_path = storage_path, local
        else:
            handle, self._spool_path = tempfile.mkstemp(prefix="dockyard-proxy-")
            os.close(handle)
        self._fd = os.open(self._spool_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._users += 1

    async def _run(self) -> None:
        try:
            await self._fetch()
        except Finished:
            pass  # another process stored it meanwhile; readers serve the stored blob
        except Exception as error:  # noqa: BLE001 - every reader learns of it; nothing is stored
            if isinstance(error, UpstreamUnavailable):
                error = Unavailable("upstream unavailable", detail={"reason": str(error)})
            self.error = error
            log.warning("fetching %s for %s failed: %s", self.digest, self.target.name, error)
            self._discard_spool()
        finally:
            self._done(self)
            self._started.set()
            async with self._changed:
                self._changed.notify_all()
            if self._fd is not None:
                self.release()
            if self._claim is not None:
                self._claim.release()

    async def _fetch(self) -> None:
        if self._claim is not None and await self.registry.blobs.exists(self.digest):
            # Claimed just after another process finished storing it.
            await self._link()
            raise Finished()
        response = await self.target.client.request(
            "GET", self.target.remote, f"blobs/{self.digest}"
        )
        async with response:
            if response.status in UPSTREAM_UNKNOWN:
                raise BlobUnknown(detail={"digest": str(self.digest)})
            if response.status != 200:
                raise Unavailable(
                    "upstream refused the blob",
                    detail={"digest": str(self.digest), "status": response.status},
                )
            if response.content_length is not None:
                self.size = response.content_length
            # Taken before anything is awaited: aiohttp reads on meanwhile, and a full
            # buffer of its own would keep the body with it.
            taken = take_body(response, self._buffers) if self._buffers is not None else None
            if taken is None:
                widen_reads(response)
            await asyncio.to_thread(self._open_spool)
            self._started.set()
            hasher = new_hasher(self.digest.algorithm)
            hashing = asyncio.ensure_future(self._hash_received(hasher))
            writing = asyncio.ensure_future(self._write_spool())
            try:
                await self._unless_a_lane_fails(
                    self._receive(response, taken, hashing, writing), hashing, writing
                )
                await self._to_hash.put(None)
                await hashing
                actual = Digest(self.digest.algorithm, hasher.hexdigest())
                if actual != self.digest or (self.size is not None and self.size != self.received):
                    raise Unavailable(
                        "upstream content does not match its digest",
                        detail={
                            "digest": str(self.digest),
                            "actual": str(actual),
                            "size": self.received,
                        },
                    )
                self.size = self.received
                async with self._changed:
                    self.verified = True
                    self._changed.notify_all()
                # The client has every byte now; the spool may still be catching up,
                # fetching dropped pieces again on connections of its own.
                response.release()
                await writing
            finally:
                for task in (hashing, writing):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(hashing, writing, return_exceptions=True)
        await self._commit()
        self.complete = True
        if self.refetched:
            log.debug(
                "stored %s: %d of its bytes fetched twice, the disk behind the network",
                self.digest,
                self.refetched,
            )

    @staticmethod
    async def _unless_a_lane_fails(
        receive: Coroutine[Any, Any, None],
        hashing: asyncio.Future[None],
        writing: asyncio.Future[None],
    ) -> None:
        """Run ``receive``, ended by the hash or the spool failing: their error is the
        fetch's at once, not when the upstream next sends bytes (which a stalled one
        would not do before the read timeout)."""
        receiving = asyncio.ensure_future(receive)

        def stop_receiving(lane: asyncio.Future[None]) -> None:
            if not lane.cancelled() and lane.exception() is not None:
                receiving.cancel()

        for lane in (hashing, writing):
            lane.add_done_callback(stop_receiving)
        try:
            await receiving
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            for lane in (hashing, writing):
                if lane.done() and not lane.cancelled() and lane.exception() is not None:
                    lane.result()
            raise
        finally:
            for lane in (hashing, writing):
                lane.remove_done_callback(stop_receiving)

    async def _receive(
        self,
        response: Any,
        taken: tuple[bytes, PooledBody] | None,
        hashing: asyncio.Future[None],
        writing: asyncio.Future[None],
    ) -> None:
        """Read the upstream's body in pieces: each is readable at once, then hashed and
        spooled. Memory stays bounded without holding the client to the disk: past
        ``UNWRITTEN_WINDOW`` held, the oldest hashed pieces are dropped, and the spool
        fetches them again when it gets to them. A body taken off aiohttp (``taken``)
        arrives in views of the pool's buffers, else in bytes aiohttp made."""

        async def take(data: bytes | memoryview, lease: ReceiveBuffer | None = None) -> None:
            piece = _Piece(self.received, len(data), data, lease)
            if lease is not None:
                lease.hold()  # the hash lane's; the one handed on is the spool's
            self._unwritten.append(piece)
            self._in_memory.append(piece)
            self.received += piece.size
            self.held += piece.size
            self._to_hash.put_nowait(piece)
            async with self._changed:
                self._changed.notify_all()
            await self._bound_memory(hashing, writing)

        async def take_cut(chunk: bytes) -> None:
            # Reads that piled up while the loop was busy come joined: cut so that no
            # piece passes PIECE bytes, which is what bounds the memory past the window.
            for start in range(0, len(chunk), PIECE):
                await take(chunk[start : start + PIECE])

        # A piece is what arrived since the last read, taken as it is handed on: joining
        # reads into pieces of a fixed size cost a copy of every byte, and kept the
        # bytes of a slow upstream from readers until a whole piece was in.
        if taken is None:
            async for chunk in response.content.iter_any():
                await take_cut(chunk)
        else:
            early, body = taken
            try:
                await take_cut(early)
                async for view, buffer in body.regions():
                    await take(view, buffer)
            finally:
                body.close()
                if body.attached:
                    response.close()
        async with self._changed:
            self._received_all = True
            self._changed.notify_all()

    async def _bound_memory(
        self, hashing: asyncio.Future[None], writing: asyncio.Future[None]
    ) -> None:
        # Pieces wait to be hashed in memory too: a hash behind by the window holds
        # the network back (it seldom is: hashing is faster than a disk).
        if self.received - self.hashed > UNWRITTEN_WINDOW:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self.received - self.hashed <= UNWRITTEN_WINDOW or hashing.done()
                )
        while self.held > UNWRITTEN_WINDOW:
            for task in (hashing, writing):
                if task.done():
                    task.result()  # its error ends the fetch
                    raise AssertionError("the hash or the spool stopped before the end")
            victim = self._droppable()
            if victim is None:
                # Nothing hashed that the spool has not taken: wait for either.
                async with self._changed:
                    await self._changed.wait_for(
                        lambda: (
                            self.held <= UNWRITTEN_WINDOW
                            or hashing.done()
                            or writing.done()
                            or self._droppable() is not None
                        )
                    )
                continue
            victim.data = None
            victim.release()
            self._spool_behind = True
            self._in_memory.remove(victim)
            self.held -= victim.size

    def _droppable(self) -> _Piece | None:
        """The oldest piece in memory that is hashed and not taken by the spool."""
        for piece in self._in_memory:
            if piece.end > self.hashed:
                return None
            if not piece.writing:
                return piece
        return None

    async def _hash_received(self, hasher: hashlib._Hash) -> None:
        """Hash the pieces in order as they arrive: whatever queued up while the last
        thread call ran goes in the next one."""
        try:
            ended = False
            while not ended:
                pieces: list[_Piece] = []
                piece = await self._to_hash.get()
                while piece is not None:
                    pieces.append(piece)
                    if self._to_hash.empty():
                        break
                    piece = self._to_hash.get_nowait()
                ended = piece is None
                if not pieces:
                    break
                # A piece is dropped only once hashed: every one still has its bytes.
                await asyncio.to_thread(_update, hasher, pieces)
                for hashed in pieces:
                    hashed.release()
                self.hashed = pieces[-1].end
                async with self._changed:
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def _write_spool(self) -> None:
        """Append the pieces to the spool in order, each leaving memory once written:
        all the pieces in memory at the front in one thread call, the event loop
        meanwhile receiving the next ones and serving readers; dropped ones fetched
        again from the upstream. Their write-out to disk is left to the fsync that
        stores the blob: that comes after the client's last byte, while starting it
        during the stream (as an upload does, whose fsync comes before its answer) took
        CPU from the receive, the hash and the client on the same cores. For the same
        reason a spool a whole window behind waits for the end of the body
        (``_spool_may_write``)."""
        assert self._fd is not None
        fd = self._fd

        def write(pieces: list[_Piece]) -> None:
            for piece in pieces:
                assert piece.data is not None
                pwrite_all(fd, piece.data, piece.offset)

        try:
            while True:
                async with self._changed:
                    while not self._spool_may_write():
                        # A follower in another process notifies nobody here: a spool
                        # that waits for one looks again as often as followers look.
                        timeout = POLL if self._spool_behind and self._claim else None
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), timeout)
                if not self._unwritten:
                    return
                batch: list[_Piece] = []
                dropped = self._unwritten[0].data is None
                for piece in self._unwritten:
                    if (piece.data is None) != dropped:
                        break
                    piece.writing = True
                    batch.append(piece)
                if dropped:
                    await self._refetch(batch)
                else:
                    await asyncio.to_thread(write, batch)
                async with self._changed:
                    for piece in batch:
                        self._unwritten.popleft()
                        self.written = piece.end
                        if not dropped:
                            # The oldest in memory: the spool takes them in order.
                            self._in_memory.popleft()
                            self.held -= piece.size
                            piece.release()
                    self._changed.notify_all()
        finally:
            # Wakes the receiver if it waits on memory, whatever ended this.
            async with self._changed:
                self._changed.notify_all()

    def _spool_may_write(self) -> bool:
        if self._received_all:
            return True
        if not self._unwritten:
            return False
        if not self._spool_behind or self._readers_behind > 0:
            return True
        # Readers in other processes get only what the spool has written.
        return self._claim is not None and self._claim.followed()

    async def _refetch(self, pieces: list[_Piece]) -> None:
        """Fetch dropped pieces again (one ranged GET), check each against the digest
        kept when it was dropped, and write them to the spool."""
        assert self._fd is not None
        fd = self._fd
        first, end = pieces[0].offset, pieces[-1].end
        response = await self.target.client.request(
            "GET",
            self.target.remote,
            f"blobs/{self.digest}",
            {"Range": f"bytes={first}-{end - 1}"},
        )
        widen_reads(response)
        async with response:
            if response.status == 206:
                skip = 0
            elif response.status == 200:
                skip = first  # an upstream that ignores ranges sends the whole blob
            else:
                raise Unavailable(
                    "upstream refused a range of the blob",
                    detail={"digest": str(self.digest), "status": response.status},
                )
            try:
                while skip:
                    skip -= len(await response.content.readexactly(min(skip, PIECE)))
                for piece in pieces:
                    data = await response.content.readexactly(piece.size)
                    if not await asyncio.to_thread(_check_and_write, fd, data, piece):
                        raise Unavailable(
                            "upstream sent a range of the blob that does not match it",
                            detail={"digest": str(self.digest), "offset": piece.offset},
                        )
                    self.refetched += piece.size
                    # Readers waiting for it read it from the spool now.
                    async with self._changed:
                        self.written = piece.end
                        self._changed.notify_all()
            except asyncio.IncompleteReadError:
                raise Unavailable(
                    "upstream ended a range of the blob early",
                    detail={"digest": str(self.digest), "offset": self.written},
                ) from None

    async def _commit(self) -> None:
        assert self._fd is not None
        await asyncio.to_thread(os.fsync, self._fd)
        driver = self.registry.driver
        if self._storage_path is None:
            # Storage that is not a local directory: copy the verified spool into it.
            path = f"{INCOMING}/{uuid.uuid4()}"
            writer = await driver.writer(path)
            try:
                offset = 0
                while offset < self.written:
                    piece = await asyncio.to_thread(os.pread, self._fd, PIECE, offset)
                    await writer.write(piece)
                    offset += len(piece)
                await writer.commit()
            finally:
                await writer.close()
            self._discard_spool()
        else:
            path = self._storage_path
        await self.registry.blobs.adopt(path, self.digest)
        await self._link()

    async def _link(self) -> None:
        """Link the blob into every reader's repository, those that join meanwhile too;
        none can join once this returns, since the fetch then ends without awaiting."""
        linked: set[str] = set()
        while unlinked := self.repositories - linked:
            for name in sorted(unlinked):
                await self.registry.repository(name).blobs.link(self.digest)
                linked.add(name)

    def _discard_spool(self) -> None:
        if self._spool_path:
            try:
                os.unlink(self._spool_path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- the readers -------------------------------------------------------------------

    async def started(self) -> int:
        """Wait until the upstream has answered, then take a reader's hold of the spool.

        Raises the fetch's error, or ``Finished`` when it completed and closed its spool
        before this reader came (the blob is stored by then). The caller ``release``s.
        """
        await self._started.wait()
        if self.error is not None:
            raise self.error
        if self._fd is None:
            raise Finished()
        self._users += 1
        return self._fd

    def _readable(self) -> int:
        """How much readers may have: the last byte waits until the content is verified,
        so a client never holds a complete body that turns out wrong."""
        if self.verified or self.size is None:
            return self.received
        return min(self.received, self.size - 1)

    def _unwritten_at(self, offset: int) -> _Piece | None:
        """The piece past the spool's end that holds byte ``offset``."""
        if not self._unwritten or offset < self._unwritten[0].offset:
            return None
        piece = self._unwritten[-1]
        if offset < piece.offset:
            # Behind the newest piece, where a reader that keeps up is: the pieces are
            # in the order of their offsets, found by bisection, with no walk over the
            # pieces dropped while the disk lagged.
            piece = self._unwritten[bisect.bisect_right(self._unwritten, offset, key=_offset) - 1]
        return piece if piece.offset <= offset < piece.end else None

    def _beyond(self, offset: int) -> bool:
        """Whether a reader at ``offset`` can go on: bytes to read (in the spool, or
        still in memory), the end of a verified blob, or the fetch's error."""
        if self.error is not None:
            return True
        if offset >= self._readable():
            return self.verified
        if offset < self.written:
            return True
        piece = self._unwritten_at(offset)
        return piece is not None and piece.data is not None

    async def pieces(self, fd: int) -> AsyncIterator[bytes | memoryview]:
        """The blob's bytes from the start, as they arrive; raises if the fetch fails.
        A piece may be a view of a receive buffer: it holds its bytes only until the
        next piece is asked for, so the caller sends or copies it before that."""
        offset = 0
        while True:
            async with self._changed:
                beyond = functools.partial(self._beyond, offset)
                # Not readable yet, though received: dropped, and only the spool can give
                # it, so the spool goes on while this reader waits.
                behind = not beyond() and self.written <= offset < self.received
                if behind:
                    self._readers_behind += 1
                    self._changed.notify_all()
                try:
                    await self._changed.wait_for(beyond)
                finally:
                    if behind:
                        self._readers_behind -= 1
            if self.error is not None:
                raise self.error
            readable = self._readable()
            if offset >= readable:
                return
            piece: bytes | memoryview
            lease: ReceiveBuffer | None = None
            if offset < self.written:
                length = min(readable, self.written) - offset
                piece = await asyncio.to_thread(os.pread, fd, min(length, PIECE), offset)
            else:
                held = self._unwritten_at(offset)
                if held is None or held.data is None:
                    continue  # written or dropped since: the spool has it, or will
                end = min(held.end, readable)
                piece = memoryview(held.data)[offset - held.offset : end - held.offset]
                lease = held.lease
            offset += len(piece)
            if lease is None:
                yield piece
                continue
            # The buffer is not received into again until the caller asks for more.
            lease.hold()
            try:
                yield piece
            finally:
                lease.release()


def _offset(piece: _Piece) -> int:
    return piece.offset


def _update(hasher: hashlib._Hash, pieces: list[_Piece]) -> None:
    """Hash the pieces, noting for each the state before it and the digest after it:
    what a piece fetched again is checked with, if it is dropped."""
    for piece in pieces:
        assert piece.data is not None
        piece.before = hasher.copy()
        hasher.update(piece.data)
        piece.after = hasher.copy().digest()


def _check_and_write(fd: int, data: bytes, piece: _Piece) -> bool:
    """Write a piece fetched again, if it is what was dropped; returns whether it was."""
    assert piece.before is not None  # hashed before it could be dropped
    state = piece.before.copy()
    state.update(data)
    if state.digest() != piece.after:
        return False
    pwrite_all(fd, data, piece.offset)
    return True


class Finished(Exception):
    """The fetch completed before the reader could join; serve the stored blob."""
