"""Which processes use a store in a local directory, so a collection can know it is alone.

Every process that may write to the store (each server worker, ``delete-repository``)
holds a shared ``flock`` on one file in it, ``_dockyard/in-use``, for as long as it
may. A command-line collection that gets the lock exclusively knows nothing else writes
or holds anything meanwhile: it deletes its candidates directly instead of setting them
aside to settle (``gc``), as Distribution's offline collection does, and a server
started meanwhile waits for it to finish before it serves.

The lock lives in the store, not in a temporary directory, so it is the same file for
a server in a container and a collection on the host that share the directory through a
bind mount. Object storage has no such lock: a collection there never counts as alone.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dockyard.registry import layout
from dockyard.storage.driver import StorageDriver

log = logging.getLogger("dockyard.store")

IN_USE = f"{layout.ROOT}/_dockyard/in-use"
# How often a process waiting for a collection that has the store alone tries again;
# polled rather than blocked in a thread, so that stopping the process stops the wait.
RETRY_INTERVAL = 0.2


def _open_lock(driver: StorageDriver) -> int | None:
    path = driver.local_path(IN_USE)
    if path is None:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Read-only is enough for flock, and lets a user who cannot write the file lock it.
    return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _try_lock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@asynccontextmanager
async def _lock_file(driver: StorageDriver, without: str, level: int) -> AsyncIterator[int | None]:
    """The lock file's descriptor for the block; None when the store has none, or when it
    cannot be opened (logged at ``level``, saying what goes on ``without`` it)."""
    try:
        fd = await asyncio.to_thread(_open_lock, driver)
    except OSError as error:
        log.log(level, "cannot open %s in the store (%s): %s", IN_USE, error, without)
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


@asynccontextmanager
async def using_store(driver: StorageDriver) -> AsyncIterator[None]:
    """Hold the store shared for the block; waits while a collection has it alone."""
    # A store this process cannot add a file to is one it cannot write to either; say
    # so, since a collection will not see this process.
    async with _lock_file(driver, "serving unseen by collections", logging.WARNING) as fd:
        if fd is not None and not _try_lock(fd, fcntl.LOCK_SH):
            log.warning("waiting: a garbage collection has the store to itself")
            while not _try_lock(fd, fcntl.LOCK_SH):
                await asyncio.sleep(RETRY_INTERVAL)
            log.info("the garbage collection is over; going on")
        yield


@asynccontextmanager
async def store_alone(driver: StorageDriver) -> AsyncIterator[bool]:
    """Try to hold the store exclusively for the block, without waiting: whether it is
    held, i.e. no other process uses it until the block ends."""
    async with _lock_file(driver, "collecting beside whoever uses it", logging.INFO) as fd:
        yield fd is not None and _try_lock(fd, fcntl.LOCK_EX)
