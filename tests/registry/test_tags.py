"""Tags and their reverse index: which tags point at a manifest, at a cost that follows
that manifest's tags, not the repository's."""

from __future__ import annotations

import pytest

from dockyard.coordination.locks import ProcessLocks
from dockyard.registry import layout
from dockyard.registry.digest import Digest
from dockyard.registry.links import write_link
from dockyard.registry.tags import TagStore
from dockyard.storage import MemoryDriver, PathNotFoundError
from dockyard.storage.delegating import DelegatingDriver

A, B, C = Digest.of(b"a"), Digest.of(b"b"), Digest.of(b"c")


class CountingDriver(DelegatingDriver):
    """Counts reads and listings, the work a lookup does per tag."""

    def __init__(self) -> None:
        super().__init__(MemoryDriver())
        self.reads = 0

    async def read(self, path: str) -> bytes:
        self.reads += 1
        return await self.inner.read(path)

    async def list(self, path: str) -> list[str]:
        self.reads += 1
        return await self.inner.list(path)


@pytest.fixture
def driver() -> CountingDriver:
    return CountingDriver()


@pytest.fixture
def tags(driver: CountingDriver) -> TagStore:
    return TagStore("lib/app", driver, ProcessLocks())


async def test_the_tags_of_a_manifest_cost_the_same_among_many(
    tags: TagStore, driver: CountingDriver
) -> None:
    for number in range(300):
        await tags.tag(f"v{number}", C)
    await tags.tag("latest", A)
    await tags.tag("stable", A)
    await tags.pointing_at(B)  # the first lookup builds the index (a store of old)
    driver.reads = 0
    assert await tags.pointing_at(A) == ["latest", "stable"]
    assert driver.reads <= 4
    driver.reads = 0
    assert await tags.pointing_at(B) == []
    assert driver.reads <= 2


async def test_a_store_written_without_the_index_is_scanned_once_and_indexed(
    tags: TagStore, driver: CountingDriver
) -> None:
    # Tags as another registry writes them: links only.
    for tag, digest in (("one", A), ("two", B), ("three", A)):
        await write_link(driver, layout.tag_current_link("lib/app", tag), digest)
    assert await tags.pointing_at(A) == ["one", "three"]
    driver.reads = 0
    assert await tags.pointing_at(B) == ["two"]
    assert driver.reads <= 3


async def test_a_moved_tag_is_found_only_where_it_points(tags: TagStore) -> None:
    await tags.tag("base", C)
    assert await tags.pointing_at(C) == ["base"]  # the index is complete from here
    await tags.tag("latest", A)
    await tags.tag("latest", B)
    assert await tags.pointing_at(A) == []
    assert await tags.pointing_at(B) == ["latest"]
    await tags.tag("latest", B)  # again, unchanged
    assert await tags.pointing_at(B) == ["latest"]


async def test_untagging_removes_the_entry(tags: TagStore, driver: CountingDriver) -> None:
    await tags.tag("base", C)
    await tags.pointing_at(C)
    await tags.tag("latest", A)
    await tags.tag("old", A)
    await tags.untag("latest")
    assert await tags.untag_if_at("old", A)
    assert await tags.pointing_at(A) == []
    try:
        left = await driver.list(layout.tagged(tags.name, A))
    except PathNotFoundError:
        left = []
    assert left == []


async def test_an_entry_left_by_a_crash_is_only_a_candidate(
    tags: TagStore, driver: CountingDriver
) -> None:
    await tags.tag("base", C)
    await tags.pointing_at(C)
    await tags.tag("latest", B)
    # A crash between writing the entry and moving the tag leaves this:
    await driver.write(layout.tagged_entry(tags.name, A, "latest"), b"")
    assert await tags.pointing_at(A) == []
    assert not await tags.untag_if_at("latest", A)
    assert await tags.resolve("latest") == B
