"""Blob upload sessions, kept in storage so any process can continue them.

A session is ``_uploads/<id>/`` with ``startedat`` and ``data``, as in Distribution. The
bytes in ``data`` are always a prefix of what the client sent, in order, so after a
crash the file's size is exactly what the session can report and continue from.

Hashing happens while the data is written. The running hash stays in this process,
keyed by session and offset, and after each chunk of a session that goes on its state
is saved beside the data (``hashstates/sha256/<offset>``, Distribution's path and
encoding; see :mod:`dockyard.registry.hashstate`), so that another worker or replica, or
this one after a restart, continues the hash instead of reading all the data again.
Without a saved state (another algorithm, or no resumable SHA-256 in this process) the
digest is computed from the stored data when the upload finishes.

A session whose one request carries the whole blob (a monolithic push) skips its data
where the storage offers a staged writer (an object store, whose move would copy every
byte again): the bytes go to the blob's own key, seen there only once verified.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dockyard.coordination.locks import Locks
from dockyard.errors import BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, RangeInvalid
from dockyard.registry import layout
from dockyard.registry.blobs import BlobDescriptor, BlobStore, RepositoryBlobs
from dockyard.registry.digest import Digest, new_hasher
from dockyard.registry.hashstate import Sha256States
from dockyard.storage.driver import FileWriter, PathNotFoundError, StorageDriver, StorageError

log = logging.getLogger("dockyard.uploads")

UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# A saved hash state is named by its offset; anything else in its directory is ignored.
OFFSET_PATTERN = re.compile(r"[0-9]{1,19}")
# Writes and hash updates go to worker threads in pieces of this size: large enough that
# the hand-off costs nothing, small enough that memory stays flat whatever the blob size.
WRITE_PIECE = 1 << 20


@dataclass(frozen=True, slots=True)
class UploadSession:
    repository: str
    id: str
    size: int
    started_at: str


class RunningHashes:
    """Per-process hashers of sessions in flight, keyed by session id and offset."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def take(self, upload_id: str, offset: int) -> Any | None:
        entry = self._entries.pop(upload_id, None)
        if entry is None or entry[0] != offset:
            return None
        return entry[1]

    def put(self, upload_id: str, offset: int, hasher: Any) -> None:
        self._entries[upload_id] = (offset, hasher)
        self._entries.move_to_end(upload_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        self._entries.pop(upload_id, None)


def check_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID_PATTERN.match(upload_id):
        raise BlobUploadUnknown(detail={"uuid": upload_id[:100]})
    return upload_id


async def _store_piece(writer: FileWriter, hasher: Any | None, piece: bytes) -> None:
    # The hash runs in a thread (hashlib releases the GIL) while the write runs in
    # another, and the event loop receives the next piece meanwhile.
    if hasher is None:
        await writer.write(piece)
    else:
        await asyncio.gather(asyncio.to_thread(hasher.update, piece), writer.write(piece))


class _PieceLane:
    """Hashes pieces in order on a thread of its own and, where the writer can append
    from a thread (a local file), writes each one there right after hashing it, while
    the event loop receives the next ones.

    With one piece in flight and the thread pool's hand-offs, the hash waited on the
    event loop after each piece; here it runs back to back up to ``BACKLOG`` pieces
    behind the receive, which bounds the memory it holds. Writing from the same thread
    spares each piece a second hand-off, to the thread that would write it, and the
    three-way trading of the interpreter lock that came with it.
    """

    BACKLOG = 4

    def __init__(self, hasher: Any | None, append: Callable[[bytes], None] | None) -> None:
        self.writes = append is not None
        self._step = _hash_and_append(hasher, append)
        self._failed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "dockyard-piece")
        self._queued: deque[concurrent.futures.Future[None]] = deque()

    def _take(self, piece: bytes) -> None:
        # After a failed piece no later one may land: the file must stay a prefix of the
        # body, and the caller learns of the first failure.
        if self._failed:
            raise StorageError("an earlier piece of this body failed")
        try:
            self._step(piece)
        except BaseException:
            self._failed = True
            raise

    async def feed(self, piece: bytes) -> None:
        while len(self._queued) >= self.BACKLOG:
            await asyncio.wrap_future(self._queued.popleft())
        self._queued.append(self._executor.submit(self._take, piece))

    async def drain(self) -> None:
        while self._queued:
            await asyncio.wrap_future(self._queued.popleft())

    async def close(self) -> None:
        # Pieces not started belong to a body that failed: its hash is dropped anyway,
        # and the file keeps a prefix of the body. The piece running may be writing to
        # the writer's file, so it must end before the writer closes.
        for queued in self._queued:
            queued.cancel()
        try:
            await asyncio.gather(
                *(asyncio.wrap_future(queued) for queued in self._queued), return_exceptions=True
            )
        finally:
            # At once, unless this wait was itself cancelled while a piece still ran.
            self._executor.shutdown(wait=True, cancel_futures=True)


def _hash_and_append(
    hasher: Any | None, append: Callable[[bytes], None] | None
) -> Callable[[bytes], None]:
    if append is None:
        assert hasher is not None
        return hasher.update  # type: ignore[no-any-return]
    if hasher is None:
        return append

    def both(piece: bytes) -> None:
        hasher.update(piece)
        append(piece)

    return both


async def _receive(writer: FileWriter, hasher: Any | None, body: AsyncIterator[bytes]) -> None:
    """Write the body through ``writer`` (nothing committed): pieces are hashed and
    written while the next ones arrive."""
    # A body of one piece or less is hashed as before: a thread of its own would cost
    # more than its hash.
    lane: _PieceLane | None = None
    plain = False  # nothing to hash and no appending from a thread: plain writes
    in_flight: asyncio.Task[None] | None = None
    try:
        pieces: list[bytes] = []
        buffered = 0
        async for chunk in body:
            pieces.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_PIECE:
                piece = b"".join(pieces)
                pieces.clear()
                buffered = 0
                if lane is None and not plain:
                    append = writer.blocking_append()
                    if hasher is None and append is None:
                        plain = True
                    else:
                        lane = _PieceLane(hasher, append)
                if lane is not None:
                    await lane.feed(piece)
                if lane is None or not lane.writes:
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.create_task(writer.write(piece))
        if in_flight is not None:
            task, in_flight = in_flight, None
            await task
        if lane is not None:
            if pieces:
                piece = b"".join(pieces)
                await lane.feed(piece)
                if not lane.writes:
                    await writer.write(piece)
            await lane.drain()
        elif pieces:
            await _store_piece(writer, hasher, b"".join(pieces))
    finally:
        if in_flight is not None:
            # The client went away mid-piece: let the piece land before closing.
            await asyncio.gather(in_flight, return_exceptions=True)
        if lane is not None:
            await lane.close()


class UploadStore:
    def __init__(
        self,
        driver: StorageDriver,
        blobs: BlobStore,
        hashes: RunningHashes,
        locks: Locks,
        states: Sha256States | None = None,
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.hashes = hashes
        self.locks = locks
        self.states = states

    def _new_hasher(self) -> Any:
        return self.states.new() if self.states is not None else new_hasher()

    async def _save_state(self, hasher: Any, session: UploadSession) -> None:
        """Save the running hash for whoever gets the session's next request. Only a cache
        of the data: written after the data is durable, and not durable itself (a state
        lost in a crash costs a re-read). Earlier states stay until the session ends, as
        Distribution leaves them: deleting each would cost a request per chunk."""
        if self.states is None or not hasattr(hasher, "state"):
            return
        path = layout.upload_hash_state(session.repository, session.id, "sha256", hasher.length)
        try:
            await self.driver.write(path, hasher.state(), durable=False)
        except StorageError as error:
            # The chunk is stored: failing the request now would make the client resend
            # bytes the session holds. Whoever continues the session reads them instead.
            log.warning("upload %s: hash state not saved: %s", session.id, error)

    async def _restored_hasher(self, session: UploadSession) -> Any | None:
        """The running hash at the session's size, continued from the newest saved state
        at or below it (or from nothing), with the data after that read from storage.
        None without resumable SHA-256: then only the finish hashes, once."""
        if self.states is None:
            return None
        hasher = await self._saved_hasher(session)
        if hasher.length < session.size:
            await self._hash_stored(session, hasher, hasher.length)
        return hasher

    async def _saved_hasher(self, session: UploadSession) -> Any:
        """The newest saved state at or below the session's size, or a new hasher."""
        assert self.states is not None
        hasher = None
        try:
            names = await self.driver.list(
                layout.upload_hash_states(session.repository, session.id, "sha256")
            )
        except PathNotFoundError:
            names = []
        offsets = (int(name) for name in names if OFFSET_PATTERN.fullmatch(name))
        for offset in sorted((o for o in offsets if o <= session.size), reverse=True):
            path = layout.upload_hash_state(session.repository, session.id, "sha256", offset)
            try:
                hasher = self.states.restore(await self.driver.read(path), offset)
            except PathNotFoundError:
                continue
            if hasher is not None:
                break
        if hasher is None:
            hasher = self.states.new()
        return hasher

    async def _hash_stored(self, session: UploadSession, hasher: Any, start: int) -> None:
        """Feed ``hasher`` the session's stored bytes from ``start`` to its size."""
        data = layout.upload_data(session.repository, session.id)
        async for chunk in self.driver.stream(data, start, session.size - start):
            await asyncio.to_thread(hasher.update, chunk)

    def _lock(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        # Chunks of one session may reach different workers or replicas at once (a client
        # retrying a chunk it thinks lost): one appends at a time, in order.
        return self.locks.hold(f"upload:{upload_id}")

    async def start(self, name: str) -> UploadSession:
        upload_id = str(uuid.uuid4())
        started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        files = {
            layout.upload_started_at(name, upload_id): started_at.encode("ascii"),
            layout.upload_data(name, upload_id): b"",
        }
        # One batch: both files and the session's new directory become durable together
        # (one barrier on a local disk) rather than one after the other.
        async with await self.driver.prepare_writes(files) as prepared:
            await prepared.publish(files)
        self.hashes.put(upload_id, 0, self._new_hasher())
        return UploadSession(name, upload_id, 0, started_at)

    async def get(self, name: str, upload_id: str) -> UploadSession:
        check_upload_id(upload_id)
        try:
            started_at = await self.driver.read(layout.upload_started_at(name, upload_id))
            info = await self.driver.stat(layout.upload_data(name, upload_id))
        except PathNotFoundError:
            raise BlobUploadUnknown(detail={"uuid": upload_id}) from None
        return UploadSession(name, upload_id, info.size, started_at.decode("ascii", "replace"))

    async def _open(self, name: str, upload_id: str) -> tuple[UploadSession, FileWriter]:
        """The session, as :meth:`get` gives it, and a writer continuing its data: the
        writer learns the size as it opens, so the data is looked at once, not twice (on
        an object store, one request per chunk instead of three)."""
        check_upload_id(upload_id)
        try:
            started_at = await self.driver.read(layout.upload_started_at(name, upload_id))
            writer = await self.driver.writer_at_end(layout.upload_data(name, upload_id))
        except PathNotFoundError:
            raise BlobUploadUnknown(detail={"uuid": upload_id}) from None
        session = UploadSession(name, upload_id, writer.size, started_at.decode("ascii", "replace"))
        return session, writer

    async def append(
        self,
        name: str,
        upload_id: str,
        body: AsyncIterator[bytes],
        start: int | None = None,
        end: int | None = None,
    ) -> UploadSession:
        """Append a chunk (a PATCH); ``start``/``end`` come from ``Content-Range`` when the
        client sent it. The chunk that ends a session goes to :meth:`finish`.

        A chunk that does not begin exactly where the session ends is refused with 416 and
        changes nothing, so a retried or reordered chunk cannot corrupt the blob.
        """
        async with self._lock(upload_id):
            session, writer = await self._open(name, upload_id)
            return await self._append_to(session, writer, body, start, end, continues=True)

    async def _append_to(
        self,
        session: UploadSession,
        writer: FileWriter,
        body: AsyncIterator[bytes],
        start: int | None,
        end: int | None,
        continues: bool,
    ) -> UploadSession:
        """:meth:`append` to a session opened under its lock, through ``writer`` (which
        this closes). ``continues``: the session goes on after this chunk, so its running
        hash is saved for any process; the chunk that finishes it saves none, and its
        file is sealed."""
        try:
            if start is not None and start != session.size:
                raise RangeInvalid(
                    "chunk does not start at the end of the upload",
                    detail={"expected": session.size, "start": start},
                    headers=range_headers(session.size),
                )
            hasher = self.hashes.take(session.id, session.size)
            if hasher is None:
                hasher, writer = await self._restored_hasher_for(session, writer)
            size = await self._write(session, writer, hasher, body, continues)
        finally:
            await writer.close()
        if end is not None and start is not None:
            # The bytes are stored (they are the client's, in order), so the session
            # stays consistent; the client learns the real offset from Range.
            _check_chunk_length(end - start + 1, size - session.size, size)
        return UploadSession(session.repository, session.id, size, session.started_at)

    async def _restored_hasher_for(
        self, session: UploadSession, writer: FileWriter
    ) -> tuple[Any | None, FileWriter]:
        """:meth:`_restored_hasher`, and the writer to go on with. Where the saved states
        fall short, the stored data is read, and reading may put a file that an object
        store keeps in pieces together, ending the upload ``writer`` continues: it is
        closed first and a new one opened at the same size."""
        if self.states is None:
            return None, writer
        hasher = await self._saved_hasher(session)
        if hasher.length < session.size:
            await writer.close()
            await self._hash_stored(session, hasher, hasher.length)
            writer = await self.driver.writer(
                layout.upload_data(session.repository, session.id), resume_at=session.size
            )
        return hasher, writer

    async def _write(
        self,
        session: UploadSession,
        writer: FileWriter,
        hasher: Any | None,
        body: AsyncIterator[bytes],
        continues: bool,
    ) -> int:
        """Append the body and store it: committed when the session goes on, sealed when
        this is its last chunk."""
        await _receive(writer, hasher, body)
        if continues:
            await writer.commit()
        else:
            # The session's last bytes: finishing it reads or moves the file whole next.
            await writer.seal()
        size = writer.size
        if hasher is not None:
            self.hashes.put(session.id, size, hasher)
            if continues:
                await self._save_state(hasher, session)
        return size

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: Digest,
        expected_size: int | None = None,
        last: LastChunk | None = None,
        linked_into: RepositoryBlobs | None = None,
    ) -> BlobDescriptor:
        """Verify the content against ``digest`` and make it a blob of the repository;
        with ``last``, after appending that chunk, under the same hold of the session's
        lock (one look at the session, not one before each step). With ``linked_into``,
        the blob's link there is written while the blob is committed.

        On a mismatch the session is discarded and nothing is stored.
        """
        async with self._lock(upload_id):
            if last is None:
                session = await self.get(name, upload_id)
            else:
                session, writer = await self._open(name, upload_id)
                staged = await self._staged_blob(session, digest, last)
                if staged is not None:
                    await writer.close()
                    return await self._finish_staged(
                        session, staged, digest, expected_size, last, linked_into
                    )
                session = await self._append_to(
                    session, writer, last.body, last.start, last.end, continues=False
                )
            size = session.size
            data_path = layout.upload_data(name, upload_id)
            actual = await self._digest_of(session, digest.algorithm)
            await self._check_content(session, digest, actual, expected_size, size)
            await _commit(self.blobs.adopt(data_path, digest), digest, linked_into)
            await self._discard(name, upload_id)
            return BlobDescriptor(digest, size)

    async def _staged_blob(
        self, session: UploadSession, digest: Digest, last: LastChunk
    ) -> FileWriter | None:
        """Where the storage offers it (an object store, whose move is a copy), a writer
        of the blob itself, for an upload whose one request carries all of it (a
        monolithic push): its bytes then go once to their place instead of to the
        session's data and from there to the blob. None for a blob already stored,
        which the bytes must not touch: they are verified in the session as usual."""
        if session.size or last.start not in (None, 0):
            return None
        staged = await self.driver.staged_writer(layout.blob_data(digest))
        if staged is not None and await self.blobs.hold(digest):
            await staged.close()
            return None
        return staged

    async def _finish_staged(
        self,
        session: UploadSession,
        staged: FileWriter,
        digest: Digest,
        expected_size: int | None,
        last: LastChunk,
        linked_into: RepositoryBlobs | None,
    ) -> BlobDescriptor:
        """Receive the whole blob through ``staged`` and store it only if it is what the
        client said: otherwise nothing appears and the session is discarded."""
        try:
            hasher = new_hasher(digest.algorithm)
            await _receive(staged, hasher, last.body)
            size = staged.size
            if last.end is not None:
                # Nothing stored: the session still holds no byte, and says so.
                _check_chunk_length(last.end + 1, size, 0)
            actual = Digest(digest.algorithm, hasher.hexdigest())
            await self._check_content(session, digest, actual, expected_size, size)
            await _commit(staged.seal(), digest, linked_into)
        finally:
            await staged.close()
        await self._discard(session.repository, session.id)
        return BlobDescriptor(digest, size)

    async def _check_content(
        self,
        session: UploadSession,
        digest: Digest,
        actual: Digest,
        expected_size: int | None,
        size: int,
    ) -> None:
        """Refuse content that is not what the client named, discarding the session."""
        if actual != digest or (expected_size is not None and expected_size != size):
            await self._discard(session.repository, session.id)
            raise DigestInvalid(
                detail={"expected": str(digest), "actual": str(actual), "size": size}
            )

    async def _digest_of(self, session: UploadSession, algorithm: str) -> Digest:
        hasher = None
        if algorithm == "sha256":
            hasher = self.hashes.take(session.id, session.size)
            if hasher is None:
                hasher = await self._restored_hasher(session)
        if hasher is None:
            hasher = new_hasher(algorithm)
            await self._hash_stored(session, hasher, 0)
        return Digest(algorithm, hasher.hexdigest())

    async def cancel(self, name: str, upload_id: str) -> None:
        async with self._lock(upload_id):
            await self.get(name, upload_id)
            await self._discard(name, upload_id)

    async def _discard(self, name: str, upload_id: str) -> None:
        self.hashes.forget(upload_id)
        try:
            await self.driver.delete(layout.upload_dir(name, upload_id))
        except PathNotFoundError:
            pass


async def _commit(
    commit: Awaitable[None], digest: Digest, linked_into: RepositoryBlobs | None
) -> None:
    """The blob's commit, with its link into ``linked_into`` written beside it."""
    if linked_into is None:
        await commit
    else:
        await linked_into.link(digest, beside=commit)


@dataclass(frozen=True, slots=True)
class LastChunk:
    """The chunk a finishing request carries, and its ``Content-Range`` if it had one."""

    body: AsyncIterator[bytes]
    start: int | None = None
    end: int | None = None


def _check_chunk_length(expected: int, received: int, held: int) -> None:
    """Refuse a chunk whose length is not its ``Content-Range``'s; the session holds
    ``held`` bytes after it."""
    if received != expected:
        raise RangeInvalid(
            "chunk length does not match Content-Range",
            detail={"expected": expected, "received": received},
            headers=range_headers(held),
        )


def range_headers(size: int) -> dict[str, str]:
    # Distribution and the spec report the last byte held, inclusive; "0-0" when empty.
    return {"Range": f"0-{max(size - 1, 0)}"}


def parse_content_range(value: str) -> tuple[int, int]:
    """``start-end`` (the spec's form) or ``bytes start-end/size`` (what some clients send)."""
    match = re.fullmatch(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?", value.strip())
    if not match:
        raise BlobUploadInvalid("invalid Content-Range", detail={"Content-Range": value[:100]})
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RangeInvalid("invalid Content-Range", detail={"Content-Range": value[:100]})
    return start, end
