"""Upload sessions: a body's pieces are hashed in order while they are written."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.errors import BlobUploadInvalid
from dockyard.registry import Registry, layout
from dockyard.registry.digest import Digest
from dockyard.registry.uploads import WRITE_PIECE
from dockyard.storage import FilesystemDriver, MemoryDriver
from dockyard.storage.driver import StorageDriver


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
    return [thread for thread in threading.enumerate() if thread.name.startswith("dockyard-hash")]


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
