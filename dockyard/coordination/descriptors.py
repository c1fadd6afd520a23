"""The blob descriptor cache (``storage.cache.blobdescriptor``).

What a blob HEAD or GET asks first: is the blob linked into the repository, and how
big is it. On object storage each answer is a round trip; the cache keeps them.

- ``inmemory``: per process. A blob's size never changes under its digest. Whether it
  is linked is kept only where every process that can remove a link shares this host
  (no ``redis`` section: one host's workers and its collections), through
  :class:`RemovalCount`: a worker drops what it knows of links as soon as any process
  has removed one, so it never answers for a link another worker or a collection has
  removed. Replicas on other hosts could not tell it, so with a ``redis`` section the
  per-process cache keeps sizes only.
- ``redis``: sizes and repository membership, shared by every replica. Each removal
  forgets the entry *and* leaves a short-lived tombstone, so a reader that looked at
  storage just before the removal cannot put the stale answer back after it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
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

    def link_mark(self) -> int:
        """Taken before a link is read or written in storage, and given to
        :meth:`remember_link`: a cache that cannot otherwise tell a stale answer keeps it
        only if no link was removed in between."""
        ...

    async def remember_link(
        self, repository: str, digest: Digest, fresh: bool = False, mark: int = 0
    ) -> None:
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

    def link_mark(self) -> int:
        return 0

    async def remember_link(
        self, repository: str, digest: Digest, fresh: bool = False, mark: int = 0
    ) -> None:
        pass

    async def forget_link(self, repository: str, digest: Digest) -> None:
        pass

    async def forget_blob(self, digest: Digest) -> None:
        pass

    async def forget_repository(self, repository: str) -> None:
        pass


class RemovalCount:
    """How many links the processes of this host have removed from one store: the size
    of a file that each removal makes one byte longer. An ``O_APPEND`` write is one
    step however many processes append at once, so no removal goes uncounted, and the
    count is read with one ``fstat``, where asking the store would be a round trip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
        return self._fd

    def current(self) -> int:
        return os.fstat(self._file()).st_size

    def add(self) -> None:
        os.write(self._file(), b"\0")


class InMemoryDescriptors(NoDescriptorCache):
    """Blob sizes, least recently used first out (``blobdescriptorsize`` entries), and
    with ``removals`` the links seen since the last removal anywhere on this host."""

    def __init__(self, capacity: int = 10_000, removals: RemovalCount | None = None) -> None:
        self.capacity = capacity
        self.removals = removals
        self._sizes: OrderedDict[Digest, int] = OrderedDict()
        self._links: OrderedDict[tuple[str, Digest], None] = OrderedDict()
        # The removal count the links kept were all seen at.
        self._links_seen_at = 0
        self.hits = 0
        self.misses = 0

    def _current_links(self) -> OrderedDict[tuple[str, Digest], None]:
        assert self.removals is not None
        count = self.removals.current()
        if count != self._links_seen_at:
            self._links.clear()
            self._links_seen_at = count
        return self._links

    async def linked(self, repository: str, digest: Digest) -> bool:
        if self.removals is None:
            return False
        links = self._current_links()
        key = (repository, digest)
        if key not in links:
            self.misses += 1
            return False
        self.hits += 1
        links.move_to_end(key)
        return True

    def link_mark(self) -> int:
        return self.removals.current() if self.removals is not None else 0

    async def remember_link(
        self, repository: str, digest: Digest, fresh: bool = False, mark: int = 0
    ) -> None:
        if self.removals is None:
            return
        links = self._current_links()
        # A link removed since the mark may be this one: what was seen before is no answer.
        if mark != self._links_seen_at:
            return
        links[(repository, digest)] = None
        links.move_to_end((repository, digest))
        while len(links) > self.capacity:
            links.popitem(last=False)

    async def forget_link(self, repository: str, digest: Digest) -> None:
        if self.removals is not None:
            self.removals.add()
            self._links.pop((repository, digest), None)

    async def forget_repository(self, repository: str) -> None:
        if self.removals is not None:
            self.removals.add()

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
        if self.removals is not None:
            # A collected blob's links go with it, in whichever process collected it.
            self.removals.add()


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

    def link_mark(self) -> int:
        return 0  # tombstones keep stale answers out

    async def remember_link(
        self, repository: str, digest: Digest, fresh: bool = False, mark: int = 0
    ) -> None:
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
