"""Which garbage collection is running and what the last one did, kept in storage.

``dockyard serve`` answers with several worker processes; any of them may be asked to
collect, run the schedule or report the status. They agree through the store, under
``_dockyard/gc`` (which neither the collector nor Distribution reads):

- One *token* file in ``token/``. A collection takes it by renaming ``free-<n>`` to
  ``held-<n>-<pid>-<started ms>-<host>`` and gives it back as ``free-<n+1>``. Renaming
  one source succeeds only once, so of two workers that try together one wins. The
  holder touches the token while it runs; a token whose process is gone (on this host)
  or that was not touched for ``STALE`` seconds is given back by whoever finds it, so a
  worker killed mid-collection blocks nothing. Only the highest generation counts (a
  held token wins a tie), so a late touch that rewrites an old token changes nothing.
  The first token is made in a directory of its own, renamed to ``token``: a rename
  onto a directory that is not empty fails, so only one first token is ever made.
- ``last.json``: the report of the last collection that deleted anything for real.

With a ``redis`` section the token is a Redis key instead (set only if absent, with a
lease the holder renews): a rename on object storage is a copy and a delete, which two
replicas could both win.

Dry runs change nothing and are not recorded here, so a read-only store can preview.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dockyard.coordination import Coordination
from dockyard.errors import Unsupported
from dockyard.registry import layout
from dockyard.storage.driver import PathNotFoundError, StorageDriver, StorageError

if TYPE_CHECKING:  # redis is imported only where a redis section is set
    import redis.asyncio as aioredis

log = logging.getLogger("dockyard.gc")

STATE = f"{layout.ROOT}/_dockyard/gc"
TOKEN = f"{STATE}/token"
LAST = f"{STATE}/last.json"
HEARTBEAT = 5.0
STALE = 60.0

_TOKEN = re.compile(r"^(?:free-(\d+)|held-(\d+)-(\d+)-(\d+)-([A-Za-z0-9.-]+))\Z")


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    generation: int
    pid: int = 0  # 0: free
    started_at: float = 0.0
    host: str = ""

    @property
    def path(self) -> str:
        return f"{TOKEN}/{self.name}"

    @property
    def next_free(self) -> str:
        return f"{TOKEN}/free-{self.generation + 1}"

    def running(self) -> dict[str, Any]:
        return {"startedAt": self.started_at, "dryRun": False, "pid": self.pid, "host": self.host}


def _parse(name: str) -> Token | None:
    match = _TOKEN.match(name)
    if match is None:
        return None
    free, generation, pid, started, host = match.groups()
    if free is not None:
        return Token(name, int(free))
    return Token(name, int(generation), int(pid), int(started) / 1000, host)


def this_host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "localhost"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisToken:
    """The token as one Redis key holding what :meth:`Token.running` reports."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}gc:token"
        self._renew = client.register_script(_RENEW)
        self._give_back = client.register_script(_GIVE_BACK)

    async def running(self) -> dict[str, Any] | None:
        value = await self.client.get(self.key)
        if value is None:
            return None
        running = json.loads(value)
        return running if isinstance(running, dict) else None

    @asynccontextmanager
    async def collecting(self) -> AsyncIterator[None]:
        value = json.dumps(
            {"startedAt": time.time(), "dryRun": False, "pid": os.getpid(), "host": this_host()}
        )
        lease = int(STALE * 1000)
        if not await self.client.set(self.key, value, nx=True, px=lease):
            raise Unsupported("a garbage collection is already running", detail=await self.running())
        beat = asyncio.create_task(self._beat(value, lease))
        try:
            yield
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            await asyncio.shield(self._give_back(keys=[self.key], args=[value]))

    async def _beat(self, value: str, lease: int) -> None:
        from redis.exceptions import RedisError

        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                if not await self._renew(keys=[self.key], args=[value, lease]):
                    log.warning("garbage collection token was taken back as stale")
                    return
            except RedisError as error:
                log.warning("garbage collection heartbeat failed: %s", error)


class CollectionStatus:
    def __init__(self, driver: StorageDriver, coordination: Coordination | None = None) -> None:
        self.driver = driver
        redis = coordination.redis if coordination is not None else None
        self._redis_token = (
            RedisToken(redis, coordination.namespace)
            if redis is not None and coordination is not None
            else None
        )

    async def running(self) -> dict[str, Any] | None:
        if self._redis_token is not None:
            return await self._redis_token.running()
        token = await self._current()
        if token is None or not token.pid or await self._stale(token):
            return None
        return token.running()

    async def last(self) -> dict[str, Any] | None:
        try:
            last = json.loads(await self.driver.read(LAST))
        except (PathNotFoundError, ValueError):
            return None
        return last if isinstance(last, dict) else None

    async def record(self, last: dict[str, Any]) -> None:
        await self.driver.write(LAST, json.dumps(last).encode())

    @asynccontextmanager
    async def collecting(self) -> AsyncIterator[None]:
        """Hold the token while the block runs; ``Unsupported`` when a collection holds it."""
        if self._redis_token is not None:
            async with self._redis_token.collecting():
                yield
            return
        token = await self._take()
        if token is None:
            raise Unsupported(
                "a garbage collection is already running", detail=await self.running()
            )
        beat = asyncio.create_task(self._beat(token))
        try:
            yield
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            with suppress(PathNotFoundError):  # taken back as stale meanwhile
                await self.driver.move(token.path, token.next_free)

    async def _current(self) -> Token | None:
        try:
            names = await self.driver.list(TOKEN)
        except PathNotFoundError:
            return None
        tokens = [token for token in map(_parse, names) if token is not None]
        return max(tokens, key=lambda t: (t.generation, t.pid > 0), default=None)

    async def _stale(self, token: Token) -> bool:
        if token.host == this_host() and not _alive(token.pid):
            return True
        try:
            touched = (await self.driver.stat(token.path)).mtime
        except PathNotFoundError:
            return True
        return time.time() - touched > STALE

    async def _take(self) -> Token | None:
        """The token, now held by this process; None when a live collection holds it."""
        for _ in range(10):
            token = await self._current()
            if token is None:
                await self._first_token()
                continue
            if token.pid:
                if not await self._stale(token):
                    return None
                with suppress(PathNotFoundError):
                    await self.driver.move(token.path, token.next_free)
                    log.warning("garbage collection %s is stale; token taken back", token.name)
                continue
            started = time.time()
            mine = Token(
                f"held-{token.generation}-{os.getpid()}-{int(started * 1000)}-{this_host()}",
                token.generation,
                os.getpid(),
                started,
                this_host(),
            )
            try:
                await self.driver.move(token.path, mine.path)
                # Fresh for other hosts, and proof it was not taken back as stale meanwhile.
                await self.driver.touch(mine.path)
            except PathNotFoundError:
                continue
            return mine
        return None

    async def _first_token(self) -> None:
        new = f"{STATE}/new-{uuid.uuid4().hex}"
        await self.driver.write(f"{new}/free-0", b"")
        try:
            await self.driver.move(new, TOKEN)
        except StorageError:  # another worker's came first
            with suppress(PathNotFoundError):
                await self.driver.delete(new)

    async def _beat(self, token: Token) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self.driver.touch(token.path)
            except PathNotFoundError:
                log.warning("garbage collection token %s was taken back as stale", token.name)
                return
            except StorageError as error:
                log.warning("garbage collection heartbeat failed: %s", error)
