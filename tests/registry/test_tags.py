"""Tags and their reverse index: which tags point at a manifest, at a cost that follows
that manifest's tags, not the repository's."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.coordination.locks import ProcessLocks
from dockyard.errors import NameUnknown
from dockyard.registry import layout
from dockyard.registry.digest import Digest
from dockyard.registry.links import write_link
from dockyard.registry import tags as tags_module
from dockyard.registry.deferred import DeferredWork
from dockyard.registry.tags import TagStore
from dockyard.storage import FilesystemDriver, MemoryDriver, PathNotFoundError
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import PreparedWrites, StorageDriver, StorageError

A, B, C = Digest.of(b"a"), Digest.of(b"b"), Digest.of(b"c")


class CountingDriver(DelegatingDriver):
    """Counts reads and listings, the work a lookup does per tag; and writes, each
    durable on its own, and batches of writes, which a driver may make durable whole."""

    def __init__(self, inner: StorageDriver | None = None) -> None:
        super().__init__(inner or MemoryDriver())
        self.reads = 0
        self.writes = 0
        self.batches: list[list[str]] = []

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        self.writes += 1
        await self.inner.write(path, data, durable)

    async def prepare_writes(
        self,
        files: Mapping[str, bytes],
        replayable: bool = False,
        removals: Sequence[str] = (),
        copies: Mapping[str, str] | None = None,
    ) -> PreparedWrites:
        await self.before_batch()
        self.batches.append(sorted(files))
        return await self.inner.prepare_writes(files, replayable, removals, copies)

    async def before_batch(self) -> None:
        """Where a test holds a batch back."""

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


@pytest.mark.parametrize("storage", ["memory", "filesystem"])
async def test_a_store_of_many_tags_is_indexed_in_batches_the_mark_last(
    storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write per tag was a durable write per tag: seconds for a repository of
    # thousands, all in its first manifest DELETE.
    monkeypatch.setattr(tags_module, "INDEX_BATCH", 4)
    inner = FilesystemDriver(str(tmp_path)) if storage == "filesystem" else MemoryDriver()
    driver = CountingDriver(inner)
    tags = TagStore("lib/app", driver, ProcessLocks())
    names = [f"t{number}" for number in range(10)]
    for number, tag in enumerate(names):
        # As another registry writes a tag: its current link and its history.
        digest = (A, B)[number % 2]
        await write_link(driver, layout.tag_current_link("lib/app", tag), digest)
        await write_link(driver, layout.tag_index_link("lib/app", tag, digest), digest)
    try:
        driver.writes, driver.batches = 0, []
        assert await tags.pointing_at(A) == sorted(names[0::2])
        assert driver.writes == 0
        # The asked-for manifest's entries first (5), then the others' (5) and the mark.
        assert [len(batch) for batch in driver.batches] == [4, 1, 4, 2]
        assert all("/sha256/" + A.hex + "/" in path for path in driver.batches[0])
        assert layout.tags_indexed("lib/app") in driver.batches[-1]
        for batch in driver.batches[:-1]:
            assert layout.tags_indexed("lib/app") not in batch
        # The index answers from here on, for every manifest.
        driver.reads = 0
        assert await tags.pointing_at(B) == sorted(names[1::2])
        assert driver.reads <= 1 + 5
        assert sorted(await driver.list(layout.revision_dir("lib/app", A))) == sorted(
            f"{layout.TAG_ENTRY_PREFIX}{tag}" for tag in names[0::2]
        )
        if storage == "filesystem":
            # Each entry is the tag's history link for that digest: no inode of its own.
            for number, tag in enumerate(names):
                digest = (A, B)[number % 2]
                entry, index = (
                    os.stat(tmp_path / path.lstrip("/"))
                    for path in (
                        layout.tag_entry("lib/app", digest, tag),
                        layout.tag_index_link("lib/app", tag, digest),
                    )
                )
                assert entry.st_ino == index.st_ino
    finally:
        await driver.close()


class GatedDriver(CountingDriver):
    """Holds every batch of writes after the first until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def before_batch(self) -> None:
        if self.batches:
            await self.gate.wait()


async def test_a_first_index_answers_once_read_and_writes_the_rest_after() -> None:
    driver = GatedDriver()
    deferred = DeferredWork()
    tags = TagStore("lib/app", driver, ProcessLocks(), deferred)
    for tag, digest in (("one", A), ("two", B), ("three", A), ("four", C)):
        await write_link(driver, layout.tag_current_link("lib/app", tag), digest)
    # Answered with only the asked-for manifest's entries written (the rest are held).
    assert await asyncio.wait_for(tags.pointing_at(A), 5) == ["one", "three"]
    assert driver.batches == [sorted(layout.tag_entry("lib/app", A, t) for t in ("one", "three"))]
    with pytest.raises(PathNotFoundError):
        await driver.stat(layout.tags_indexed("lib/app"))
    # A lookup meanwhile waits for the index rather than reading every tag again.
    waiting = asyncio.create_task(tags.pointing_at(B))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()
    driver.gate.set()
    assert await waiting == ["two"]
    await deferred.finished()
    await driver.stat(layout.tags_indexed("lib/app"))
    assert await driver.list(layout.revision_dir("lib/app", C)) == ["tagged.four"]
    driver.reads = 0
    assert await tags.pointing_at(C) == ["four"]
    assert driver.reads <= 3


async def test_an_index_left_unfinished_when_closing_is_built_again() -> None:
    driver = GatedDriver()
    deferred = DeferredWork()
    tags = TagStore("lib/app", driver, ProcessLocks(), deferred)
    for tag, digest in (("one", A), ("two", B)):
        await write_link(driver, layout.tag_current_link("lib/app", tag), digest)
    assert await asyncio.wait_for(tags.pointing_at(A), 5) == ["one"]
    await deferred.close(wait=0.05)  # the gate stays shut: cancelled
    with pytest.raises(PathNotFoundError):
        await driver.stat(layout.tags_indexed("lib/app"))
    driver.gate.set()
    again = TagStore("lib/app", driver, ProcessLocks())
    assert await again.pointing_at(B) == ["two"]
    await driver.stat(layout.tags_indexed("lib/app"))


class FailingDeleteDriver(GatedDriver):
    """Refuses to delete ``refused``; holds every delete until ``deletes`` opens."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.gate.set()
        self.refused = refused
        self.deletes = asyncio.Event()
        self.deletes.set()

    async def delete(self, path: str) -> None:
        await self.deletes.wait()
        if path == self.refused:
            raise StorageError(f"refused: {path}")
        await self.inner.delete(path)


async def old_store_tags(driver: StorageDriver) -> None:
    """Tags as another registry writes them: one and three at A, two at B, four at C."""
    for tag, digest in (("one", A), ("two", B), ("three", A), ("four", C)):
        await write_link(driver, layout.tag_current_link("lib/app", tag), digest)


async def test_a_first_delete_indexes_the_other_tags_once_it_removed_its_own() -> None:
    driver = FailingDeleteDriver(refused="")
    deferred = DeferredWork()
    tags = TagStore("lib/app", driver, ProcessLocks(), deferred)
    await old_store_tags(driver)
    driver.deletes.clear()
    done = asyncio.Event()

    async def delete() -> list[str]:
        async with tags.untagging_all_at(A) as removed:
            await done.wait()
        return removed

    untagging = asyncio.create_task(delete())
    for _ in range(50):
        await asyncio.sleep(0)
    # Nothing is written while the tags are being removed, nor until the caller is done.
    assert driver.batches == []
    driver.deletes.set()
    for _ in range(50):
        await asyncio.sleep(0)
    assert driver.batches == []
    assert await tags.list() == ["four", "two"]
    done.set()
    assert await untagging == ["one", "three"]
    await deferred.finished()
    # Then the other manifests' entries, with the mark that the index is complete; none
    # for the removed tags, nothing in A's revision.
    assert driver.batches == [
        sorted(
            [layout.tags_indexed("lib/app")]
            + [layout.tag_entry("lib/app", d, t) for t, d in (("two", B), ("four", C))]
        )
    ]
    assert await tags.list() == ["four", "two"]
    driver.reads = 0
    assert await tags.pointing_at(B) == ["two"]
    assert await tags.pointing_at(A) == []
    assert driver.reads <= 6


async def test_a_first_delete_that_fails_leaves_its_tags_indexed() -> None:
    driver = FailingDeleteDriver(refused=layout.tag_dir("lib/app", "three"))
    deferred = DeferredWork()
    tags = TagStore("lib/app", driver, ProcessLocks(), deferred)
    await old_store_tags(driver)
    with pytest.raises(StorageError):
        async with tags.untagging_all_at(A):
            pytest.fail("the tags were removed")
    await deferred.finished()
    await driver.stat(layout.tags_indexed("lib/app"))
    # "one" was removed before the failure; "three" still points at A, and is found
    # through the index from now on.
    driver.reads = 0
    assert await tags.pointing_at(A) == ["three"]
    assert driver.reads <= 5
    async with tags.untagging_all_at(C) as removed:
        assert removed == ["four"]
    assert await tags.list() == ["three", "two"]


async def test_a_first_delete_that_fails_after_removing_its_tags_indexes_the_rest() -> None:
    driver = FailingDeleteDriver(refused="")
    deferred = DeferredWork()
    tags = TagStore("lib/app", driver, ProcessLocks(), deferred)
    await old_store_tags(driver)
    with pytest.raises(RuntimeError):
        async with tags.untagging_all_at(A) as removed:
            assert removed == ["one", "three"]
            raise RuntimeError("the revision could not be removed")
    await deferred.finished()
    await driver.stat(layout.tags_indexed("lib/app"))
    assert not [path for batch in driver.batches for path in batch if A.hex in path]
    assert await tags.pointing_at(B) == ["two"]


async def test_an_index_an_earlier_version_kept_is_rebuilt_once_and_removed(
    tags: TagStore, driver: CountingDriver
) -> None:
    # As earlier versions left a store: the index beside the revisions, complete.
    await write_link(driver, layout.tag_current_link("lib/app", "one"), A)
    await write_link(driver, layout.tag_current_link("lib/app", "two"), B)
    former = layout.former_tag_index("lib/app")
    await driver.write(f"{former}/{A.algorithm}/{A.hex}/one", b"")
    await driver.write(f"{former}/complete", b"")
    assert await tags.pointing_at(A) == ["one"]
    with pytest.raises(PathNotFoundError):
        await driver.list(former)
    driver.reads = 0
    assert await tags.pointing_at(B) == ["two"]
    assert driver.reads <= 3
    assert await driver.list(layout.revision_dir("lib/app", B)) == ["tagged.two"]


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
        left = await driver.list(layout.revision_dir(tags.name, A))
    except PathNotFoundError:
        left = []
    assert [name for name in left if name.startswith(layout.TAG_ENTRY_PREFIX)] == []


async def test_an_entry_left_by_a_crash_is_only_a_candidate(
    tags: TagStore, driver: CountingDriver
) -> None:
    await tags.tag("base", C)
    await tags.pointing_at(C)
    await tags.tag("latest", B)
    # A crash between writing the entry and moving the tag leaves this:
    await driver.write(layout.tag_entry(tags.name, A, "latest"), b"")
    assert await tags.pointing_at(A) == []
    assert not await tags.untag_if_at("latest", A)
    assert await tags.resolve("latest") == B


# Tag names and names a tag directory may hold that are not tags (another tool's, or a
# leftover); both kinds sort among each other.
TAG_NAMES = st.sampled_from(["a", "a.1", "a-1", "A", "b_2", "latest", "v1.0", "z9"])
NOT_TAGS = st.sampled_from([".a", "-b", ".hidden", "-"])


@settings(max_examples=150, deadline=None)
@given(
    names=st.sets(st.one_of(TAG_NAMES, NOT_TAGS), max_size=12),
    n=st.one_of(st.none(), st.integers(0, 5)),
    last=st.one_of(st.none(), TAG_NAMES, NOT_TAGS, st.just("")),
)
async def test_a_page_is_the_tags_after_last_in_order(
    names: set[str], n: int | None, last: str | None
) -> None:
    store = TagStore("lib/app", MemoryDriver(), ProcessLocks())
    await write_link(store.driver, layout.revision_link(store.name, A), A)
    for name in names:
        await store.driver.write(layout.tag_current_link(store.name, name), str(A).encode())
    valid = await store.list()
    assert valid == sorted(name for name in names if not name.startswith((".", "-")))
    after = [tag for tag in valid if not last or tag > last]
    page, more = await store.page(n, last)
    assert page == (after if n is None else after[:n])
    assert more == (n is not None and len(after) > n)


async def test_every_page_together_is_every_tag(tags: TagStore) -> None:
    names = [f"t{index:03d}" for index in range(23)]
    for name in names:
        await tags.tag(name, A)
    walked: list[str] = []
    last = None
    while True:
        page, more = await tags.page(5, last)
        walked += page
        if not more:
            break
        last = page[-1]
    assert walked == names


async def test_the_page_of_an_unknown_repository_is_an_error(tags: TagStore) -> None:
    with pytest.raises(NameUnknown):
        await tags.page(10, None)
