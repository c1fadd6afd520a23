"""Fences: a hold and a collection's move of the same content never overlap."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from dockyard.coordination.fences import FencedDriver, Fences
from dockyard.storage import MemoryDriver, PathNotFoundError


@pytest.fixture
def fenced(redis_client: aioredis.Redis) -> FencedDriver:
    return FencedDriver(MemoryDriver(), Fences(redis_client, "t:"))


async def test_a_move_is_refused_while_a_hold_below_it_is_in_flight(
    fenced: FencedDriver,
) -> None:
    await fenced.write("/blobs/ab/data", b"x")
    await fenced.touch("/blobs/ab/data", mtime=1000.0)
    async with fenced.fences.busy("/blobs/ab/data"):
        assert not await fenced.move_unless_touched("/blobs/ab", "/trash/0", since=2000.0)
    assert await fenced.read("/blobs/ab/data") == b"x"
    # Nothing in flight any more: the same move goes through.
    assert await fenced.move_unless_touched("/blobs/ab", "/trash/0", since=2000.0)


async def test_a_hold_waits_for_a_move_and_then_finds_the_content_gone(
    fenced: FencedDriver,
) -> None:
    await fenced.write("/blobs/ab/data", b"x")
    await fenced.touch("/blobs/ab/data", mtime=1000.0)
    async with fenced.fences.fenced("/blobs/ab") as up:
        assert up
        hold = asyncio.create_task(fenced.touch("/blobs/ab/data"))
        await asyncio.sleep(0.2)
        assert not hold.done()  # waiting for the fence
        await fenced.inner.move("/blobs/ab", "/trash/0")
    with pytest.raises(PathNotFoundError):
        await hold


async def test_a_hold_on_other_content_does_not_wait(fenced: FencedDriver) -> None:
    await fenced.write("/blobs/cd/data", b"y")
    async with fenced.fences.fenced("/blobs/ab"):
        await asyncio.wait_for(fenced.touch("/blobs/cd/data"), 2.0)


async def test_counters_and_fences_leave_nothing_behind(
    fenced: FencedDriver, redis_client: aioredis.Redis
) -> None:
    await fenced.write("/blobs/ab/data", b"x")
    await fenced.touch("/blobs/ab/data")
    assert not await fenced.move_unless_touched("/blobs/ab", "/trash/0", since=0.0)
    assert await redis_client.keys("t:*") == []
