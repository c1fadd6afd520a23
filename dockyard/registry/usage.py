"""Storage usage per repository and for the store: what ``du`` could not tell.

Built on the garbage collector's read-only plan, so "reclaimable" is exactly what a
collection run now would free. Manifest references and blob sizes never change under a
digest, so a :class:`ScanCache` kept by the caller makes repeated reports cost a walk of
the links plus a stat per new blob.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dockyard.registry import layout
from dockyard.registry.digest import Digest
from dockyard.registry.gc import RELEASED, GarbageCollector, GcOptions, ScanCache
from dockyard.storage.driver import PathNotFoundError, StorageDriver


@dataclass(slots=True)
class RepositoryUsage:
    name: str
    manifests: int
    tags: int
    referenced_bytes: int
    shared_bytes: int
    reclaimable_bytes: int
    last_push: float | None


@dataclass(slots=True)
class StoreUsage:
    total_bytes: int
    blob_count: int
    referenced_bytes: int
    reclaimable_bytes: int
    repositories: list[RepositoryUsage] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def _size(driver: StorageDriver, cache: ScanCache, digest: Digest) -> int:
    size = cache.sizes.get(digest)
    if size is None:
        try:
            size = (await driver.stat(layout.blob_data(digest))).size
        except PathNotFoundError:
            return 0
        cache.sizes[digest] = size
    return size


async def compute_usage(
    driver: StorageDriver, options: GcOptions, cache: ScanCache | None = None
) -> StoreUsage:
    cache = cache or ScanCache()
    collector = GarbageCollector(
        driver,
        GcOptions(
            dry_run=True,
            delete_untagged=options.delete_untagged,
            delay=options.delay,
            settle=options.settle,
        ),
        cache=cache,
    )
    plan = await collector.plan()
    referenced: dict[str, set[Digest]] = {}
    users: dict[Digest, int] = {}
    for scan in plan.scans:
        digests: set[Digest] = set()
        for digest, info in scan.manifests.items():
            digests.add(digest)
            digests.update(info.blobs)
        referenced[scan.name] = digests
        for digest in digests:
            users[digest] = users.get(digest, 0) + 1

    all_blobs = await collector.all_blobs()
    sizes = {digest: await _size(driver, cache, digest) for digest in all_blobs}
    usage = StoreUsage(
        total_bytes=sum(sizes.values()),
        blob_count=len(sizes),
        referenced_bytes=sum(sizes.get(d, 0) for d in plan.marked),
        reclaimable_bytes=sum(plan.blobs.values()),
    )
    for scan in plan.scans:
        if not scan.listed:
            continue  # left-over links or uploads of a removed repository
        digests = referenced[scan.name]
        reclaimable = {d for d in plan.blobs if d in digests or d in scan.layers}
        usage.repositories.append(
            RepositoryUsage(
                name=scan.name,
                manifests=len(scan.manifests),
                tags=len(scan.tags),
                referenced_bytes=sum(sizes.get(d, 0) for d in digests),
                shared_bytes=sum(sizes.get(d, 0) for d in digests if users[d] > 1),
                reclaimable_bytes=sum(plan.blobs[d] for d in reclaimable),
                last_push=max(
                    (i.mtime for i in scan.manifests.values() if i.mtime > RELEASED),
                    default=None,
                ),
            )
        )
    return usage
