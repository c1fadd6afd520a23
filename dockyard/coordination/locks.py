"""Named mutual exclusion for what replicas and workers change together.

Two kinds of change need it: appending to one upload session (chunks must land in
order) and moving or removing one tag (a manifest DELETE must not remove a tag that a
concurrent PUT has just pointed somewhere else). :class:`LocalLocks` covers the worker
processes of one host; :class:`RedisLocks` covers every replica that shares a Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dockyard.errors import Unavailable

if TYPE_CHECKING:  # redis is imported only where a redis section is set
    import redis.asyncio as aioredis

# How long a lock may be waited for before the request is refused as unavailable (the
# client retries), and how long a Redis lock outlives a holder that vanished.
WAIT_LIMIT = 60.0
REDIS_LEASE = 8.0


class Locks(Protocol):
    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...


class ProcessLocks:
    """Locks within this process: enough for one worker, and the first step of the others."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._held.get(key, (asyncio.Lock(), 0))
        self._held[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._held[key]
            if users == 1:
                del self._held[key]
            else:
                self._held[key] = (lock, users - 1)


class LocalLocks:
    """In-process locks, then ``flock`` on a file per key, shared by this host's workers.

    The file is removed by its holder before unlocking; whoever locked the removed file
    meanwhile notices (its inode is no longer at the path) and locks the new one, so
    files do not pile up and no two holders ever hold different files of one key.
    """

    def __init__(self, directory: Path, wait: float = WAIT_LIMIT) -> None:
        self.directory = directory
        self.wait = wait
        self._process = ProcessLocks()

    def _path(self, key: str) -> Path:
        return self.directory / hashlib.sha256(key.encode()).hexdigest()[:40]

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        async with self._process.hold(key):
            fd = await self._lock_file(self._path(key))
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(key))
                os.close(fd)

    async def _lock_file(self, path: Path) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        pause = 0.002
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if loop.time() > deadline:
                    raise Unavailable("a lock stayed busy too long; retry") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)


class RedisLocks:
    """Redis locks (a key set only if absent, with a lease kept alive while held)."""

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        lease: float = REDIS_LEASE,
        wait: float = WAIT_LIMIT,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.lease = lease
        self.wait = wait

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self.client.lock(
            f"{self.namespace}lock:{key}",
            timeout=self.lease,
            sleep=0.01,
            blocking_timeout=self.wait,
            thread_local=False,
        )
        if not await lock.acquire():
            raise Unavailable("a lock stayed busy too long; retry")
        renewal = asyncio.create_task(self._renew(lock, self.lease))
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            from redis.exceptions import LockError

            with contextlib.suppress(LockError):
                await lock.release()

    @staticmethod
    async def _renew(lock: aioredis.lock.Lock, lease: float) -> None:
        while True:
            await asyncio.sleep(lease / 3)
            await lock.reacquire()
