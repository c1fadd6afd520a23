"""The blob descriptor cache: answers, forgetting, and no stale answer put back."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from dockyard.coordination.descriptors import InMemoryDescriptors, RedisDescriptors, RemovalCount
from dockyard.registry.digest import Digest

A = Digest.of(b"a")
B = Digest.of(b"b")


async def test_in_memory_keeps_sizes_up_to_its_capacity() -> None:
    cache = InMemoryDescriptors(capacity=1)
    await cache.remember_size(A, 1)
    assert await cache.size(A) == 1
    await cache.remember_size(B, 2)
    assert await cache.size(A) is None
    assert await cache.size(B) == 2
    assert (cache.hits, cache.misses) == (2, 1)
    await cache.forget_blob(B)
    assert await cache.size(B) is None
    # Without a count of removals shared by every process, membership is never
    # answered from a per-process cache.
    await cache.remember_link("r", A, fresh=True, mark=cache.link_mark())
    assert not await cache.linked("r", A)


async def test_in_memory_links_last_until_a_process_of_the_host_removes_one(
    tmp_path: Path,
) -> None:
    one, two = (InMemoryDescriptors(2, RemovalCount(tmp_path / "removals")) for _ in range(2))
    mark = two.link_mark()
    await two.remember_link("r", A, mark=mark)
    await two.remember_link("r", B, mark=mark)
    assert await two.linked("r", A) and await two.linked("r", B)
    await two.remember_link("s", A, mark=mark)  # over capacity: the least recent goes
    assert not await two.linked("r", A)
    assert (two.hits, two.misses) == (2, 1)
    # Another worker removes some link: this one's answers about links all go.
    await one.forget_link("elsewhere", B)
    assert not await two.linked("s", A)
    # A reader that looked at storage before that removal, filling in late:
    await two.remember_link("s", A, mark=mark)
    assert not await two.linked("s", A)
    # Each kind of removal counts: a repository deleted, a blob collected.
    for forget in (lambda: one.forget_repository("r"), lambda: one.forget_blob(B)):
        mark = two.link_mark()
        await two.remember_link("r", B, mark=mark)
        assert await two.linked("r", B)
        await forget()
        assert not await two.linked("r", B)


async def test_redis_answers_are_shared_between_clients(redis_client: aioredis.Redis) -> None:
    one, two = RedisDescriptors(redis_client, "t:"), RedisDescriptors(redis_client, "t:")
    await one.remember_size(A, 10)
    await one.remember_link("lib/x", A)
    assert await two.size(A) == 10
    assert await two.linked("lib/x", A)
    assert not await two.linked("lib/y", A)
    assert (two.hits, two.misses) == (2, 1)  # counted for the metrics
    # Another store sharing the server keeps apart.
    assert await RedisDescriptors(redis_client, "other:").size(A) is None


async def test_a_forgotten_link_is_not_put_back_by_a_stale_reader(
    redis_client: aioredis.Redis,
) -> None:
    cache = RedisDescriptors(redis_client, "t:")
    await cache.remember_link("r", A)
    await cache.forget_link("r", A)
    # A reader that saw the link in storage before it was removed, filling in late:
    await cache.remember_link("r", A)
    assert not await cache.linked("r", A)
    # A new push that writes the link itself gets past the tombstone.
    await cache.remember_link("r", A, fresh=True)
    assert await cache.linked("r", A)


async def test_a_forgotten_blob_is_not_put_back_by_a_stale_reader(
    redis_client: aioredis.Redis,
) -> None:
    cache = RedisDescriptors(redis_client, "t:")
    await cache.remember_size(A, 1)
    await cache.forget_blob(A)
    await cache.remember_size(A, 1)
    assert await cache.size(A) is None


async def test_a_deleted_repository_forgets_every_link(redis_client: aioredis.Redis) -> None:
    cache = RedisDescriptors(redis_client, "t:")
    await cache.remember_link("r", A)
    await cache.remember_link("r", B)
    await cache.forget_repository("r")
    assert not await cache.linked("r", A)
    await cache.remember_link("r", B)  # stale
    assert not await cache.linked("r", B)
    await cache.remember_link("r", A, fresh=True)  # pushed again
    assert await cache.linked("r", A)
    assert not await cache.linked("r", B)
