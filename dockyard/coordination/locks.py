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
import struct
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


# struct flock as Linux lays it out on 64-bit machines: type, whence, start, length, pid.
_FLOCK = struct.Struct("@hhqqi4x")


def _key_offset(key: str) -> int:
    # 56 bits of the key's hash: a byte offset any off_t holds, and no collisions in
    # practice.
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "big")


class LocalLocks:
    """In-process locks, then a lock on one byte of a shared file, per key, for the
    workers of this host.

    The byte is at an offset hashed from the key, locked with an open-file-description
    lock (Linux's ``F_OFD_SETLK``): it belongs to this instance's descriptor, not the
    process as classic POSIX record locks do, and it goes when the holder dies. Nothing
    is created or removed per key, so taking a lock costs no file system change.
    """

    def __init__(self, directory: Path, wait: float = WAIT_LIMIT) -> None:
        self.directory = directory
        self.wait = wait
        self._process = ProcessLocks()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        # A descriptor inherited over fork would share its locks with the parent's.
        if self._fd is None or self._pid != os.getpid():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.directory / "locks", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        async with self._process.hold(key):
            fd, offset = self._file(), _key_offset(key)
            await self._lock(fd, offset)
            try:
                yield
            finally:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0))

    async def _lock(self, fd: int, offset: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        pause = 0.002
        request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        while True:
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
                return
            except BlockingIOError:
                pass
            if loop.time() > deadline:
                raise Unavailable("a lock stayed busy too long; retry")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)


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
