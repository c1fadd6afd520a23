"""Locks: held by one holder at a time, across instances (processes) and Redis clients."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dockyard.coordination.locks import LocalLocks, Locks, ProcessLocks, RedisLocks
from dockyard.errors import Unavailable


async def _count_under(locks: list[Locks], counter: Path, rounds: int) -> None:
    """Read, yield, write: without mutual exclusion increments are lost."""

    async def bump(lock: Locks) -> None:
        async with lock.hold("counter"):
            value = int(counter.read_text())
            await asyncio.sleep(0.001)
            counter.write_text(str(value + 1))

    await asyncio.gather(*(bump(lock) for _ in range(rounds) for lock in locks))


async def test_process_locks_exclude_within_the_process(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    locks = ProcessLocks()
    await _count_under([locks], counter, 30)
    assert counter.read_text() == "30"


async def test_the_count_loses_updates_without_a_shared_lock(tmp_path: Path) -> None:
    # The check above can fail: two unrelated in-process lock sets do lose updates.
    counter = tmp_path / "counter"
    counter.write_text("0")
    await _count_under([ProcessLocks(), ProcessLocks()], counter, 30)
    assert int(counter.read_text()) < 60


async def test_local_locks_exclude_across_instances_with_one_file(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    directory = tmp_path / "locks"
    first, second = LocalLocks(directory), LocalLocks(directory)
    await _count_under([first, second], counter, 30)
    assert counter.read_text() == "60"
    # Other keys, held at once by both instances: nothing per key is made on disk.
    async with first.hold("a"), second.hold("b"):
        assert list(directory.iterdir()) == [directory / "locks"]


def _bump_in_a_process(directory: str, counter: str, rounds: int) -> None:
    async def run() -> None:
        await _count_under([LocalLocks(Path(directory))], Path(counter), rounds)

    asyncio.run(run())


def test_local_locks_exclude_across_processes(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_bump_in_a_process, args=(str(tmp_path / "l"), str(counter), 40))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert counter.read_text() == "120"


def _hold_until_killed(directory: str, ready: str) -> None:
    async def run() -> None:
        async with LocalLocks(Path(directory)).hold("k"):
            Path(ready).write_text("held")
            await asyncio.sleep(600)

    asyncio.run(run())


async def test_a_local_lock_goes_with_a_killed_holder(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    holder = multiprocessing.get_context("spawn").Process(
        target=_hold_until_killed, args=(str(tmp_path / "l"), str(ready))
    )
    holder.start()
    try:
        while not ready.exists():
            await asyncio.sleep(0.02)
        with pytest.raises(Unavailable):
            async with LocalLocks(tmp_path / "l", wait=0.2).hold("k"):
                pass
    finally:
        holder.kill()
        holder.join(10)
    async with LocalLocks(tmp_path / "l", wait=2).hold("k"):
        pass


async def test_a_busy_local_lock_is_refused_after_the_wait(tmp_path: Path) -> None:
    first, second = LocalLocks(tmp_path, wait=0.2), LocalLocks(tmp_path, wait=0.2)
    async with first.hold("k"):
        with pytest.raises(Unavailable):
            async with second.hold("k"):
                pass
    async with second.hold("k"):  # free again
        pass


async def test_redis_locks_exclude_across_clients(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    other = aioredis.Redis(
        host=redis_client.connection_pool.connection_kwargs["host"],
        port=redis_client.connection_pool.connection_kwargs["port"],
    )
    try:
        counter = tmp_path / "counter"
        counter.write_text("0")
        await _count_under(
            [RedisLocks(redis_client, "t:"), RedisLocks(other, "t:")], counter, 20
        )
        assert counter.read_text() == "40"
        assert await redis_client.keys("t:*") == []
    finally:
        await other.aclose()


async def test_a_redis_lock_is_kept_past_its_lease_while_held(redis_client: aioredis.Redis) -> None:
    holder = RedisLocks(redis_client, "t:", lease=0.3)
    contender = RedisLocks(redis_client, "t:", lease=0.3, wait=0.2)
    async with holder.hold("k"):
        await asyncio.sleep(1.0)  # three leases: renewed meanwhile
        with pytest.raises(Unavailable):
            async with contender.hold("k"):
                pass
    async with contender.hold("k"):
        pass


async def test_a_redis_lock_of_a_vanished_holder_expires(redis_client: aioredis.Redis) -> None:
    # A holder that died: its key stays only for the lease.
    await redis_client.set("t:lock:k", "someone", px=300)
    async with RedisLocks(redis_client, "t:", wait=5.0).hold("k"):
        assert await redis_client.get("t:lock:k") != b"someone"
