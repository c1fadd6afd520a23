"""A collection's scan spread over helper processes plans exactly what one process does."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from dockyard.registry import Registry, RegistryOptions, scan_helpers
from dockyard.registry.digest import Digest
from dockyard.registry.gc import (
    REPOSITORIES_PER_BATCH,
    GarbageCollector,
    GcOptions,
    GcPlan,
    GcReport,
    RepositoryScan,
)
from dockyard.registry.manifests import OCI_MANIFEST
from dockyard.registry.scan_helpers import ScanHelpers, StorageSpec
from dockyard.registry.trash import DirectRemoval
from dockyard.storage import FilesystemDriver
from tests.support.gc_store import dockyard_cli, dockyard_gc

REPOSITORIES = 2 * REPOSITORIES_PER_BATCH + 5


class CountingHelpers(ScanHelpers):
    """Real helpers that also count the work handed to them."""

    def __init__(self, spec: StorageSpec, processes: int) -> None:
        super().__init__(spec, processes)
        self.repositories = 0
        self.prefixes = 0
        self.deleted = 0

    async def scan(self, names: list[str], young_after: float) -> list[RepositoryScan]:
        self.repositories += len(names)
        return await super().scan(names, young_after)

    async def unmarked_blobs(
        self, prefixes: list[tuple[str, str]], marked: set[Digest], held: float
    ) -> list[dict[Digest, int]]:
        self.prefixes += len(prefixes)
        return await super().unmarked_blobs(prefixes, marked, held)

    async def delete_each(self, paths: list[str]) -> list[bool]:
        self.deleted += len(paths)
        return await super().delete_each(paths)


def image(config: Digest, layers: list[Digest], number: int) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(config),
                "size": 10,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": str(layer),
                    "size": 10,
                }
                for layer in layers
            ],
            "annotations": {"n": str(number)},
        }
    ).encode()


async def fill(root: Path) -> None:
    """Repositories of two images each, one tagged and one not; blobs of either, and
    blobs nobody references, spread over many digest prefixes."""
    registry = Registry(FilesystemDriver(str(root)), RegistryOptions(delete_enabled=True))
    shared = await registry.blobs.put(b"shared base layer")
    for r in range(REPOSITORIES):
        repo = registry.repository(f"team-{r % 3}/app-{r}")
        for number in range(2):
            config = await registry.blobs.put(f"config {r} {number}".encode())
            own = await registry.blobs.put(f"layer {r} {number}".encode())
            for digest in (shared, config, own):
                await repo.blobs.link(digest)
            tag = "latest" if number == 0 else None
            await repo.manifests.put(image(config, [shared, own], number), OCI_MANIFEST, tag, None)
        await registry.blobs.put(f"orphan {r}".encode())
    await registry.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for every test here: they only read it."""
    root = tmp_path_factory.mktemp("scanned") / "data"
    asyncio.run(fill(root))
    # Older than the hold limit of a collection settling 1 s (0.4 s) at its start.
    time.sleep(0.5)
    return root


async def plan_of(root: Path, helpers: ScanHelpers | None) -> GcPlan:
    driver = FilesystemDriver(str(root))
    try:
        options = GcOptions(delete_untagged=True, delay=0, settle=1)
        return await GarbageCollector(driver, options, alone=True, helpers=helpers).plan()
    finally:
        await driver.close()


def test_helpers_plan_what_one_process_plans(store: Path) -> None:
    spec = StorageSpec("filesystem", {"rootdirectory": str(store)})
    with CountingHelpers(spec, 2) as helpers:
        helpers.start()
        spread = asyncio.run(plan_of(store, helpers))
    alone = asyncio.run(plan_of(store, None))

    # The helpers did part of the work, and the plan is the same, in the same order.
    assert 0 < helpers.repositories < REPOSITORIES
    assert 0 < helpers.prefixes
    assert len(spread.scans) == REPOSITORIES
    assert spread.scans == alone.scans
    assert spread.marked == alone.marked
    assert list(spread.blobs.items()) == list(alone.blobs.items())
    assert spread.manifests == alone.manifests
    assert spread.layer_links == alone.layer_links
    assert len(spread.manifests) == REPOSITORIES
    # Each repository's untagged image goes (manifest, config, own layer), and its orphan.
    assert len(spread.blobs) == 4 * REPOSITORIES


def test_a_helper_fails_with_its_own_error(store: Path) -> None:
    # The helper cannot open this store; its error reaches the collection as it is.
    spec = StorageSpec("filesystem", {"rootdirectory": 5})
    with ScanHelpers(spec, 1) as helpers:
        helpers.start()
        with pytest.raises(ValueError, match="rootdirectory must be a path"):
            asyncio.run(plan_of(store, helpers))


def _helpers_driver() -> tuple[int, int]:
    """Run in a helper: its process and the driver its batches use."""
    import os

    collector = scan_helpers._HELPER_STORE._collector
    assert collector is not None
    return os.getpid(), id(collector.driver)


def test_a_helper_keeps_its_store_from_one_batch_to_the_next(tmp_path: Path) -> None:
    root = tmp_path / "data"
    spec = StorageSpec("filesystem", {"rootdirectory": str(root)})

    async def batches(helpers: ScanHelpers) -> list[tuple[int, int]]:
        driver = FilesystemDriver(str(root))
        try:
            for number in range(3):
                await driver.write(f"/blobs/{number}/data", b"x")
        finally:
            await driver.close()
        seen = []
        loop = asyncio.get_running_loop()
        for number in range(3):
            assert await helpers.delete_each([f"/blobs/{number}"]) == [True]
            # The pool's own executor: the question is asked in the helper itself.
            seen.append(await loop.run_in_executor(helpers._pool, _helpers_driver))
        return seen

    with ScanHelpers(spec, 1) as helpers:
        helpers.start()
        seen = asyncio.run(batches(helpers))
    assert len(set(seen)) == 1
    assert not (root / "blobs/0").exists() and not (root / "blobs/2").exists()


def test_a_store_in_memory_has_no_helpers() -> None:
    with pytest.raises(ValueError, match="cannot be opened by another process"):
        ScanHelpers(StorageSpec("inmemory"), 1)
    with pytest.raises(ValueError, match="at least one process"):
        ScanHelpers(StorageSpec("filesystem", {"rootdirectory": "/tmp"}), 0)


def test_the_command_line_collects_the_same_with_any_number_of_scan_processes(
    store: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(store)}},
                "http": {"addr": "127.0.0.1:0"},
            }
        )
    )
    options = ("--dry-run", "--delete-untagged", "--delay", "0", "--settle", "1")
    one = dockyard_gc(config, *options, "--scan-processes", "1")
    three = dockyard_gc(config, *options, "--scan-processes", "3")
    assert one.stdout == three.stdout
    assert len(one.eligible_blobs) == 4 * REPOSITORIES
    assert len(one.eligible_manifests) == REPOSITORIES

    refused = dockyard_cli("garbage-collect", str(config), "--scan-processes", "0")
    assert refused.returncode == 2
    assert "--scan-processes" in refused.stderr


def test_a_blob_listed_below_another_prefix_is_not_a_candidate(store: Path, tmp_path: Path) -> None:
    # A helper is sent only the marked blobs of its own prefixes, so a directory of a
    # kept blob under a stray prefix (``a/`` beside ``ab/``) must not be taken for it.
    root = tmp_path / "data"
    shutil.copytree(store, root, copy_function=shutil.copy2)
    shared = Digest.of(b"shared base layer")
    stray = root / "docker/registry/v2/blobs/sha256" / shared.hex[:1] / shared.hex
    stray.mkdir(parents=True)
    (stray / "data").write_bytes(b"shared base layer")
    time.sleep(0.05)

    async def unmarked_in_stray_prefix() -> dict[Digest, int]:
        driver = FilesystemDriver(str(root))
        try:
            collector = GarbageCollector(driver, GcOptions(delay=0, settle=1))
            return await collector.unmarked_blobs("sha256", shared.hex[:1], set(), time.time())
        finally:
            await driver.close()

    assert asyncio.run(unmarked_in_stray_prefix()) == {}
    spec = StorageSpec("filesystem", {"rootdirectory": str(root)})
    with ScanHelpers(spec, 2) as helpers:
        helpers.start()
        plan = asyncio.run(plan_of(root, helpers))
    assert shared in plan.marked
    assert shared not in plan.blobs


def files_below(root: Path) -> list[str]:
    """Every file and directory in the store, outside the collection's own records."""
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*") if "_dockyard" not in path.parts
    )


async def collect_alone(root: Path, helpers: ScanHelpers | None) -> GcReport:
    driver = FilesystemDriver(str(root))
    try:
        options = GcOptions(delete_untagged=True, delay=0, settle=1)
        return await GarbageCollector(driver, options, alone=True, helpers=helpers).run()
    finally:
        await driver.close()


def test_helpers_remove_what_one_process_removes(store: Path, tmp_path: Path) -> None:
    spread_root, alone_root = tmp_path / "spread", tmp_path / "alone"
    for root in (spread_root, alone_root):
        shutil.copytree(store, root, copy_function=shutil.copy2)
    spec = StorageSpec("filesystem", {"rootdirectory": str(spread_root)})
    with CountingHelpers(spec, 1) as helpers:
        helpers.start()
        spread = asyncio.run(collect_alone(spread_root, helpers))
    alone = asyncio.run(collect_alone(alone_root, None))

    # Each repository's untagged image (manifest, config, own layer) and its orphan.
    assert len(alone.blobs_deleted) == 4 * REPOSITORIES
    # The helper removed part of it, and what is left is the same, file for file.
    removed = len(spread.blobs_deleted) + spread.layer_links_deleted
    assert 0 < helpers.deleted < removed
    assert sorted(spread.blobs_deleted, key=str) == sorted(alone.blobs_deleted, key=str)
    assert sorted(spread.manifests_deleted) == sorted(alone.manifests_deleted)
    assert spread.layer_links_deleted == alone.layer_links_deleted > 0
    assert spread.bytes_freed == alone.bytes_freed
    assert files_below(spread_root) == files_below(alone_root)
    for digest in spread.blobs_deleted:
        assert not (
            spread_root / "docker/registry/v2/blobs/sha256" / digest.hex[:2] / digest.hex
        ).exists()


def test_a_helper_that_cannot_remove_fails_the_removal(tmp_path: Path) -> None:
    root = tmp_path / "data"
    paths = [f"/blobs/{number:03d}" for number in range(8 * DirectRemoval.BATCH)]

    async def remove() -> None:
        driver = FilesystemDriver(str(root))
        try:
            for path in paths:
                await driver.write(f"{path}/data", b"x")
            await DirectRemoval(driver, helpers).remove(paths)
        finally:
            await driver.close()

    # The helper cannot open the store: the removal fails with its error, and what it
    # was sent is still there.
    with ScanHelpers(StorageSpec("filesystem", {"rootdirectory": 5}), 1) as helpers:
        helpers.start()
        with pytest.raises(ValueError, match="rootdirectory must be a path"):
            asyncio.run(remove())
    left = [path for path in paths if (root / path.lstrip("/") / "data").exists()]
    assert left
