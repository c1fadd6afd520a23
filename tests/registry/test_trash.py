"""The collector's trash: every item settles before it goes, batches go while others come."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from dockyard.registry.trash import BATCH_SECONDS, TRASH, DirectRemoval, Trash
from dockyard.storage import FilesystemDriver
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import StorageError
from tests.support.recording_drivers import BatchRecorder

SETTLE = 0.3
# Each move takes this long, so twenty span several batches.
MOVE_SECONDS = 0.05
ITEMS = 20


class RecordingDriver(DelegatingDriver):
    """Slow moves; remembers when each move into the trash ended and each delete began."""

    def __init__(self, inner: FilesystemDriver) -> None:
        super().__init__(inner)
        self.moved: dict[str, float] = {}
        self.deleted: dict[str, float] = {}

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        await asyncio.sleep(MOVE_SECONDS)
        moved = await self.inner.move_unless_touched(source, dest, since)
        if moved:
            self.moved[dest] = time.monotonic()
        return moved

    async def delete(self, path: str) -> None:
        self.deleted.setdefault(path, time.monotonic())
        await self.inner.delete(path)


def deleted_at(driver: RecordingDriver, slot: str) -> float:
    """When the first delete of a directory holding ``slot`` began."""
    times = [at for path, at in driver.deleted.items() if slot.startswith(path + "/")]
    assert times, f"{slot} was never deleted"
    return min(times)


async def fill(driver: RecordingDriver, count: int = ITEMS) -> list[str]:
    paths = []
    for number in range(count):
        path = f"/blobs/{number:03d}"
        await driver.write(f"{path}/data", b"x")
        paths.append(path)
    return paths


def make_driver(tmp_path: Path) -> RecordingDriver:
    return RecordingDriver(FilesystemDriver(str(tmp_path)))


async def test_each_item_settles_and_batches_go_while_others_come(tmp_path: Path) -> None:
    driver = make_driver(tmp_path)
    paths = await fill(driver)
    trash = Trash(driver, SETTLE)
    await trash.start()
    for path in paths:
        assert await trash.set_aside(path, since=time.time() + 60)
    last_moved = time.monotonic()
    await trash.finish()

    assert len(driver.moved) == ITEMS
    for slot, moved in driver.moved.items():
        assert deleted_at(driver, slot) >= moved + SETTLE, slot
    # Several batches, and the first was on its way out before the last item came in.
    batches = {slot.split("/")[-3] for slot in driver.moved}
    assert len(batches) >= (ITEMS * MOVE_SECONDS) // BATCH_SECONDS
    first = min(deleted_at(driver, slot) for slot in driver.moved)
    assert first < last_moved
    assert not (tmp_path / TRASH.lstrip("/")).exists() or not any(
        (tmp_path / TRASH.lstrip("/")).iterdir()
    )
    for path in paths:
        assert not (tmp_path / path.lstrip("/")).exists()


async def test_refused_moves_leave_nothing_to_delete(tmp_path: Path) -> None:
    driver = make_driver(tmp_path)
    paths = await fill(driver, 3)
    trash = Trash(driver, SETTLE)
    await trash.start()
    # Every file was written after this time: all are refused, as if held.
    for path in paths:
        assert not await trash.set_aside(path, since=0.0)
    await trash.finish()
    for path in paths:
        assert await driver.read(f"{path}/data") == b"x"


async def test_an_abandoned_run_leaves_its_trash_to_the_next_which_lets_it_settle(
    tmp_path: Path,
) -> None:
    driver = make_driver(tmp_path)
    paths = await fill(driver, 4)
    first = Trash(driver, 60.0)
    await first.start()
    for path in paths:
        assert await first.set_aside(path, since=time.time() + 60)
    first.abandon()
    left = tmp_path / TRASH.lstrip("/") / first.run
    assert sum(1 for entry in left.rglob("data")) == 4

    second = Trash(driver, SETTLE)
    began = time.monotonic()
    await second.start()
    await second.finish()
    assert not left.exists()
    assert driver.deleted[f"{TRASH}/{first.run}"] >= began + SETTLE


async def test_nothing_set_aside_and_no_leftovers_does_not_wait(tmp_path: Path) -> None:
    trash = Trash(make_driver(tmp_path), 60.0)
    await trash.start()
    await asyncio.wait_for(trash.finish(), timeout=5)


@pytest.mark.parametrize("items", [1, 2])
async def test_a_few_items_settle_once(tmp_path: Path, items: int) -> None:
    driver = make_driver(tmp_path)
    paths = await fill(driver, items)
    trash = Trash(driver, SETTLE)
    await trash.start()
    began = time.monotonic()
    for path in paths:
        assert await trash.set_aside(path, since=time.time() + 60)
    await trash.finish()
    took = time.monotonic() - began
    assert took >= SETTLE
    for slot in driver.moved:
        assert deleted_at(driver, slot) >= driver.moved[slot] + SETTLE


async def test_removal_in_place_sends_candidates_in_batches(tmp_path: Path) -> None:
    driver = BatchRecorder(FilesystemDriver(str(tmp_path)))
    paths = [f"/blobs/{number:03d}" for number in range(200)]
    # Every other one is there: each answer belongs to its own path, whatever its batch.
    for path in paths[::2]:
        await driver.write(f"{path}/data", b"x")
    await driver.write(f"{TRASH}/left-by-an-earlier-run/0/0/0/data", b"x")
    removal = DirectRemoval(driver)
    await removal.start()
    found = await removal.remove(paths)
    # Which were there, each answered; none of them left.
    assert found == [True, False] * 100
    assert not (tmp_path / "blobs").exists() or not any((tmp_path / "blobs").iterdir())
    assert not (tmp_path / TRASH.lstrip("/")).exists()
    # Far fewer calls than candidates, none larger than a batch, each candidate once.
    assert 1 < len(driver.batches) <= 200 // DirectRemoval.BATCH + 1
    assert all(len(batch) <= DirectRemoval.BATCH for batch in driver.batches)
    assert sorted(path for batch in driver.batches for path in batch) == paths
    assert await removal.remove([]) == []


class InFlightCounter(DelegatingDriver):
    """Counts the ``delete_each`` calls running at once; each waits a moment, as a
    disk that trims every freed block does."""

    def __init__(self, inner: FilesystemDriver) -> None:
        super().__init__(inner)
        self.running = 0
        self.most = 0

    async def delete_each(self, paths: Sequence[str]) -> list[bool]:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.01)
            return await self.inner.delete_each(paths)
        finally:
            self.running -= 1


async def test_removal_in_place_keeps_several_batches_in_flight(tmp_path: Path) -> None:
    # The deletes mostly wait on the disk: one at a time would leave it idle.
    driver = InFlightCounter(FilesystemDriver(str(tmp_path)))
    paths = [f"/blobs/{number:03d}" for number in range(10 * DirectRemoval.BATCH)]
    for path in paths:
        await driver.write(f"{path}/data", b"x")
    assert await DirectRemoval(driver).remove(paths) == [True] * len(paths)
    assert driver.most == DirectRemoval.HERE > 1


async def test_removal_in_place_raises_what_a_failed_batch_raised(tmp_path: Path) -> None:
    driver = BatchRecorder(FilesystemDriver(str(tmp_path)))
    removal = DirectRemoval(driver)
    with pytest.raises(StorageError, match="the disk went away"):
        await removal.remove(["/broken/1", "/broken/2"])
    assert len(driver.batches) == 1
