"""The blob descriptor cache (``storage.cache.blobdescriptor``).

What a blob HEAD or GET asks first: is the blob linked into the repository, and how
big is it. On object storage each answer is a round trip; the cache keeps them.

- ``inmemory``: sizes only, per process. A blob's size never changes under its digest,
  and whether it is linked is still read from storage on every request, so a worker
  never answers for a link another worker (or a collection) has removed.
- ``redis``: sizes and repository membership, shared by every replica. Each removal
  forgets the entry *and* leaves a short-lived tombstone, so a reader that looked at
  storage just before the removal cannot put the stale answer back after it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from dockyard.registry.digest import Digest  # the registry package imports this one

# Longer than any read can take between looking at storage and filling the cache.
TOMBSTONE_MS = 60_000

_PUT_UNLESS_TOMBSTONED = """
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
if ARGV[1] == 'set' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SADD', KEYS[1], ARGV[2])
end
return 1
"""


class DescriptorCache(Protocol):
    # Lookups answered and not, for the registry_cache_requests metric.
    hits: int
    misses: int

    async def size(self, digest: Digest) -> int | None: ...

    async def remember_size(self, digest: Digest, size: int) -> None: ...

    async def linked(self, repository: str, digest: Digest) -> bool:
        """True only when the cache knows the link exists; False means: ask storage."""
        ...

    async def remember_link(self, repository: str, digest: Digest, fresh: bool = False) -> None:
        """``fresh``: the link was just written by this caller, past any tombstone."""
        ...

    async def forget_link(self, repository: str, digest: Digest) -> None: ...

    async def forget_blob(self, digest: Digest) -> None: ...

    async def forget_repository(self, repository: str) -> None: ...


class NoDescriptorCache:
    hits = 0
    misses = 0

    async def size(self, digest: Digest) -> int | None:
        return None

    async def remember_size(self, digest: Digest, size: int) -> None:
        pass

    async def linked(self, repository: str, digest: Digest) -> bool:
        return False

    async def remember_link(self, repository: str, digest: Digest, fresh: bool = False) -> None:
        pass

    async def forget_link(self, repository: str, digest: Digest) -> None:
        pass

    async def forget_blob(self, digest: Digest) -> None:
        pass

    async def forget_repository(self, repository: str) -> None:
        pass


class InMemoryDescriptors(NoDescriptorCache):
    """Blob sizes, least recently used first out (``blobdescriptorsize`` entries)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._sizes: OrderedDict[Digest, int] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def size(self, digest: Digest) -> int | None:
        size = self._sizes.get(digest)
        if size is None:
            self.misses += 1
            return None
        self.hits += 1
        self._sizes.move_to_end(digest)
        return size

    async def remember_size(self, digest: Digest, size: int) -> None:
        self._sizes[digest] = size
        self._sizes.move_to_end(digest)
        while len(self._sizes) > self.capacity:
            self._sizes.popitem(last=False)

    async def forget_blob(self, digest: Digest) -> None:
        self._sizes.pop(digest, None)


class RedisDescriptors:
    """``<ns>size:<digest>`` and the set ``<ns>repo:<name>:blobs``, as Distribution keeps them."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.ns = namespace
        self._put = client.register_script(_PUT_UNLESS_TOMBSTONED)
        self.hits = 0
        self.misses = 0

    def _count(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def _size_key(self, digest: Digest) -> str:
        return f"{self.ns}size:{digest}"

    def _members_key(self, repository: str) -> str:
        return f"{self.ns}repo:{repository}:blobs"

    def _tomb(self, what: str) -> str:
        return f"{self.ns}tomb:{what}"

    async def size(self, digest: Digest) -> int | None:
        value = await self.client.get(self._size_key(digest))
        self._count(value is not None)
        return int(value) if value is not None else None

    async def remember_size(self, digest: Digest, size: int) -> None:
        await self._put(
            keys=[self._size_key(digest), self._tomb(f"blob:{digest}")], args=["set", size]
        )

    async def linked(self, repository: str, digest: Digest) -> bool:
        known = bool(await self.client.sismember(self._members_key(repository), str(digest)))
        self._count(known)
        return known

    async def remember_link(self, repository: str, digest: Digest, fresh: bool = False) -> None:
        link_tomb = self._tomb(f"link:{repository}:{digest}")
        repo_tomb = self._tomb(f"repo:{repository}")
        if fresh:
            # The repository's tombstone stays: it still stops stale answers about
            # other links of a repository deleted a moment ago.
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(link_tomb)
                pipe.sadd(self._members_key(repository), str(digest))
                await pipe.execute()
            return
        await self._put(
            keys=[self._members_key(repository), link_tomb, repo_tomb], args=["add", str(digest)]
        )

    async def forget_link(self, repository: str, digest: Digest) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._tomb(f"link:{repository}:{digest}"), 1, px=TOMBSTONE_MS)
            pipe.srem(self._members_key(repository), str(digest))
            await pipe.execute()

    async def forget_blob(self, digest: Digest) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._tomb(f"blob:{digest}"), 1, px=TOMBSTONE_MS)
            pipe.delete(self._size_key(digest))
            await pipe.execute()

    async def forget_repository(self, repository: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._tomb(f"repo:{repository}"), 1, px=TOMBSTONE_MS)
            pipe.delete(self._members_key(repository))
            await pipe.execute()
