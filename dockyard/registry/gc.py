"""Garbage collection that is safe while the registry serves pushes and pulls.

Mark: every repository's manifests that are kept (all of them, or with
``delete_untagged`` those reachable from a tag), their index children, the manifests
whose ``subject`` is kept, and everything written or held recently, are marked with the
blobs they reference. Sweep: what is left is removed in three steps.

1. Set aside: each candidate (blob directory, or a link's directory) is moved into a trash
   directory by ``move_unless_touched``, which refuses it if any hold touched it since
   ``start - hold_limit``, in one step with the holds.
2. Settle: each candidate stays set aside ``settle`` seconds (``trash``: the trash is
   deleted in batches, the first while later candidates are still being set aside).
3. Remove repositories left without any manifest (``rmdir`` only).

Why nothing a kept manifest reaches is lost: every push that references existing
content *holds* it first (touches it, learning in the same step that it is still in
place) and commits at most ``hold_limit`` seconds later. A manifest committed before
the mark is marked; one committed after it held what it references after
``start - hold_limit``, so the set-aside refuses those; a hold after the set-aside
fails and the push is refused. Nothing sets a modification time back: a DELETE writes a
release marker beside each link it no longer needs, and a link whose marker is newer
than itself is exempt from ``delay``. docs/garbage-collection.md has the whole argument.

``delay`` protects pushes in flight: a repository's layer link or manifest revision
written or held less than ``delay`` ago keeps its content, so layers pushed for a
manifest that has not arrived yet survive. A manifest pushed more than ``delay`` after
its layers, with a collection in between, is refused (``MANIFEST_BLOB_UNKNOWN``, and
the client pushes the layers again): never left dangling.

A collection run ``alone`` (the command line found no server or other writer holding
the store, ``store_use``, and keeps them out until it ends) skips steps 1 and 2: with
nobody to hold a candidate, each is deleted in place, as Distribution's offline
collection does. Marking and ``delay`` are the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from dockyard.coordination.descriptors import DescriptorCache, NoDescriptorCache
from dockyard.registry import layout
from dockyard.registry.digest import SUPPORTED_ALGORITHMS, Digest
from dockyard.registry.links import delete_if_exists, read_link
from dockyard.registry.trash import DirectRemoval, Trash
from dockyard.storage.driver import PathNotFoundError, StorageDriver

log = logging.getLogger("dockyard.gc")

# The modification time a collection gives a link released by a DELETE since its last hold.
RELEASED = 0.0


@dataclass(frozen=True, slots=True)
class GcOptions:
    dry_run: bool = False
    delete_untagged: bool = False
    # Content younger than this is kept whatever references it (zot calls it gcDelay).
    delay: float = 3600.0
    # Must exceed twice the registry's hold_limit; see the module docstring.
    settle: float = 10.0

    @property
    def hold_limit(self) -> float:
        return hold_limit_for(self.settle)


def hold_limit_for(settle: float) -> float:
    """The registry's hold limit that a collection settling for ``settle`` seconds allows."""
    return settle * 0.4


@dataclass(slots=True)
class ManifestInfo:
    digest: Digest
    mtime: float
    blobs: list[Digest] = field(default_factory=list)
    children: list[Digest] = field(default_factory=list)
    subject: Digest | None = None


@dataclass(slots=True)
class RepositoryScan:
    name: str
    manifests: dict[Digest, ManifestInfo] = field(default_factory=dict)
    tags: dict[str, Digest] = field(default_factory=dict)
    tag_history: dict[str, list[Digest]] = field(default_factory=dict)
    layers: dict[Digest, float] = field(default_factory=dict)
    has_uploads: bool = False
    # Listed in the catalog: a repository is one while it has ``_manifests``.
    listed: bool = True


@dataclass(slots=True)
class GcPlan:
    """The outcome of the mark phase: what is kept and what would go."""

    started_at: float
    held: float
    scans: list[RepositoryScan] = field(default_factory=list)
    kept: dict[str, set[Digest]] = field(default_factory=dict)
    marked: set[Digest] = field(default_factory=set)
    manifests: list[tuple[str, Digest, Digest | None]] = field(default_factory=list)
    tag_history: list[tuple[str, str, Digest]] = field(default_factory=list)
    blobs: dict[Digest, int] = field(default_factory=dict)
    layer_links: list[tuple[str, Digest]] = field(default_factory=list)
    repositories: list[str] = field(default_factory=list)


@dataclass(slots=True)
class GcReport:
    repositories: int = 0
    manifests_marked: int = 0
    blobs_marked: int = 0
    blobs_deleted: list[Digest] = field(default_factory=list)
    manifests_deleted: list[tuple[str, Digest]] = field(default_factory=list)
    layer_links_deleted: int = 0
    repositories_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    duration: float = 0.0

    def summary(self, dry_run: bool) -> str:
        verb = "eligible for deletion" if dry_run else "deleted"
        return (
            f"{self.blobs_marked} blobs marked, {len(self.blobs_deleted)} blobs and "
            f"{len(self.manifests_deleted)} manifests {verb}, "
            f"{len(self.repositories_removed)} empty repositories {'to remove' if dry_run else 'removed'}, "
            f"{self.bytes_freed} bytes {'to free' if dry_run else 'freed'}"
        )

    def to_json(self, dry_run: bool) -> dict[str, Any]:
        """The report as the API, the UI and the record of the last run show it."""
        return {
            "dryRun": dry_run,
            "repositories": self.repositories,
            "manifestsMarked": self.manifests_marked,
            "blobsMarked": self.blobs_marked,
            "blobsDeleted": [str(d) for d in self.blobs_deleted],
            "manifestsDeleted": [
                {"repository": n, "digest": str(d)} for n, d in self.manifests_deleted
            ],
            "layerLinksDeleted": self.layer_links_deleted,
            "repositoriesRemoved": self.repositories_removed,
            "bytesFreed": self.bytes_freed,
            "seconds": round(self.duration, 3),
            "summary": self.summary(dry_run),
        }


References = tuple[list[Digest], list[Digest], Digest | None]


class StoreScanner(Protocol):
    """Scans elsewhere (``scan_helpers``): in other processes, on other cores."""

    processes: int

    async def scan(self, names: list[str], young_after: float) -> list[RepositoryScan]:
        """:meth:`GarbageCollector.scan_repository` of each name, in order."""

    async def unmarked_blobs(
        self, prefixes: list[tuple[str, str]], marked: set[Digest], held: float
    ) -> list[dict[Digest, int]]:
        """:meth:`GarbageCollector.unmarked_blobs` of each (algorithm, prefix), in order."""

    async def delete_each(self, paths: list[str]) -> list[bool]:
        """``StorageDriver.delete_each``, for a collection that has the store alone."""


# Work handed to a helper at a time: little enough that it spreads evenly, enough that
# each hand-off's cost (pickling, an event loop per batch) stays small.
REPOSITORIES_PER_BATCH = 24
PREFIXES_PER_BATCH = 8

_Item = TypeVar("_Item")


def references_of(data: bytes) -> References:
    """Blobs, child manifests and subject a stored manifest names, whatever its schema.

    Lenient on purpose: a store written by another registry may hold manifests this
    registry would not accept today (schema1), and their blobs must still be marked.
    """
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return [], [], None
    if not isinstance(body, dict):
        return [], [], None

    def digests(items: Any, key: str = "digest") -> list[Digest]:
        found = []
        for item in items if isinstance(items, list) else []:
            text = item.get(key) if isinstance(item, dict) else None
            if isinstance(text, str) and Digest.is_valid(text):
                found.append(Digest.parse(text))
        return found

    blobs = digests([body.get("config")]) + digests(body.get("layers"))
    blobs += digests(body.get("fsLayers"), "blobSum")
    children = digests(body.get("manifests"))
    subject = digests([body.get("subject")])
    return blobs, children, subject[0] if subject else None


@dataclass(slots=True)
class ScanCache:
    """What never changes under a digest, kept between scans (usage pages rescan often)."""

    references: dict[Digest, References] = field(default_factory=dict)
    sizes: dict[Digest, int] = field(default_factory=dict)
    capacity: int = 200_000

    def remember_references(self, digest: Digest, references: References) -> None:
        if len(self.references) >= self.capacity:
            self.references.clear()
        self.references[digest] = references


class GarbageCollector:
    def __init__(
        self,
        driver: StorageDriver,
        options: GcOptions,
        emit: Callable[[Sequence[str]], None] | None = None,
        cache: ScanCache | None = None,
        descriptors: DescriptorCache | None = None,
        alone: bool = False,
        helpers: StoreScanner | None = None,
    ) -> None:
        self.driver = driver
        self.helpers = helpers
        self.options = options
        # No other process uses the store (``store_use``): candidates need no grace period.
        self.alone = alone
        # Lines for the operator, handed over a burst at a time: tens of thousands of
        # them, which a line each would write one by one to an unbuffered stdout.
        self.emit = emit or (lambda lines: None)
        self.cache = cache or ScanCache()
        # What the registry's descriptor cache says of removed content is forgotten.
        self.descriptors = descriptors or NoDescriptorCache()

    # --- scanning -------------------------------------------------------------------

    async def _children(self, path: str) -> list[str]:
        try:
            return await self.driver.list(path)
        except PathNotFoundError:
            return []

    async def _mtime(self, path: str) -> float | None:
        try:
            return (await self.driver.stat(path)).mtime
        except PathNotFoundError:
            return None

    async def repository_names(self) -> list[str]:
        """Every directory below ``repositories/`` that holds repository data."""
        return [name async for name in self.repositories()]

    async def repositories(
        self, path: str = layout.REPOSITORIES, name: str = ""
    ) -> AsyncIterator[str]:
        """:meth:`repository_names` as each is found: a repository looked at right away
        is found quicker (see the filesystem driver's plain directories)."""
        children = await self._children(path)
        if any(child in ("_manifests", "_layers", "_uploads") for child in children):
            yield name
        for child in children:
            if not child.startswith("_"):
                child_path = f"{path}/{child}"
                try:
                    is_dir = (await self.driver.stat(child_path)).is_dir
                except PathNotFoundError:
                    continue
                if is_dir:
                    async for found in self.repositories(
                        child_path, f"{name}/{child}" if name else child
                    ):
                        yield found

    async def _digests_under(self, path: str) -> list[Digest]:
        found = []
        for algorithm in await self._children(path):
            if algorithm not in SUPPORTED_ALGORITHMS:
                continue
            for encoded in await self._children(f"{path}/{algorithm}"):
                digest = Digest.listed(algorithm, encoded)
                if digest is not None:
                    found.append(digest)
        return found

    async def _references(self, digest: Digest) -> References:
        references = self.cache.references.get(digest)
        if references is None:
            try:
                data = await self.driver.read(layout.blob_data(digest))
            except PathNotFoundError:
                data = b""
            references = references_of(data)
            if data:
                self.cache.remember_references(digest, references)
        return references

    async def _link_mtime(self, link: str, young_after: float) -> float | None:
        """When the link was last written or held; RELEASED if a DELETE released it since."""
        mtime = await self._mtime(link)
        if mtime is None or mtime < young_after:
            return mtime  # old already: whether it was released does not matter
        released = await self._mtime(layout.released_marker(link))
        return RELEASED if released is not None and released >= mtime else mtime

    async def scan_repository(self, name: str, young_after: float = 0.0) -> RepositoryScan:
        """What the repository holds; links younger than ``young_after`` checked for release."""
        scan = RepositoryScan(name)
        for digest in await self._digests_under(layout.revisions(name)):
            mtime = await self._link_mtime(layout.revision_link(name, digest), young_after)
            if mtime is None:
                continue
            info = ManifestInfo(digest, mtime)
            info.blobs, info.children, info.subject = await self._references(digest)
            scan.manifests[digest] = info
        for tag in await self._children(layout.tags(name)):
            current = await read_link(self.driver, layout.tag_current_link(name, tag))
            if current is not None:
                scan.tags[tag] = current
            scan.tag_history[tag] = await self._digests_under(f"{layout.tag_dir(name, tag)}/index")
        for digest in await self._digests_under(layout.layers(name)):
            mtime = await self._link_mtime(layout.layer_link(name, digest), young_after)
            if mtime is not None:
                scan.layers[digest] = mtime
        scan.has_uploads = bool(await self._children(layout.uploads(name)))
        scan.listed = await self._mtime(layout.manifests(name)) is not None
        return scan

    async def scan_repositories(self, young_after: float) -> list[RepositoryScan]:
        """Every repository scanned, in the order found; by helpers too, if any."""
        scans: dict[str, RepositoryScan] = {}

        async def here(name: str) -> None:
            scans[name] = await self.scan_repository(name, young_after)

        async def elsewhere(helpers: StoreScanner, names: list[str]) -> None:
            for scan in await helpers.scan(names, young_after):
                scans[scan.name] = scan

        found = await self._spread(self.repositories(), here, elsewhere, REPOSITORIES_PER_BATCH)
        return [scans[name] for name in found]

    async def unmarked_blobs(
        self, algorithm: str, prefix: str, marked: set[Digest], held: float
    ) -> dict[Digest, int]:
        """The blobs of one digest prefix that are not ``marked`` and were not touched
        since ``held``, with their sizes: what a collection would remove of them."""
        found: dict[Digest, int] = {}
        for digest in await self._blobs_in(algorithm, prefix):
            if digest in marked:
                continue
            try:
                blob = await self.driver.stat(layout.blob_data(digest))
            except PathNotFoundError:
                continue
            if blob.mtime < held:
                found[digest] = blob.size
        return found

    async def _unmarked_blobs_everywhere(
        self, marked: set[Digest], held: float
    ) -> dict[Digest, int]:
        """:meth:`unmarked_blobs` of every prefix, in the order listed; by helpers too."""
        by_prefix: dict[tuple[str, str], dict[Digest, int]] = {}
        # A helper is sent the marked blobs of its own prefixes only.
        marked_by_prefix: dict[tuple[str, str], set[Digest]] = {}
        for digest in marked:
            where = (digest.algorithm, layout.blob_prefix(digest))
            marked_by_prefix.setdefault(where, set()).add(digest)

        async def here(where: tuple[str, str]) -> None:
            by_prefix[where] = await self.unmarked_blobs(*where, marked, held)

        async def elsewhere(helpers: StoreScanner, batch: list[tuple[str, str]]) -> None:
            marked_there = set().union(*(marked_by_prefix.get(where, ()) for where in batch))
            found = await helpers.unmarked_blobs(batch, marked_there, held)
            for where, blobs in zip(batch, found, strict=True):
                by_prefix[where] = blobs

        listed = await self._spread(self.blob_prefixes(), here, elsewhere, PREFIXES_PER_BATCH)
        return {digest: size for where in listed for digest, size in by_prefix[where].items()}

    async def _spread(
        self,
        items: AsyncIterator[_Item],
        here: Callable[[_Item], Awaitable[None]],
        elsewhere: Callable[[StoreScanner, list[_Item]], Awaitable[None]],
        per_batch: int,
    ) -> list[_Item]:
        """Each item to ``here``, or in batches to the helpers if there are any; the
        items in the order they came."""
        if self.helpers is None:
            listed = []
            async for item in items:
                listed.append(item)
                await here(item)
            return listed
        helpers = self.helpers
        listed = []
        # Two batches per helper: one to work on while the other's result travels back,
        # which waits for this process's event loop to take it.
        helper_lanes = 2 * helpers.processes
        lanes = 1 + helper_lanes
        # Bounded, so that listing stays just ahead of the work: what is looked at soon
        # after it was listed finds its directories known (the filesystem driver's plain
        # directories, a bounded memory).
        batches: asyncio.Queue[list[_Item] | None] = asyncio.Queue(maxsize=lanes)

        async def deal() -> None:
            batch: list[_Item] = []
            async for item in items:
                listed.append(item)
                batch.append(item)
                if len(batch) == per_batch:
                    await batches.put(batch)
                    batch = []
            if batch:
                await batches.put(batch)
            for _ in range(lanes):
                await batches.put(None)

        async def work_here() -> None:
            while (batch := await batches.get()) is not None:
                for item in batch:
                    await here(item)
                    # Work here seldom waits for anything: without a turn of the event
                    # loop now and then, helpers' results would wait to be taken, and
                    # this lane would take every batch before a helper woken for one ran.
                    await asyncio.sleep(0)

        async def work_in_helper() -> None:
            while (batch := await batches.get()) is not None:
                await elsewhere(helpers, batch)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(deal())
                group.create_task(work_here())
                for _ in range(helper_lanes):
                    group.create_task(work_in_helper())
        except ExceptionGroup as failed:
            # The first failure, as the work in one lane raised it (a StorageError, say).
            raise failed.exceptions[0] from None
        return listed

    # --- marking --------------------------------------------------------------------

    def kept_manifests(self, scan: RepositoryScan, cutoff: float) -> set[Digest]:
        manifests = scan.manifests
        roots = {d for d in scan.tags.values() if d in manifests}
        roots |= {d for d, info in manifests.items() if info.mtime >= cutoff}
        if not self.options.delete_untagged:
            roots |= {d for d, info in manifests.items() if info.subject is None}
        kept: set[Digest] = set()
        pending = list(roots)
        while pending:
            while pending:
                digest = pending.pop()
                if digest in kept:
                    continue
                kept.add(digest)
                pending.extend(c for c in manifests[digest].children if c in manifests)
            # A referrer lives as long as its subject: a signature or SBOM of a kept image.
            pending = [
                d
                for d, info in manifests.items()
                if d not in kept and info.subject is not None and info.subject in kept
            ]
        return kept

    # --- planning -------------------------------------------------------------------

    async def plan(self) -> GcPlan:
        """What a collection would remove now; reads only."""
        start = time.time()
        # Links and manifests written within ``delay`` belong to pushes that may not be
        # finished; any file touched after ``held`` may be held by a push in flight,
        # unless the store is this collection's alone: then no push can commit.
        held = start if self.alone else start - self.options.hold_limit
        cutoff = min(start - self.options.delay, held)
        plan = GcPlan(started_at=start, held=held)
        plan.scans = await self.scan_repositories(young_after=cutoff)
        for scan in plan.scans:
            kept = self.kept_manifests(scan, cutoff)
            plan.kept[scan.name] = kept
            for digest in kept:
                plan.marked.add(digest)
                plan.marked.update(scan.manifests[digest].blobs)

        for scan in plan.scans:
            kept = plan.kept[scan.name]
            gone = {
                digest
                for digest, info in scan.manifests.items()
                if digest not in kept and info.mtime < cutoff
            }
            for digest in sorted(gone, key=str):
                plan.manifests.append((scan.name, digest, scan.manifests[digest].subject))
            for tag, history in scan.tag_history.items():
                plan.tag_history.extend((scan.name, tag, d) for d in history if d in gone)
            used: set[Digest] = set()
            for digest in kept:
                used.update(scan.manifests[digest].blobs)
            plan.layer_links.extend(
                (scan.name, digest)
                for digest, mtime in sorted(scan.layers.items(), key=lambda item: str(item[0]))
                if digest not in used and mtime < cutoff
            )
            if not kept and not any(i.mtime >= cutoff for i in scan.manifests.values()):
                plan.repositories.append(scan.name)

        # A blob linked recently by any repository may be awaiting its manifest.
        linked_recently = {
            digest
            for scan in plan.scans
            for digest, mtime in scan.layers.items()
            if mtime >= cutoff
        }
        plan.blobs = await self._unmarked_blobs_everywhere(plan.marked | linked_recently, held)
        return plan

    # --- the run --------------------------------------------------------------------

    async def run(self) -> GcReport:
        started = time.monotonic()
        plan = await self.plan()
        report = GcReport(
            repositories=len(plan.scans),
            manifests_marked=sum(len(kept) for kept in plan.kept.values()),
            blobs_marked=len(plan.marked),
        )
        self.emit(
            [f"{name}: manifest eligible for deletion: {d}" for name, d, _ in plan.manifests]
            + [f"blob eligible for deletion: {digest}" for digest in plan.blobs]
        )
        if self.options.dry_run:
            report.manifests_deleted = [(name, digest) for name, digest, _ in plan.manifests]
            report.blobs_deleted = list(plan.blobs)
            report.layer_links_deleted = len(plan.layer_links)
            report.repositories_removed = list(plan.repositories)
        else:
            await self._execute(plan, report)
        report.bytes_freed = sum(plan.blobs[digest] for digest in report.blobs_deleted)
        report.duration = time.monotonic() - started
        return report

    async def _execute(self, plan: GcPlan, report: GcReport) -> None:
        if self.alone:
            await self._remove_in_place(plan, report)
        else:
            await self._remove_through_trash(plan, report)
        # The catalog lists a directory as a repository only while it has ``_manifests``;
        # removed last, once the repository's manifests are gone for good.
        removed: list[str] = []
        for name in plan.repositories:
            # The reverse tag index's completeness marker goes first (its entries went
            # with the manifests): a tag pushed meanwhile finds the index incomplete, and
            # the next manifest DELETE rebuilds it rather than trusting it. The index of
            # earlier versions goes with it.
            await delete_if_exists(self.driver, layout.tags_indexed(name))
            await delete_if_exists(self.driver, layout.former_tag_index(name))
            if await self.driver.remove_empty(layout.manifests(name)):
                removed.append(name)
        report.repositories_removed += removed
        self.emit([f"{name}: repository has no manifests left; removing it" for name in removed])

    async def _remove_in_place(self, plan: GcPlan, report: GcReport) -> None:
        """The sweep of a collection that has the store alone: nothing can hold a
        candidate, so each is deleted where it is, a link with its directory.

        Three rounds, each once the one before has ended, so that a run stopped midway
        leaves no kept manifest without its content: manifests; then the links that
        named them (referrers, tag history); then blobs and layer links.
        """
        removal = DirectRemoval(self.driver, self.helpers)
        await removal.start()
        revisions = [_directory(layout.revision_link(n, d)) for n, d, _ in plan.manifests]
        naming: list[str] = []
        for (name, digest, subject), removed in zip(
            plan.manifests, await removal.remove(revisions), strict=True
        ):
            if removed:
                report.manifests_deleted.append((name, digest))
                if subject is not None:
                    naming.append(_directory(layout.referrer_link(name, subject, digest)))
        naming += [_directory(layout.tag_index_link(*item)) for item in plan.tag_history]
        await removal.remove(naming)

        blobs = list(plan.blobs)
        links = [_directory(layout.layer_link(*item)) for item in plan.layer_links]
        found = await removal.remove([layout.blob_dir(digest) for digest in blobs] + links)
        # The store is this run's alone only without a shared cache (no Redis): each
        # forget is this process's own memory and a byte appended to the host's count
        # of removals, not a request.
        deleted = [d for d, removed in zip(blobs, found[: len(blobs)], strict=True) if removed]
        for digest in deleted:
            await self.descriptors.forget_blob(digest)
        report.blobs_deleted += deleted
        self.emit([f"Deleting blob: {layout.blob_dir(digest)}" for digest in deleted])
        for (name, digest), removed in zip(plan.layer_links, found[len(blobs) :], strict=True):
            if removed:
                await self.descriptors.forget_link(name, digest)
                report.layer_links_deleted += 1

    async def _remove_through_trash(self, plan: GcPlan, report: GcReport) -> None:
        """The sweep beside a serving registry: each candidate set aside unless a push
        held it meanwhile, and deleted once it has settled (``Trash``)."""
        trash = Trash(self.driver, self.options.settle)
        # Links set aside without their directory, which is cleared once all are aside.
        linked_alone: list[str] = []

        async def set_aside(path: str) -> bool:
            return await trash.set_aside(path, plan.held)

        async def set_aside_link(link: str) -> bool:
            # Usually the link is all its directory holds, and the directory goes in one
            # move, leaving nothing to clear. A release marker written since ``held``
            # refuses that, though its time says nothing of whether the link is in use:
            # then the link goes alone.
            if await set_aside(_directory(link)):
                return True
            if await set_aside(link):
                linked_alone.append(link)
                return True
            return False

        async def manifest(name: str, digest: Digest, subject: Digest | None) -> None:
            if await set_aside_link(layout.revision_link(name, digest)):
                report.manifests_deleted.append((name, digest))
                if subject is not None:
                    await set_aside_link(layout.referrer_link(name, subject, digest))

        async def blob(digest: Digest) -> None:
            if await set_aside(layout.blob_dir(digest)):
                await self.descriptors.forget_blob(digest)
                self.emit([f"Deleting blob: {layout.blob_dir(digest)}"])
                report.blobs_deleted.append(digest)

        async def layer_link(name: str, digest: Digest) -> None:
            if await set_aside_link(layout.layer_link(name, digest)):
                await self.descriptors.forget_link(name, digest)
                report.layer_links_deleted += 1

        try:
            await trash.start()
            await self._each(manifest(*item) for item in plan.manifests)
            await self._each(
                set_aside_link(layout.tag_index_link(*item)) for item in plan.tag_history
            )
            await self._each(blob(digest) for digest in plan.blobs)
            await self._each(layer_link(*item) for item in plan.layer_links)
            trash.close()
            # What is left around links set aside alone goes while the trash settles: it
            # is not content, and a link pushed again meanwhile keeps its directory.
            await self._each(self._clear_link_dir(link) for link in linked_alone)
        except BaseException:
            trash.abandon()
            raise
        # Each item is deleted once it has been set aside ``settle`` seconds; nothing is
        # judged again after that grace period.
        await trash.finish()

    @staticmethod
    async def _each(steps: Iterable[Awaitable[Any]], at_once: int = 16) -> None:
        """Run the steps with up to ``at_once`` in flight: each waits on storage."""
        pending: set[asyncio.Future[Any]] = set()
        try:
            for step in steps:
                pending.add(asyncio.ensure_future(step))
                if len(pending) >= at_once:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for finished in done:
                        finished.result()
            await asyncio.gather(*pending)
        finally:
            for unfinished in pending:
                unfinished.cancel()

    async def _clear_link_dir(self, link: str) -> None:
        """Remove what is left around a deleted link: its release marker, empty directories.

        Linked again since: the directory is not empty and stays; its marker may go,
        which only makes the new link wait for ``delay`` like any other.
        """
        directory = _directory(link)
        # Usually the link was all the directory held.
        if await self.driver.remove_empty(directory):
            return
        try:
            await self.driver.delete(layout.released_marker(link))
        except PathNotFoundError:
            return
        await self.driver.remove_empty(directory)

    async def all_blobs(self) -> list[Digest]:
        return [digest async for group in self.blob_groups() for digest in group]

    async def blob_groups(self) -> AsyncIterator[list[Digest]]:
        """The store's blobs, one directory of them (one digest prefix) at a time."""
        async for algorithm, prefix in self.blob_prefixes():
            yield await self._blobs_in(algorithm, prefix)

    async def _blobs_in(self, algorithm: str, prefix: str) -> list[Digest]:
        """The blobs listed in one prefix directory."""
        found = []
        for encoded in await self._children(f"{layout.BLOBS}/{algorithm}/{prefix}"):
            digest = Digest.listed(algorithm, encoded)
            # One listed below another prefix is not where the blob's path leads.
            if digest is not None and layout.blob_prefix(digest) == prefix:
                found.append(digest)
        return found

    async def blob_prefixes(self) -> AsyncIterator[tuple[str, str]]:
        """The directories blobs are kept in, as (algorithm, digest prefix)."""
        for algorithm in await self._children(layout.BLOBS):
            if algorithm in SUPPORTED_ALGORITHMS:
                for prefix in await self._children(f"{layout.BLOBS}/{algorithm}"):
                    yield algorithm, prefix


def _directory(link: str) -> str:
    """The directory a link file is kept in: usually all it holds."""
    return link.rsplit("/", 1)[0]
