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
from collections.abc import Callable
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


class Sweep(Protocol):
    """How a collection removes its candidates: ``start``, ``set_aside`` each, ``close``
    once all are, then ``finish`` (or ``abandon`` when the run fails)."""

    async def start(self) -> None: ...

    async def set_aside(self, path: str, since: float) -> bool: ...

    def close(self) -> None: ...

    async def finish(self) -> None: ...

    def abandon(self) -> None: ...


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

    Deletes go to the driver in batches (``delete_each``): the candidates that arrive
    while one turn of the event loop runs, up to ``BATCH``, several batches at once, so
    a local disk's deletes run in threads beside the loop rather than one by one in it.
    With ``helpers``, each batch goes where fewer are in flight for each lane: a thread
    here, or a helper process.
    """

    # Candidates per batch; the collection keeps ``IN_FLIGHT`` candidates going, so
    # about four batches are in flight at a time.
    BATCH = 64
    IN_FLIGHT = 256
    # Batches in flight per helper process: one deleted while the next one travels.
    PER_HELPER = 2
    # And here: this process also runs the event loop that feeds every lane.
    HERE = 1

    def __init__(self, driver: StorageDriver, helpers: Remover | None = None) -> None:
        self.driver = driver
        self.helpers = helpers
        self._waiting: list[tuple[str, asyncio.Future[bool]]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._here = 0
        self._elsewhere = 0

    @classmethod
    def in_flight(cls, helpers: Remover | None) -> int:
        """Candidates a collection keeps going: enough for every lane's batches."""
        lanes = cls.HERE + (cls.PER_HELPER * helpers.processes if helpers else 0)
        return max(cls.IN_FLIGHT, lanes * cls.BATCH)

    async def start(self) -> None:
        await delete_if_exists(self.driver, TRASH)

    async def set_aside(self, path: str, since: float) -> bool:
        """Delete ``path``; whether it was there. Nothing can have touched it since
        ``since``: no other process uses the store."""
        found: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((path, found))
        if len(self._waiting) >= self.BATCH:
            self._send()
        elif len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._send)
        return await found

    def _send(self) -> None:
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        # Counted from now, not from when the task first runs: several batches may be
        # sent in one turn of the event loop.
        elsewhere = self._elsewhere_next()
        if elsewhere:
            self._elsewhere += 1
        else:
            self._here += 1
        task = asyncio.get_running_loop().create_task(self._delete(batch, elsewhere))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _elsewhere_next(self) -> bool:
        """Whether the next batch goes to a helper: the lanes' load, evened out."""
        if self.helpers is None:
            return False
        return self._elsewhere * self.HERE <= self._here * self.PER_HELPER * self.helpers.processes

    async def _delete_batch(self, paths: list[str], elsewhere: bool) -> list[bool]:
        try:
            if elsewhere:
                assert self.helpers is not None
                return await self.helpers.delete_each(paths)
            return await self.driver.delete_each(paths)
        finally:
            if elsewhere:
                self._elsewhere -= 1
            else:
                self._here -= 1

    async def _delete(self, batch: list[tuple[str, asyncio.Future[bool]]], elsewhere: bool) -> None:
        try:
            found = await self._delete_batch([path for path, _ in batch], elsewhere)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - each candidate's step reports it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), each in zip(batch, found, strict=True):
            if not future.done():
                future.set_result(each)

    def close(self) -> None:
        self._send()

    async def finish(self) -> None:
        self._send()
        await asyncio.gather(*self._batches, return_exceptions=True)

    def abandon(self) -> None:
        for task in self._batches:
            task.cancel()
