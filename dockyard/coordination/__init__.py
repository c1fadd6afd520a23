"""What worker processes and replicas of one registry share beyond its storage.

Without a ``redis`` section: locks across this host's workers (byte locks on one file) and an
in-memory blob descriptor cache per process. With one: locks, fences between garbage
collection and pushes, the garbage collection token, and (``blobdescriptor: redis``)
the descriptor cache, all in Redis, so replicas on different hosts behave as one.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dockyard.config.model import Config
from dockyard.coordination.descriptors import (
    DescriptorCache,
    InMemoryDescriptors,
    NoDescriptorCache,
    RedisDescriptors,
    RemovalCount,
)
from dockyard.coordination.fences import FencedDriver, Fences
from dockyard.coordination.locks import LocalLocks, Locks, ProcessLocks, RedisLocks
from dockyard.coordination.redis_client import connect
from dockyard.storage.driver import StorageDriver

if TYPE_CHECKING:  # redis is imported only where a redis section is set: ~5 MiB per worker
    import redis.asyncio as aioredis

__all__ = [
    "Coordination",
    "DescriptorCache",
    "Locks",
    "build_coordination",
    "local_coordination",
    "store_identity",
]

DEFAULT_DESCRIPTORS = 10_000


def store_identity(config: Config) -> str:
    """A short name for the store, so that registries sharing one Redis keep apart."""
    storage = config.storage
    params = {
        key: value
        for key, value in dict(storage.driver_params).items()
        if key in ("rootdirectory", "bucket", "regionendpoint", "region")
    }
    text = json.dumps([storage.driver_name, params], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Coordination:
    locks: Locks
    descriptors: DescriptorCache
    redis: aioredis.Redis | None = None
    namespace: str = ""

    def adapt(self, driver: StorageDriver) -> StorageDriver:
        """The driver, fenced through Redis when its holds are not one step by themselves.

        A per-process descriptor cache is dropped for local storage: a stat there costs
        less than the cache's risk of answering for a blob another worker collected.
        """
        if not driver.remote and isinstance(self.descriptors, InMemoryDescriptors):
            self.descriptors = NoDescriptorCache()
        if self.redis is None or driver.atomic_holds:
            return driver
        return FencedDriver(driver, Fences(self.redis, self.namespace))

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def local_coordination() -> Coordination:
    """One process, nothing shared: for tools and tests that build a registry by hand."""
    return Coordination(ProcessLocks(), NoDescriptorCache())


def build_coordination(config: Config) -> Coordination:
    identity = store_identity(config)
    cache = config.storage.cache
    size = cache.blobdescriptorsize or DEFAULT_DESCRIPTORS
    if config.redis is None:
        directory = Path(tempfile.gettempdir()) / f"dockyard-locks-{identity}"
        # Every process that can remove a link is on this host: they count removals in
        # the locks' directory, and links can be cached in memory (see descriptors).
        descriptors: DescriptorCache = (
            InMemoryDescriptors(size, RemovalCount(directory / "link-removals"))
            if cache.blobdescriptor == "inmemory"
            else NoDescriptorCache()
        )
        return Coordination(LocalLocks(directory), descriptors)
    client = connect(config.redis)
    namespace = f"dockyard:{identity}:"
    if cache.blobdescriptor == "redis":
        descriptors = RedisDescriptors(client, namespace)
    elif cache.blobdescriptor == "inmemory":
        descriptors = InMemoryDescriptors(size)
    else:
        descriptors = NoDescriptorCache()
    return Coordination(RedisLocks(client, namespace), descriptors, client, namespace)
