"""Where a collection sets its candidates aside, and their deletion once each has settled.

Every item stays in the trash at least ``settle`` seconds after it was moved there. The
items go into batches of about ``BATCH_SECONDS`` of set-aside each, and a batch is
deleted ``settle`` after its last item arrived, while later ones are still being set
aside: the deletion (kernel work, in threads) overlaps the set-aside (the event loop's)
rather than waiting for all of it, and the settle of the first items overlaps the
set-aside of the last.

Trash an earlier run left behind (it stopped before deleting it; one collection runs at
a time, so it is no run in progress) is deleted with this run's first batch, ``settle``
after this run began.

A collection that has the store to itself (``store_use``) needs no grace period, since
nothing can hold a candidate meanwhile: ``DirectRemoval`` deletes each one in place.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dockyard.registry import layout
from dockyard.registry.links import delete_if_exists
from dockyard.storage.driver import PathNotFoundError, StorageDriver

TRASH = f"{layout.ROOT}/_dockyard/trash"
# Each batch is split in parts deleted concurrently: unlinks on a local disk are kernel
# work that two cores share.
PARTS = 2
# How long one batch takes new items before the next begins.
BATCH_SECONDS = 0.25


@dataclass(slots=True)
class _Batch:
    paths: list[str]
    opened: float
    # Moves into the batch that have not finished, and when the last one did.
    moving: int = 0
    last_moved: float = 0.0
    closed: bool = False


class Trash:
    """A collection run's trash: ``set_aside`` candidates, then ``finish``.

    A slot is ``<run>/<batch>/<part>/<n>``. Deletion runs in a task started with the
    first batch; ``finish`` closes the last batch and waits for it all to be deleted.
    """

    def __init__(
        self,
        driver: StorageDriver,
        settle: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.driver = driver
        self.settle = settle
        self.clock = clock
        self.run = str(uuid.uuid4())
        self.root = f"{TRASH}/{self.run}"
        self.count = 0
        self._batches: list[_Batch] = []
        self._finished = False
        self._changed = asyncio.Event()
        self._deleter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Find the trash earlier runs left, to be deleted as this run's first batch."""
        try:
            runs = await self.driver.list(TRASH)
        except PathNotFoundError:
            runs = []
        if runs:
            now = self.clock()
            left = _Batch([f"{TRASH}/{run}" for run in runs], now, last_moved=now, closed=True)
            self._batches.append(left)
            self._ensure_deleter()

    async def set_aside(self, path: str, since: float) -> bool:
        """Move ``path`` into the trash unless a file in it was modified at ``since`` or
        later (``StorageDriver.move_unless_touched``); whether it moved. Only before
        ``close``."""
        batch = self._open_batch()
        number = self.count
        self.count += 1
        slot = f"{batch.paths[0]}/{number % PARTS}/{number}"
        batch.moving += 1
        try:
            return await self.driver.move_unless_touched(path, slot, since)
        finally:
            batch.moving -= 1
            batch.last_moved = self.clock()
            self._changed.set()

    def close(self) -> None:
        """Nothing more is set aside: the last batch starts to settle."""
        self._finished = True
        for batch in self._batches:
            batch.closed = True
        self._changed.set()

    async def finish(self) -> None:
        """Close the last batch and return once every batch is deleted."""
        self.close()
        if self._deleter is not None:
            await self._deleter
        if self.count:
            await delete_if_exists(self.driver, self.root)

    def abandon(self) -> None:
        """Stop deleting (the run is cancelled); the next run deletes what is left."""
        self._finished = True
        if self._deleter is not None:
            self._deleter.cancel()

    def _open_batch(self) -> _Batch:
        now = self.clock()
        current = self._batches[-1] if self._batches else None
        if current is None or current.closed or now - current.opened >= BATCH_SECONDS:
            if current is not None:
                current.closed = True
                self._changed.set()
            number = len(self._batches)
            current = _Batch([f"{self.root}/{number}"], now)
            self._batches.append(current)
            self._ensure_deleter()
        return current

    def _ensure_deleter(self) -> None:
        if self._deleter is None:
            self._deleter = asyncio.get_running_loop().create_task(self._delete_settled())

    async def _delete_settled(self) -> None:
        # A batch is deleted as soon as it has settled, beside any still being deleted:
        # deletion is slower than set-aside on a local disk, so batches would queue.
        deleting: list[asyncio.Task[None]] = []
        started = 0
        try:
            while True:
                self._changed.clear()
                if started < len(self._batches):
                    batch = self._batches[started]
                    if batch.closed and batch.moving == 0:
                        wait = batch.last_moved + self.settle - self.clock()
                        if wait > 0:
                            # Nothing enters a closed batch: its time cannot move meanwhile.
                            await asyncio.sleep(wait)
                        deleting.append(asyncio.ensure_future(self._delete(batch)))
                        started += 1
                        continue
                elif self._finished:
                    break
                await self._changed.wait()
            await asyncio.gather(*deleting)
        finally:
            for task in deleting:
                task.cancel()

    async def _delete(self, batch: _Batch) -> None:
        if self.driver.remote:
            # An object store deletes a listing in requests of a thousand keys, which one
            # call per tree does best.
            await asyncio.gather(*(delete_if_exists(self.driver, path) for path in batch.paths))
            return
        for path in batch.paths:
            await asyncio.gather(
                *(delete_if_exists(self.driver, f"{path}/{part}") for part in range(PARTS))
            )
            await delete_if_exists(self.driver, path)


class Remover(Protocol):
    """Deletes paths in other processes (a collection's helpers): their kernel work and
    their hand-offs stay off this process's interpreter lock."""

    processes: int

    async def delete_each(self, paths: list[str]) -> list[bool]:
        """``StorageDriver.delete_each`` on a driver of the helper's own."""


class DirectRemoval:
    """The sweep of a collection that has the store to itself: each candidate is deleted
    in place, and so is the trash earlier runs left.

    ``remove`` takes a whole list at once and sends it to the driver in batches
    (``delete_each``) along several lanes: threads beside this event loop, and with
    ``helpers`` their processes. Each lane takes the next batch when its last one is
    done, so the faster lanes do more. No task or future per candidate: a collection
    removes tens of thousands, and this process's event loop is what sets its pace.
    """

    # Candidates per batch: enough that a hand-off's cost stays small against the
    # deletes it carries, few enough that the lanes finish close together.
    BATCH = 64
    # Batches in flight per helper process: one deleted while the next one travels.
    PER_HELPER = 2
    # Lanes in threads of this process. A delete on a local disk mostly waits: every
    # file and directory removed frees a block, and a disk mounted with ``discard``
    # trims it before the unlink returns. With four deletes in flight instead of one, a
    # collection's deletes on 2 cores took about half as long; eight did no better.
    HERE = 4

    def __init__(self, driver: StorageDriver, helpers: Remover | None = None) -> None:
        self.driver = driver
        self.helpers = helpers

    async def start(self) -> None:
        await delete_if_exists(self.driver, TRASH)

    async def remove(self, paths: Sequence[str]) -> list[bool]:
        """Delete each path (a file, or a directory with all it holds); whether each was
        there. Nothing can have touched them since they were judged: no other process
        uses the store. The first failure is raised once the other lanes have stopped."""
        found = [False] * len(paths)
        starts = iter(range(0, len(paths), self.BATCH))

        async def lane(delete_each: Callable[[list[str]], Awaitable[list[bool]]]) -> None:
            for first in starts:
                last = min(first + self.BATCH, len(paths))
                found[first:last] = await delete_each(list(paths[first:last]))

        lanes = [lane(self.driver.delete_each) for _ in range(self.HERE)]
        if self.helpers is not None:
            helpers = self.helpers
            lanes += [lane(helpers.delete_each) for _ in range(self.PER_HELPER * helpers.processes)]
        try:
            async with asyncio.TaskGroup() as group:
                for each in lanes:
                    group.create_task(each)
        except ExceptionGroup as failed:
            # The first failure, as the driver or a helper raised it (a StorageError, say).
            raise failed.exceptions[0] from None
        return found
