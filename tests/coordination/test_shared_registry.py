"""Two registries over one store, each sees at once what the other changed: as two
replicas sharing one Redis (descriptor cache, locks, collection token), and as two
workers of one host, whose per-process caches keep links only until any of them removes
one (they count removals in a file of the locks' directory)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dockyard.coordination import Coordination
from dockyard.coordination.descriptors import InMemoryDescriptors, RedisDescriptors, RemovalCount
from dockyard.coordination.locks import LocalLocks, RedisLocks
from dockyard.errors import BlobUnknown, Unsupported
from dockyard.registry import Registry, RegistryOptions, layout
from dockyard.registry.digest import Digest
from dockyard.registry.gc import GarbageCollector, GcOptions
from dockyard.registry.gc_status import CollectionStatus
from dockyard.storage import MemoryDriver
from tests.support.redis_server import RedisServer

NS = "shared:"


@pytest.fixture(params=["replicas", "workers"])
async def replicas(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Registry, Registry]]:
    store = MemoryDriver()
    made = []
    if request.param == "workers":
        for _ in range(2):
            descriptors = InMemoryDescriptors(removals=RemovalCount(tmp_path / "removals"))
            coordination = Coordination(LocalLocks(tmp_path), descriptors)
            made.append(Registry(store, RegistryOptions(delete_enabled=True), coordination))
        yield made[0], made[1]
        return
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    redis_server.flush()
    for _ in range(2):
        client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        coordination = Coordination(
            RedisLocks(client, NS), RedisDescriptors(client, NS), client, NS
        )
        made.append(Registry(store, RegistryOptions(delete_enabled=True), coordination))
    yield made[0], made[1]
    for registry in made:
        await registry.coordination.close()


async def _push_blob(registry: Registry, name: str, data: bytes) -> Digest:
    digest = await registry.blobs.put(data)
    await registry.repository(name).blobs.link(digest)
    return digest


async def test_answers_come_from_the_shared_cache(replicas: tuple[Registry, Registry]) -> None:
    one, two = replicas
    digest = await _push_blob(one, "lib/a", b"layer")
    assert (await one.repository("lib/a").blobs.stat(digest)).size == 5
    if isinstance(two.coordination.descriptors, InMemoryDescriptors):
        await two.repository("lib/a").blobs.stat(digest)  # each worker learns for itself
    # Removed behind the registry's back (not through it): the cache still answers, on
    # both, which shows the answers are the cache's.
    await one.driver.delete(layout.layer_dir("lib/a", digest))
    await one.driver.delete(layout.blob_dir(digest))
    assert (await two.repository("lib/a").blobs.stat(digest)).size == 5


async def test_a_blob_deleted_through_one_replica_is_unknown_on_the_other(
    replicas: tuple[Registry, Registry],
) -> None:
    one, two = replicas
    digest = await _push_blob(one, "lib/a", b"layer")
    assert (await two.repository("lib/a").blobs.stat(digest)).size == 5
    await one.repository("lib/a").blobs.unlink(digest)
    with pytest.raises(BlobUnknown):
        await two.repository("lib/a").blobs.stat(digest)


async def test_a_repository_deleted_through_one_replica_is_unknown_on_the_other(
    replicas: tuple[Registry, Registry],
) -> None:
    one, two = replicas
    digest = await _push_blob(one, "lib/a", b"layer")
    await two.repository("lib/a").blobs.stat(digest)
    await one.driver.write(layout.revision_link("lib/a", digest), str(digest).encode())
    await one.delete_repository("lib/a")
    with pytest.raises(BlobUnknown):
        await two.repository("lib/a").blobs.stat(digest)


async def test_what_a_collection_on_one_replica_removes_is_unknown_on_the_other(
    replicas: tuple[Registry, Registry],
) -> None:
    one, two = replicas
    digest = await _push_blob(one, "lib/a", b"unreferenced")
    # Old enough to collect: no manifest references it.
    await one.driver.touch(layout.blob_data(digest), mtime=1000.0)
    await one.driver.touch(layout.layer_link("lib/a", digest), mtime=1000.0)
    assert (await two.repository("lib/a").blobs.stat(digest)).size == 12
    report = await GarbageCollector(
        one.driver,
        GcOptions(delay=0.0, settle=0.0),
        descriptors=one.coordination.descriptors,
    ).run()
    assert digest in report.blobs_deleted
    with pytest.raises(BlobUnknown):
        await two.repository("lib/a").blobs.stat(digest)
    if isinstance(two.coordination.descriptors, RedisDescriptors):
        # A worker keeps sizes, which never change under a digest: what says a blob is
        # gone to it is the link, above.
        with pytest.raises(BlobUnknown):
            await two.blobs.stat(digest)


async def test_a_tag_moved_meanwhile_survives_the_delete_of_its_old_manifest(
    replicas: tuple[Registry, Registry],
) -> None:
    one, two = replicas
    old, new = Digest.of(b"old"), Digest.of(b"new")
    tags_one, tags_two = one.repository("lib/a").tags, two.repository("lib/a").tags
    await tags_one.tag("latest", old)
    # Replica one's DELETE of `old` found the tag pointing at it...
    assert await tags_one.pointing_at(old) == ["latest"]
    # ...replica two moves the tag, waiting while one holds the tag's lock...
    async with one.coordination.locks.hold("tag:lib/a:latest"):
        move = asyncio.create_task(tags_two.tag("latest", new))
        await asyncio.sleep(0.2)
        assert not move.done()
    await move
    # ...and the untag, conditional on where the tag points, leaves it alone.
    assert not await tags_one.untag_if_at("latest", old)
    assert await tags_two.resolve("latest") == new


async def test_one_collection_at_a_time_across_replicas(
    replicas: tuple[Registry, Registry],
) -> None:
    one, two = replicas
    first = CollectionStatus(one.driver, one.coordination)
    second = CollectionStatus(two.driver, two.coordination)
    async with first.collecting():
        running = await second.running()
        assert running is not None and running["pid"] == os.getpid()
        with pytest.raises(Unsupported):
            async with second.collecting():
                pass
    assert await second.running() is None
    async with second.collecting():
        assert await first.running() is not None


