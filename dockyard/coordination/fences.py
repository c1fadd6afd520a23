"""Holds and collection moves made one step on storage that cannot do it alone.

On an object store a garbage collection's ``move_unless_touched`` is several requests
(check, copy, check, delete), and a push's ``touch`` may land between them. Replicas
that share a Redis fence the two against each other:

- a touch (or a write) first counts itself *busy* on the path and every ancestor, in
  one script that refuses while any of them is *fenced*; it waits for the fence to go,
  then finds the content moved (and the push retries) or still there;
- a move fences its source in one script that refuses while the source is busy (the
  collection then keeps the content: it is in use).

So a touch either ends before the move starts, where the move sees its time, or begins
after the move ends, where it sees the content gone. Counters and fences carry leases,
so a process that dies holding one blocks nothing for long, and what it leaves errs on
the side of keeping content.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from dockyard.errors import Unavailable
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import DeferredWrites, PreparedWrites, StorageDriver

if TYPE_CHECKING:  # redis is imported only where a redis section is set
    import redis.asyncio as aioredis

BUSY_LEASE_MS = 120_000
FENCE_LEASE_MS = 120_000
FENCE_WAIT = 60.0

_ENTER_BUSY = """
local n = #KEYS / 2
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for i = n + 1, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return 1
"""

_LEAVE_BUSY = """
for i = 1, #KEYS do
  if redis.call('DECR', KEYS[i]) <= 0 then redis.call('DEL', KEYS[i]) end
end
return 1
"""

_FENCE = """
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

_UNFENCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def _self_and_ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:end]) for end in range(len(parts), 0, -1)]


class Fences:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.ns = namespace
        self._enter = client.register_script(_ENTER_BUSY)
        self._leave = client.register_script(_LEAVE_BUSY)
        self._fence = client.register_script(_FENCE)
        self._unfence = client.register_script(_UNFENCE)

    def _fence_key(self, path: str) -> str:
        return f"{self.ns}fence:{path}"

    def _busy_key(self, path: str) -> str:
        return f"{self.ns}busy:{path}"

    @asynccontextmanager
    async def busy(self, path: str) -> AsyncIterator[None]:
        paths = _self_and_ancestors(path)
        keys = [self._fence_key(p) for p in paths] + [self._busy_key(p) for p in paths]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FENCE_WAIT
        pause = 0.005
        while not await self._enter(keys=keys, args=[BUSY_LEASE_MS]):
            if loop.time() > deadline:
                raise Unavailable("storage stayed fenced by a garbage collection; retry")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        try:
            yield
        finally:
            await asyncio.shield(self._leave(keys=keys[len(paths) :]))

    @asynccontextmanager
    async def fenced(self, path: str) -> AsyncIterator[bool]:
        """Yields whether the fence is up; False: something holds the path right now."""
        token = uuid.uuid4().hex
        keys = [self._fence_key(path), self._busy_key(path)]
        up = bool(await self._fence(keys=keys, args=[token, FENCE_LEASE_MS]))
        try:
            yield up
        finally:
            if up:
                await asyncio.shield(self._unfence(keys=keys[:1], args=[token]))


class FencedDriver(DelegatingDriver):
    """The inner driver, with touches, writes and collection moves fenced (see above)."""

    def __init__(self, inner: StorageDriver, fences: Fences) -> None:
        super().__init__(inner)
        self.fences = fences
        self.atomic_holds = True

    async def touch(self, path: str, mtime: float | None = None) -> None:
        async with self.fences.busy(path):
            await self.inner.touch(path, mtime)

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        async with self.fences.busy(path):
            await self.inner.write(path, data, durable)

    async def prepare_writes(
        self,
        files: Mapping[str, bytes],
        replayable: bool = False,
        removals: Sequence[str] = (),
        copies: Mapping[str, str] | None = None,
    ) -> PreparedWrites:
        # Each published file goes through ``write`` above, fenced (copies as files).
        return DeferredWrites(self, files, removals)

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        async with self.fences.fenced(source) as up:
            if not up:
                return False
            return await self.inner.move_unless_touched(source, dest, since)
