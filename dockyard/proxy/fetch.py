"""One blob fetched from an upstream once, streamed to every client that asks meanwhile.

The fetch runs in its own task, independent of the requests that started or joined it
(a client that goes away does not stop it). It hashes the upstream's bytes as they
arrive and appends them to a spool file; readers get what the disk has from the spool
and what it has not yet from memory (a bounded window: once it is full, the upstream
is read no faster than the disk takes it), so each client receives bytes as soon as
they arrive, whether it came first or joined late, and a disk slower than the network
does not hold the first client back. When the upstream's body is complete and its
digest matches, the spool becomes the blob in one move (filesystem storage) or is
copied into the storage driver, and is linked into the repository; on a mismatch, or if
the upstream fails, nothing is stored and every reader's response is cut short, so no
client takes it for complete.

Readers share the spool's file descriptor, so the move that commits it does not
disturb them. With storage in a local directory the spool is named by the digest and
claimed with a file lock, so other worker processes follow it instead of fetching
again (``claims``); elsewhere each process fetches at most once.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from dockyard.errors import BlobUnknown, Unavailable
from dockyard.proxy.claims import INCOMING, PIECE, Claim
from dockyard.proxy.routing import Target
from dockyard.proxy.upstream import UPSTREAM_UNKNOWN, UpstreamUnavailable
from dockyard.registry import Registry
from dockyard.registry.digest import Digest, new_hasher
from dockyard.storage.writeback import start_writeback

log = logging.getLogger("dockyard.proxy")

# How far the spool may lag behind the upstream, in bytes held in memory per fetch.
UNWRITTEN_WINDOW = 32 << 20


class BlobFetch:
    def __init__(
        self,
        registry: Registry,
        target: Target,
        digest: Digest,
        done: Callable[[BlobFetch], None],
        claim: Claim | None = None,
    ) -> None:
        self.registry = registry
        self.target = target
        self.digest = digest
        self.size: int | None = None
        # Bytes hashed and readable so far, and how many of them are in the spool file;
        # those in between are in ``_unwritten`` (piece offsets and contents).
        self.received = 0
        self.written = 0
        self._unwritten: collections.deque[tuple[int, bytes]] = collections.deque()
        self._writes: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.complete = False
        # The whole body is written and matches its digest: readers may have it all,
        # while the spool is still being made durable and stored.
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
            await self.registry.repository(self.target.name).blobs.link(self.digest)
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
            await asyncio.to_thread(self._open_spool)
            self._started.set()
            hasher = new_hasher(self.digest.algorithm)
            writing = asyncio.ensure_future(self._write_spool(hasher))
            try:
                await self._receive(response, writing)
                await self._writes.put(None)
                await writing
            finally:
                if not writing.done():
                    writing.cancel()
                    await asyncio.gather(writing, return_exceptions=True)
        actual = Digest(self.digest.algorithm, hasher.hexdigest())
        if actual != self.digest or (self.size is not None and self.size != self.received):
            raise Unavailable(
                "upstream content does not match its digest",
                detail={"digest": str(self.digest), "actual": str(actual), "size": self.received},
            )
        self.size = self.received
        async with self._changed:
            self.verified = True
            self._changed.notify_all()
        await self._commit()
        self.complete = True

    async def _receive(self, response: Any, writing: asyncio.Future[None]) -> None:
        """Read the upstream's body in pieces: each is readable at once, then queued to
        be hashed and spooled."""
        pending: list[bytes] = []
        pending_size = 0

        async def take(piece: bytes) -> None:
            self._unwritten.append((self.received, piece))
            self.received += len(piece)
            self._writes.put_nowait(piece)
            async with self._changed:
                self._changed.notify_all()
                # Memory stays bounded: past the window, wait for the disk.
                await self._changed.wait_for(
                    lambda: self.received - self.written <= UNWRITTEN_WINDOW or writing.done()
                )
            if writing.done():
                writing.result()  # the spool failed: its error ends the fetch
                raise AssertionError("the spool writer stopped before the end")

        async for chunk in response.content.iter_any():
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= PIECE:
                await take(b"".join(pending))
                pending, pending_size = [], 0
        if pending:
            await take(b"".join(pending))

    async def _write_spool(self, hasher: Any) -> None:
        """Hash and append the queued pieces to the spool in order, each leaving memory
        once written: both in one thread call for all the pieces queued, the event loop
        meanwhile receiving the next ones and serving readers. Each piece's disk write
        starts at once, so the fsync that stores the blob has little left to wait for."""
        assert self._fd is not None
        fd = self._fd

        def hash_and_write(pieces: list[bytes], offset: int) -> None:
            for piece in pieces:
                hasher.update(piece)
                view, done = memoryview(piece), 0
                while done < len(piece):
                    done += os.pwrite(fd, view[done:], offset + done)
                start_writeback(fd, offset, len(piece))
                offset += len(piece)

        try:
            ended = False
            while not ended:
                # Whatever queued up while the last call ran goes in the next one, so a
                # spool behind the network hashes back to back instead of waiting a turn
                # of the event loop between pieces.
                pieces: list[bytes] = []
                piece = await self._writes.get()
                while piece is not None:
                    pieces.append(piece)
                    if self._writes.empty():
                        break
                    piece = self._writes.get_nowait()
                ended = piece is None
                if not pieces:
                    break
                await asyncio.to_thread(hash_and_write, pieces, self.written)
                for piece in pieces:
                    self.written += len(piece)
                    self._unwritten.popleft()
                async with self._changed:
                    self._changed.notify_all()
        finally:
            # Wakes the receiver if it waits on the window, whatever ended this.
            async with self._changed:
                self._changed.notify_all()

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
        await self.registry.repository(self.target.name).blobs.link(self.digest)

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

    def _beyond(self, offset: int) -> bool:
        return self._readable() > offset or self.verified or self.error is not None

    def _in_memory(self, offset: int, end: int) -> memoryview:
        """Bytes from ``offset`` (not yet in the spool) to at most ``end``, from memory."""
        for start, piece in self._unwritten:
            if start <= offset < start + len(piece):
                return memoryview(piece)[offset - start : end - start]
        raise AssertionError(f"byte {offset} is neither in the spool nor in memory")

    async def pieces(self, fd: int) -> AsyncIterator[bytes | memoryview]:
        """The blob's bytes from the start, as they arrive; raises if the fetch fails."""
        offset = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._beyond, offset))
            if self.error is not None:
                raise self.error
            readable = self._readable()
            if offset >= readable:
                if self.verified:
                    return
                continue
            piece: bytes | memoryview
            if offset < self.written:
                length = min(readable, self.written) - offset
                piece = await asyncio.to_thread(os.pread, fd, min(length, PIECE), offset)
            else:
                piece = self._in_memory(offset, readable)
            offset += len(piece)
            yield piece


class Finished(Exception):
    """The fetch completed before the reader could join; serve the stored blob."""
