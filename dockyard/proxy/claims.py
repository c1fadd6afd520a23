"""Single flight across worker processes, for storage in a local directory.

The process that takes the exclusive ``flock`` on ``incoming/<alg>-<hex>.lock`` fetches
the blob into ``<alg>-<hex>.part`` (after writing its size, when known, to ``.size``).
Every other process follows that file as it grows (``FollowedFetch``): it sends what
is there, waits for more, and learns the outcome from the lock and the blob store. The
blob stored under its digest means the bytes were verified; the lock gone without it
means the fetch failed, and the response is cut short. A lock held by a process that
died is released by the kernel, so nobody waits for a dead fetch. A follower also holds
a shared ``flock`` on ``.size``: it tells the fetching process that someone reads only
what its spool has written, which keeps a spool that lags the network writing.

Storage drivers without a local path (S3, in-memory) fetch once per process instead.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dockyard.errors import BlobUnknown, Unavailable
from dockyard.registry import Registry, layout
from dockyard.registry.digest import Digest
from dockyard.storage.driver import StorageDriver

INCOMING = f"{layout.ROOT}/_dockyard/proxy/incoming"
PIECE = 1 << 20
# How often a follower looks at the spool for more bytes.
POLL = 0.02


@dataclass(frozen=True, slots=True)
class SpoolPaths:
    storage_part: str  # the spool as a storage path (it is moved into the blob store)
    part: str
    size: str
    lock: str


def spool_paths(registry: Registry, digest: Digest) -> SpoolPaths | None:
    base = f"{INCOMING}/{digest.algorithm}-{digest.hex}"
    lock = registry.driver.local_path(f"{base}.lock")
    part = registry.driver.local_path(f"{base}.part")
    size = registry.driver.local_path(f"{base}.size")
    if lock is None or part is None or size is None:
        return None
    return SpoolPaths(f"{base}.part", part, size, lock)


class Claim:
    """This process's exclusive right to fetch one digest; released when it is done."""

    def __init__(self, paths: SpoolPaths, fd: int) -> None:
        self.paths = paths
        self._fd: int | None = fd
        self._size_fd: int | None = None

    def announce_size(self, size: int | None) -> None:
        # Kept open: ``followed`` locks it.
        self._size_fd = os.open(self.paths.size, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._size_fd, b"" if size is None else str(size).encode())

    def followed(self) -> bool:
        """Whether another process follows the spool now: it holds a shared lock on
        the size file, so this one cannot take it exclusively."""
        if self._size_fd is None:
            return False
        try:
            fcntl.flock(self._size_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._size_fd, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked before unlocking: a follower that finds no lock file knows the fetch
        # is over, and one that finds it unlocked knows the same.
        for path in (self.paths.size, self.paths.lock):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None
        if self._size_fd is not None:
            os.close(self._size_fd)
            self._size_fd = None


def claim(paths: SpoolPaths) -> Claim | None:
    """The claim on the digest, or None when another process holds it."""
    os.makedirs(os.path.dirname(paths.lock), exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Claim(paths, fd)


def fetch_in_progress(paths: SpoolPaths) -> bool:
    """Whether some process holds the claim now."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return False


def _announced_size(path: str) -> int | None:
    try:
        with open(path) as file:
            text = file.read().strip()
        return int(text) if text else None
    except (FileNotFoundError, ValueError):
        return None


def claimed(driver: StorageDriver, path: str) -> bool:
    """Whether a fetch holds the claim that ``path`` (a spool, size or lock file) is part of."""
    base, dot, _ = path.rpartition(".")
    lock = driver.local_path(f"{base}.lock") if dot else None
    if lock is None:
        return False
    paths = SpoolPaths("", "", "", lock)
    return fetch_in_progress(paths)


class Retry(Exception):
    """The other process's fetch ended before this one could follow it: start over."""


class FollowedFetch:
    """A fetch another process is running, read from its spool by one request."""

    def __init__(
        self, registry: Registry, repository: str, digest: Digest, paths: SpoolPaths
    ) -> None:
        self.registry = registry
        # The other process links the blob into the repository it fetched it for; the
        # one this request is for may be another.
        self.repository = repository
        self.digest = digest
        self.paths = paths
        self.size: int | None = None
        self._fd: int | None = None
        self._following: int | None = None

    async def started(self) -> int:
        """Open the spool; ``Retry`` when the fetch is over (stored or failed)."""
        while True:
            try:
                self._fd = os.open(self.paths.part, os.O_RDONLY)
                break
            except FileNotFoundError:
                if not fetch_in_progress(self.paths):
                    raise Retry() from None
                await asyncio.sleep(POLL)
        self._following = _follow(self.paths.size)
        self.size = _announced_size(self.paths.size)
        if self.size is None and not fetch_in_progress(self.paths):
            # The fetch ended between the two looks: the store knows how it ended.
            self.release()
            raise Retry()
        return self._fd

    async def pieces(self, fd: int) -> AsyncIterator[bytes]:
        """The spool's bytes as they arrive; the last one only once the blob is stored
        and linked into this request's repository."""
        offset = 0
        # Up to the last byte, bytes come as the other process writes them.
        limit = self.size - 1 if self.size is not None else None
        while True:
            available = os.fstat(fd).st_size
            if limit is not None:
                available = min(available, limit)
            if offset < available:
                piece = await asyncio.to_thread(
                    os.pread, fd, min(available - offset, PIECE), offset
                )
                offset += len(piece)
                yield piece
                continue
            running = fetch_in_progress(self.paths)
            if (limit is not None and offset >= limit) or not running:
                if limit is None and offset < os.fstat(fd).st_size:
                    continue  # written just before the fetch ended
                break
            await asyncio.sleep(POLL)
        stored = await self._outcome()
        if stored is None or (self.size is not None and stored != self.size):
            raise Unavailable("the upstream fetch failed", detail={"digest": str(self.digest)})
        await self.registry.repository(self.repository).blobs.link(self.digest)
        while offset < stored:
            piece = await asyncio.to_thread(os.pread, fd, min(stored - offset, PIECE), offset)
            if not piece:
                raise Unavailable("the spool ended early", detail={"digest": str(self.digest)})
            offset += len(piece)
            yield piece

    async def _outcome(self) -> int | None:
        """Wait for the fetch to end: the stored blob's size, or None when it failed."""
        while fetch_in_progress(self.paths):
            await asyncio.sleep(POLL)
        try:
            return (await self.registry.blobs.stat(self.digest)).size
        except BlobUnknown:
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._following is not None:
            os.close(self._following)  # drops the shared lock
            self._following = None


def _follow(path: str) -> int | None:
    """A shared lock on the spool's size file, held while following it: the fetching
    process's spool then keeps writing, even when it has fallen behind the network
    (``BlobFetch``). None when the fetch is already over."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    # The fetching process only ever tries its exclusive lock without waiting and lets
    # it go at once, so this waits microseconds at most.
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd
