"""A manifest push that takes longer than the hold limit commits nothing past its content."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dockyard.errors import ManifestUnknown, Unavailable
from dockyard.registry import Registry, layout
from dockyard.registry.digest import Digest
from dockyard.registry.manifests import OCI_INDEX
from dockyard.registry.registry import RegistryOptions
from dockyard.storage import FilesystemDriver, MemoryDriver, PathNotFoundError
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import StorageDriver

# An index of no manifests references nothing, so the push needs no blobs first.
INDEX = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()


@pytest.fixture(params=["filesystem", "memory"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "filesystem":
        return FilesystemDriver(str(tmp_path))
    return MemoryDriver()


async def test_a_push_within_the_hold_limit_is_committed(driver: StorageDriver) -> None:
    repo = Registry(driver).repository("lib/app")
    await repo.manifests.put(INDEX, OCI_INDEX, "latest", None)
    assert await repo.tags.resolve("latest") == Digest.of(INDEX)


async def test_a_push_past_the_hold_limit_commits_no_revision_and_no_tag(
    driver: StorageDriver,
) -> None:
    # Any time at all between the references' check and the revision is too long.
    repo = Registry(driver, RegistryOptions(hold_limit=0.0)).repository("lib/app")
    with pytest.raises(Unavailable):
        await repo.manifests.put(INDEX, OCI_INDEX, "latest", None)
    digest = Digest.of(INDEX)
    with pytest.raises(PathNotFoundError):
        await driver.stat(layout.revision_link("lib/app", digest))
    with pytest.raises(ManifestUnknown):
        await repo.tags.resolve("latest")
    with pytest.raises(PathNotFoundError):
        await driver.list(layout.tags("lib/app"))


async def test_a_push_survives_a_crash_that_loses_what_was_not_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dockyard.storage import journal

    monkeypatch.setattr(journal, "SETTLE_AFTER", 3600.0)
    driver = FilesystemDriver(str(tmp_path))
    await Registry(driver).repository("lib/app").manifests.put(INDEX, OCI_INDEX, "latest", None)
    digest = Digest.of(INDEX)
    # The machine crashes before the journal is settled, and the files the push renamed
    # into place never reached the disk.
    for path in (layout.blob_data(digest), layout.revision_link("lib/app", digest)):
        os.unlink(tmp_path / path.lstrip("/"))
    shutil.rmtree(tmp_path / layout.tags("lib/app").lstrip("/"))
    repo = Registry(FilesystemDriver(str(tmp_path))).repository("lib/app")
    assert await repo.tags.resolve("latest") == digest
    assert (await repo.manifests.get(digest)).data == INDEX


class DurableWrites(DelegatingDriver):
    """Records the files written durably one by one, each a wait for the disk."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.durable: list[str] = []

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        if durable:
            self.durable.append(path)
        await self.inner.write(path, data, durable)


async def test_a_manifest_delete_marks_released_links_without_a_durable_write(
    driver: StorageDriver,
) -> None:
    # The markers are hints for garbage collection; each written durably was two
    # fsyncs, most of what a DELETE waited for.
    recorder = DurableWrites(driver)
    repo = Registry(recorder).repository("lib/app")
    child = Digest.of(INDEX)
    await repo.manifests.put(INDEX, OCI_INDEX, None, None)
    parent = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_INDEX, "digest": str(child), "size": len(INDEX)}],
        }
    ).encode()
    await repo.manifests.put(parent, OCI_INDEX, "latest", None)
    recorder.durable = []
    await repo.manifests.delete(Digest.of(parent))
    assert recorder.durable == []
    await driver.stat(layout.released_marker(layout.revision_link("lib/app", child)))
    with pytest.raises(ManifestUnknown):
        await repo.tags.resolve("latest")


async def test_moving_a_tag_removes_its_stale_reverse_entry_in_the_same_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dockyard.storage import journal

    monkeypatch.setattr(journal, "SETTLE_AFTER", 3600.0)
    driver = FilesystemDriver(str(tmp_path))
    repo = Registry(driver).repository("lib/app")
    other = json.dumps({**json.loads(INDEX), "annotations": {"v": "2"}}).encode()
    await repo.manifests.put(INDEX, OCI_INDEX, "latest", None)
    await repo.manifests.put(other, OCI_INDEX, "latest", None)
    with pytest.raises(PathNotFoundError):
        await driver.stat(layout.tag_entry("lib/app", Digest.of(INDEX), "latest"))
    await driver.stat(layout.tag_entry("lib/app", Digest.of(other), "latest"))
    # Both pushes made durable by their records alone: nothing settled the journal.
    records = journal.decode((tmp_path / journal.JOURNAL_PATH).read_bytes())
    assert len(records) == 2
    stale = layout.tag_entry("lib/app", Digest.of(INDEX), "latest").lstrip("/")
    assert (stale, None) in records[1]
    assert await repo.tags.pointing_at(Digest.of(INDEX)) == []


def _inodes(root: Path) -> dict[str, int]:
    """Every file and directory under ``root`` (but the journal) by path: its inode."""
    found = {}
    for base, directories, files in os.walk(root):
        for name in [*directories, *files]:
            path = os.path.join(base, name)
            if name != "publish~journal":
                found[path] = os.lstat(path).st_ino
    return found


async def test_a_push_by_tag_indexes_the_tag_in_the_revision_links_inode(
    tmp_path: Path,
) -> None:
    driver = FilesystemDriver(str(tmp_path))
    repo = Registry(driver).repository("lib/app")
    await repo.manifests.put(INDEX, OCI_INDEX, "base", None)
    before = _inodes(tmp_path)
    other = json.dumps({**json.loads(INDEX), "annotations": {"v": "2"}}).encode()
    await repo.manifests.put(other, OCI_INDEX, "latest", None)
    digest = Digest.of(other)
    entry = tmp_path / layout.tag_entry("lib/app", digest, "latest").lstrip("/")
    index = tmp_path / layout.tag_index_link("lib/app", "latest", digest).lstrip("/")
    revision = tmp_path / layout.revision_link("lib/app", digest).lstrip("/")
    assert entry.stat().st_ino == index.stat().st_ino == revision.stat().st_ino
    assert entry.read_bytes() == index.read_bytes() == str(digest).encode()
    current = tmp_path / layout.tag_current_link("lib/app", "latest").lstrip("/")
    # The current link changes when the tag moves: never shared.
    assert current.stat().st_nlink == 1
    after = _inodes(tmp_path)
    new = {path: inode for path, inode in after.items() if path not in before}
    # Distribution's files and directories for the push, and the entry beside them; the
    # index link and the entry are the revision link's inode.
    assert len(new) == len(set(new.values())) + 2
    assert await repo.tags.pointing_at(digest) == ["latest"]
