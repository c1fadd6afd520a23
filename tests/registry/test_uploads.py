"""Upload sessions: a body's pieces are hashed in order while they are written, and the
running hash is saved so that another process goes on from it."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dockyard.errors import BlobUnknown, BlobUploadInvalid
from dockyard.registry import Registry, layout
from dockyard.registry.digest import Digest
from dockyard.registry.uploads import WRITE_PIECE, LastChunk
from dockyard.storage import FilesystemDriver, MemoryDriver
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import FileWriter, PathNotFoundError, StorageDriver, StorageError
from tests.storage.test_filesystem_durability import traced


@pytest.fixture(params=["filesystem", "memory"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "filesystem":
        return FilesystemDriver(str(tmp_path))
    return MemoryDriver()


def body_of(data: bytes, seed: int) -> AsyncIterator[bytes]:
    """``data`` in chunks of uneven sizes, as a socket delivers them."""
    sizes = random.Random(seed)

    async def chunks() -> AsyncIterator[bytes]:
        offset = 0
        while offset < len(data):
            size = sizes.choice([1, 4096, 65_536, 300_001, WRITE_PIECE, 3 * WRITE_PIECE + 7])
            yield data[offset : offset + size]
            offset += size

    return chunks()


def hash_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("dockyard-piece")]


@pytest.mark.parametrize("size", [0, 1000, WRITE_PIECE - 1, WRITE_PIECE, 11 * WRITE_PIECE + 5])
async def test_the_running_hash_and_the_data_are_the_body_in_order(
    driver: StorageDriver, size: int
) -> None:
    # Many pieces more than the hash may lag behind, in chunks that never line up with
    # them: the digest at the end is the whole body's, read from no stored byte.
    data = random.Random(size).randbytes(size)
    registry = Registry(driver)
    session = await registry.uploads.start("lib/app")
    await registry.uploads.append("lib/app", session.id, body_of(data, size))
    assert await driver.read(layout.upload_data("lib/app", session.id)) == data
    hasher = registry.uploads.hashes.take(session.id, size)
    assert hasher is not None
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    registry.uploads.hashes.put(session.id, size, hasher)
    blob = await registry.uploads.finish("lib/app", session.id, Digest.of(data), size)
    assert blob.size == size
    assert await driver.read(layout.blob_data(blob.digest)) == data


async def test_chunks_of_one_session_continue_one_hash(driver: StorageDriver) -> None:
    data = random.Random(7).randbytes(9 * WRITE_PIECE + 123)
    cuts = [0, 5 * WRITE_PIECE + 1, 5 * WRITE_PIECE + 2, len(data)]
    registry = Registry(driver)
    session = await registry.uploads.start("lib/app")
    for start, end in itertools.pairwise(cuts):
        await registry.uploads.append(
            "lib/app", session.id, body_of(data[start:end], start), start, end - 1
        )
    blob = await registry.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data


async def test_a_body_that_fails_midway_keeps_a_prefix_and_no_running_hash(
    driver: StorageDriver,
) -> None:
    data = random.Random(3).randbytes(8 * WRITE_PIECE)

    async def broken() -> AsyncIterator[bytes]:
        async for chunk in body_of(data[: 6 * WRITE_PIECE + 10], 3):
            yield chunk
        raise BlobUploadInvalid("the client went away")

    registry = Registry(driver)
    session = await registry.uploads.start("lib/app")
    with pytest.raises(BlobUploadInvalid):
        await registry.uploads.append("lib/app", session.id, broken())
    stored = await driver.read(layout.upload_data("lib/app", session.id))
    assert data.startswith(stored)
    # The stored prefix is what the session reports, and the upload continues from it.
    assert (await registry.uploads.get("lib/app", session.id)).size == len(stored)
    assert registry.uploads.hashes.take(session.id, len(stored)) is None
    await registry.uploads.append(
        "lib/app", session.id, body_of(data[len(stored) :], 4), len(stored), len(data) - 1
    )
    blob = await registry.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data
    # No hashing thread outlives its body.
    deadline = time.monotonic() + 10
    while hash_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert hash_threads() == []


class ThirdAppendFails(FileWriter):
    """A local file's writer whose third append from a thread fails, as a full disk
    would, and whose later ones would succeed if they were still made."""

    def __init__(self, inner: FileWriter) -> None:
        self.inner = inner
        self.appends = 0

    @property
    def size(self) -> int:
        return self.inner.size

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    def blocking_append(self) -> Callable[[bytes], None] | None:
        append = self.inner.blocking_append()
        assert append is not None

        def failing(data: bytes) -> None:
            self.appends += 1
            if self.appends == 3:
                raise StorageError("no space left on device")
            append(data)

        return failing

    async def commit(self) -> None:
        await self.inner.commit()

    async def cancel(self) -> None:
        await self.inner.cancel()

    async def close(self) -> None:
        await self.inner.close()


class FailingAppends(DelegatingDriver):
    async def writer(self, path: str, resume_at: int | None = None) -> FileWriter:
        return ThirdAppendFails(await self.inner.writer(path, resume_at))

    async def writer_at_end(self, path: str) -> FileWriter:
        return ThirdAppendFails(await self.inner.writer_at_end(path))


async def test_no_piece_lands_after_one_that_failed(tmp_path: Path) -> None:
    driver = FailingAppends(FilesystemDriver(str(tmp_path)))
    data = random.Random(5).randbytes(8 * WRITE_PIECE)
    registry = Registry(driver)
    session = await registry.uploads.start("lib/app")
    with pytest.raises(StorageError, match="no space"):
        await registry.uploads.append("lib/app", session.id, body_of(data, 5))
    stored = await driver.read(layout.upload_data("lib/app", session.id))
    # The pieces before the failed one, then nothing: the file is still a prefix.
    assert 2 * WRITE_PIECE <= len(stored) < len(data)
    assert stored == data[: len(stored)]


class ReadsCounted(DelegatingDriver):
    """Records every stream of a file: (path, offset, length)."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.streams: list[tuple[str, int, int | None]] = []

    def stream(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        self.streams.append((path, offset, length))
        return self.inner.stream(path, offset, length)


def states_of(session_id: str) -> str:
    return layout.upload_hash_states("lib/app", session_id, "sha256")


async def test_another_process_continues_the_hash_without_reading_the_data(
    driver: StorageDriver,
) -> None:
    # Two registries on one store stand for two workers: each has its own running hashes.
    counted = ReadsCounted(driver)
    first, second = Registry(counted), Registry(counted)
    data = random.Random(11).randbytes(3 * WRITE_PIECE + 17)
    cut = WRITE_PIECE + 5
    session = await first.uploads.start("lib/app")
    await first.uploads.append("lib/app", session.id, body_of(data[:cut], 1))
    assert await driver.list(states_of(session.id)) == [str(cut)]
    await second.uploads.append("lib/app", session.id, body_of(data[cut:], 2), cut)
    assert sorted(await driver.list(states_of(session.id))) == sorted([str(cut), str(len(data))])
    blob = await first.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data
    assert counted.streams == []


class WritesSeen(DelegatingDriver):
    """Records the path of every whole-file write."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.written: list[str] = []

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        self.written.append(path)
        await self.inner.write(path, data, durable)


async def test_a_chunk_that_finishes_the_upload_saves_no_state(driver: StorageDriver) -> None:
    seen = WritesSeen(driver)
    registry = Registry(seen)
    data = b"x" * 5000
    session = await registry.uploads.start("lib/app")
    await registry.uploads.append("lib/app", session.id, body_of(data[:3000], 1))
    assert any(path.startswith(states_of(session.id)) for path in seen.written)
    seen.written.clear()
    await registry.uploads.finish(
        "lib/app", session.id, Digest.of(data), last=LastChunk(body_of(data[3000:], 1))
    )
    assert not [path for path in seen.written if path.startswith(states_of(session.id))]
    assert await driver.read(layout.blob_data(Digest.of(data))) == data


async def test_bytes_after_the_last_state_are_read_once_to_catch_up(
    driver: StorageDriver,
) -> None:
    # A chunk that failed midway left a prefix and no state for it: the next process
    # restores the last state and hashes only that prefix from storage.
    counted = ReadsCounted(driver)
    first, second = Registry(counted), Registry(counted)
    data = random.Random(12).randbytes(6 * WRITE_PIECE)
    cut = 2 * WRITE_PIECE + 1

    async def broken() -> AsyncIterator[bytes]:
        async for chunk in body_of(data[cut : 4 * WRITE_PIECE], 5):
            yield chunk
        raise BlobUploadInvalid("the client went away")

    session = await first.uploads.start("lib/app")
    await first.uploads.append("lib/app", session.id, body_of(data[:cut], 3))
    with pytest.raises(BlobUploadInvalid):
        await first.uploads.append("lib/app", session.id, broken(), cut)
    stored = (await first.uploads.get("lib/app", session.id)).size
    assert stored > cut
    await second.uploads.append("lib/app", session.id, body_of(data[stored:], 6), stored)
    data_path = layout.upload_data("lib/app", session.id)
    assert counted.streams == [(data_path, cut, stored - cut)]
    blob = await second.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data


async def test_a_damaged_state_is_not_trusted(driver: StorageDriver) -> None:
    counted = ReadsCounted(driver)
    first, second = Registry(counted), Registry(counted)
    data = random.Random(13).randbytes(2 * WRITE_PIECE + 9)
    session = await first.uploads.start("lib/app")
    await first.uploads.append("lib/app", session.id, body_of(data, 7))
    state = f"{states_of(session.id)}/{len(data)}"
    await driver.write(state, b"sha\x03" + bytes(104))
    blob = await second.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data
    assert counted.streams == [(layout.upload_data("lib/app", session.id), 0, len(data))]


async def test_without_resumable_sha256_the_finish_hashes_the_data(driver: StorageDriver) -> None:
    first, second = Registry(driver), Registry(driver)
    first.uploads.states = second.uploads.states = None
    data = random.Random(14).randbytes(WRITE_PIECE + 3)
    session = await first.uploads.start("lib/app")
    await first.uploads.append("lib/app", session.id, body_of(data, 8))
    with pytest.raises(PathNotFoundError):
        await driver.list(states_of(session.id))
    blob = await second.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data


async def test_other_names_among_the_states_are_ignored(driver: StorageDriver) -> None:
    counted = ReadsCounted(driver)
    first, second = Registry(counted), Registry(counted)
    data = random.Random(15).randbytes(WRITE_PIECE + 21)
    session = await first.uploads.start("lib/app")
    await first.uploads.append("lib/app", session.id, body_of(data, 9))
    for stray in ("12x", "-1", "1.0", "9" * 30):
        await driver.write(f"{states_of(session.id)}/{stray}", b"sha\x03")
    blob = await second.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data
    assert counted.streams == []


async def test_a_state_that_cannot_be_saved_does_not_fail_the_chunk(
    driver: StorageDriver,
) -> None:
    class NoCacheWrites(ReadsCounted):
        async def write(self, path: str, data: bytes, durable: bool = True) -> None:
            if not durable:
                raise StorageError(f"{path}: refused")
            await self.inner.write(path, data, durable)

    refusing = NoCacheWrites(driver)
    first, second = Registry(refusing), Registry(refusing)
    data = random.Random(16).randbytes(WRITE_PIECE + 33)
    session = await first.uploads.start("lib/app")
    stored = await first.uploads.append("lib/app", session.id, body_of(data, 10))
    assert stored.size == len(data)
    blob = await second.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await driver.read(layout.blob_data(blob.digest)) == data
    assert refusing.streams == [(layout.upload_data("lib/app", session.id), 0, len(data))]


STARTER = """
import asyncio, sys
from dockyard.registry import Registry
from dockyard.storage import FilesystemDriver

async def main() -> None:
    driver = FilesystemDriver(sys.argv[1])
    print("BEGIN", flush=True)
    await Registry(driver).uploads.start("lib/app")
    print("END", flush=True)
    await driver.close()

asyncio.run(main())
"""


def test_a_started_session_is_durable_when_start_returns(tmp_path: Path) -> None:
    # A client told where to send its chunks must find the session after a crash: both
    # files' contents, their names and the session's new directory fsynced before start
    # returns, in two barriers (contents and directories made, then the renames).
    trace, _ = traced(tmp_path, STARTER)
    (end,) = trace.stages
    renamed = {os.path.basename(dest): (at, source, dest) for at, source, dest in trace.renames}
    assert sorted(renamed) == ["data", "startedat"]
    for at, source, dest in renamed.values():
        assert any(f.path == source and f.end < at for f in trace.fsyncs), source
        assert any(
            f.path == os.path.dirname(dest) and at < f.start and f.end < end for f in trace.fsyncs
        ), dest
    session = os.path.dirname(renamed["data"][2])
    made = next(at for at, directory in trace.mkdirs if directory == session)
    parent = os.path.dirname(session)
    assert any(f.path == parent and made < f.start and f.end < end for f in trace.fsyncs)


class MovesHeld(WritesSeen):
    """Holds every move until ``release`` is set (or fails it, with ``fail``); records the
    path of every whole-file write."""

    def __init__(self, inner: StorageDriver, fail: bool = False) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()
        self.fail = fail

    async def move(self, source: str, dest: str) -> None:
        await self.release.wait()
        if self.fail:
            raise StorageError("no space left on device")
        await self.inner.move(source, dest)


async def test_the_link_is_written_while_the_blob_is_committed(driver: StorageDriver) -> None:
    held = MovesHeld(driver)
    registry = Registry(held)
    repo = registry.repository("lib/app")
    data = random.Random(21).randbytes(WRITE_PIECE + 3)
    digest = Digest.of(data)
    session = await registry.uploads.start("lib/app")
    await registry.uploads.append("lib/app", session.id, body_of(data, 21))
    finishing = asyncio.create_task(
        registry.uploads.finish("lib/app", session.id, digest, len(data), linked_into=repo.blobs)
    )
    link = layout.layer_link("lib/app", digest)
    async with asyncio.timeout(10):
        while link not in held.written:
            await asyncio.sleep(0.01)
    # The link is in, the blob's move not yet: the repository still has no such blob.
    assert not finishing.done()
    with pytest.raises(BlobUnknown):
        await repo.blobs.stat(digest)
    held.release.set()
    blob = await finishing
    assert (blob.digest, blob.size) == (digest, len(data))
    assert await repo.blobs.stat(digest) == blob
    assert await driver.read(layout.blob_data(digest)) == data


async def test_a_commit_that_fails_leaves_no_blob_beside_its_link(driver: StorageDriver) -> None:
    held = MovesHeld(driver, fail=True)
    held.release.set()
    registry = Registry(held)
    repo = registry.repository("lib/app")
    data = random.Random(22).randbytes(1000)
    digest = Digest.of(data)
    session = await registry.uploads.start("lib/app")
    with pytest.raises(StorageError, match="no space"):
        await registry.uploads.finish(
            "lib/app",
            session.id,
            digest,
            len(data),
            LastChunk(body_of(data, 22)),
            linked_into=repo.blobs,
        )
    # The link went in beside the commit that failed; the blob is not there, and neither
    # the cache (asked twice) nor the store says it is.
    assert await repo.blobs.is_linked(digest)
    for _ in range(2):
        with pytest.raises(BlobUnknown):
            await repo.blobs.stat(digest)
