"""Tags: ``_manifests/tags/<tag>/current/link`` and the history under ``index/``."""

from __future__ import annotations

import asyncio
import bisect
import builtins
import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from dockyard.coordination.locks import Locks
from dockyard.errors import ManifestUnknown, NameUnknown
from dockyard.registry import layout
from dockyard.registry.deferred import DeferredWork
from dockyard.registry.digest import Digest
from dockyard.registry.links import delete_if_exists, parse_link, read_link
from dockyard.registry.names import TAG_PATTERN, is_valid_tag
from dockyard.storage.driver import PathNotFoundError, StorageDriver


# Reverse-index entries written in one batch when a repository is first indexed: a
# journal record of about 256 KiB each, whose paths the driver resolves without
# letting other requests run (some 20 ms).
INDEX_BATCH = 1024


@dataclass(frozen=True, slots=True)
class TagMove:
    """The files that point a tag at a manifest, and the order they may appear in.

    ``entry`` (the reverse index's candidate, which readers check) at any time;
    ``history`` (the tag's index link) with or after the manifest's revision link; the
    ``current`` link last. A crash between history and current leaves history naming a
    digest the tag never pointed at, which is harmless, rather than a current tag
    missing from its own history. ``stale`` (the reverse index's entry for where the
    tag pointed before) goes in the same batch, after them all. ``copies``: the entry
    holds the history link's bytes, and may be stored as that same file.
    """

    files: dict[str, bytes]
    entry: list[str]
    history: list[str]
    current: str
    stale: list[str]
    copies: dict[str, str]


class TagStore:
    """Tags change under a lock per tag, so that an untag conditional on where the tag
    points (a manifest DELETE) cannot remove a tag a concurrent PUT has just moved."""

    def __init__(
        self,
        name: str,
        driver: StorageDriver,
        locks: Locks,
        deferred: DeferredWork | None = None,
    ) -> None:
        self.name = name
        self.driver = driver
        self.locks = locks
        # Where a first index is finished after answering; without it, before.
        self.deferred = deferred

    def _lock(self, tag: str) -> AbstractAsyncContextManager[None]:
        return self.locks.hold(f"tag:{self.name}:{tag}")

    async def resolve(self, tag: str) -> Digest:
        digest = await read_link(self.driver, layout.tag_current_link(self.name, tag))
        if digest is None:
            raise ManifestUnknown(detail={"tag": tag})
        return digest

    async def tag(self, tag: str, digest: Digest) -> None:
        async with (
            self.moving(tag, digest) as move,
            await self.driver.prepare_writes(
                move.files, replayable=True, removals=move.stale, copies=move.copies
            ) as files,
        ):
            await files.publish_in_order([[*move.entry, *move.history], [move.current]])

    @asynccontextmanager
    async def moving(self, tag: str, digest: Digest) -> AsyncIterator[TagMove]:
        """Under the tag's lock, the files that point ``tag`` at ``digest``, for the caller
        to publish in the order ``TagMove`` gives (with its own files, in one batch)."""
        async with self._lock(tag):
            previous = await read_link(self.driver, layout.tag_current_link(self.name, tag))
            link = str(digest).encode("ascii")
            index = layout.tag_index_link(self.name, tag, digest)
            current = layout.tag_current_link(self.name, tag)
            entry = [layout.tag_entry(self.name, digest, tag)] if previous != digest else []
            files = {**dict.fromkeys(entry, link), index: link, current: link}
            stale = []
            if previous is not None and previous != digest:
                stale.append(layout.tag_entry(self.name, previous, tag))
            yield TagMove(files, entry, [index], current, stale, dict.fromkeys(entry, index))

    async def untag(self, tag: str) -> None:
        async with self._lock(tag):
            previous = await read_link(self.driver, layout.tag_current_link(self.name, tag))
            if not await delete_if_exists(self.driver, layout.tag_dir(self.name, tag)):
                raise ManifestUnknown(detail={"tag": tag})
            if previous is not None:
                await delete_if_exists(self.driver, layout.tag_entry(self.name, previous, tag))

    async def untag_if_at(self, tag: str, digest: Digest) -> bool:
        """Remove the tag if it still points at ``digest``; whether it did."""
        async with self._lock(tag):
            if await read_link(self.driver, layout.tag_current_link(self.name, tag)) != digest:
                return False
            removed = await delete_if_exists(self.driver, layout.tag_dir(self.name, tag))
            await delete_if_exists(self.driver, layout.tag_entry(self.name, digest, tag))
            return removed

    async def list(self) -> builtins.list[str]:
        """Every tag, sorted; a directory that is not a valid tag is not one.

        A repository is known while it has ``_manifests`` (as the catalog lists it), even
        with no tag left; without it the name is unknown.
        """
        # Drivers list names sorted; the filter runs in C, which matters at 10,000 tags.
        return list(filter(TAG_PATTERN.match, await self._names()))

    async def page(
        self, n: int | None, last: str | None
    ) -> tuple[builtins.list[str], bool]:
        """Up to ``n`` tags (all when None) after ``last``, and whether more follow.

        The page starts by bisection and only its own names are checked, so a page of
        100 out of 10,000 tags costs about 100 tags, not 10,000.
        """
        names = await self._names()
        after = itertools.islice(names, bisect.bisect_right(names, last) if last else 0, None)
        if n is None:
            return list(filter(TAG_PATTERN.match, after)), False
        found = list(itertools.islice(filter(TAG_PATTERN.match, after), n + 1))
        return found[:n], len(found) > n

    async def _names(self) -> builtins.list[str]:
        try:
            return await self.driver.list(layout.tags(self.name))
        except PathNotFoundError:
            try:
                await self.driver.stat(layout.manifests(self.name))
            except PathNotFoundError:
                raise NameUnknown(detail={"name": self.name}) from None
            return []

    @asynccontextmanager
    async def untagging_all_at(self, digest: Digest) -> AsyncIterator[builtins.list[str]]:
        """Remove every tag that points at ``digest``; the tags removed, for a manifest
        DELETE to finish its own changes to ``digest``'s revision in the block.

        Where the repository has no index yet, the tags found by reading them all get no
        entries in the index being built (they would only be removed again: writing them
        was most of a first DELETE's cost), unless removing them fails; the rest of the
        index is written once the block is done, so the DELETE goes on alone.
        """
        indexed = self.deferred is not None and await self._indexed()
        if self.deferred is None or indexed:
            tags = await (self._indexed_at(digest) if indexed else self.pointing_at(digest))
            yield [tag for tag in tags if await self.untag_if_at(tag, digest)]
            return
        untagged: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        removed: builtins.list[str] | None = None
        try:
            tags = await self._scan_and_index(digest, untagged)
            removed = [tag for tag in tags if await self.untag_if_at(tag, digest)]
            yield removed
        finally:
            # The build may have stopped waiting (the registry closing).
            if not untagged.done():
                untagged.set_result(removed is not None)

    async def pointing_at(self, digest: Digest) -> builtins.list[str]:
        """The tags that point at ``digest``: from the reverse index, once it is complete.

        Its entries are candidates, each checked against the tag itself, so the cost
        follows the tags of this manifest, not the repository's. A store another
        registry (or an earlier version) wrote has no index yet: the first call reads
        every tag, as Distribution does on every call, and builds it; with ``deferred``
        work, the entries of other manifests' tags after answering. Calls meanwhile
        wait for the index.
        """
        if not await self._indexed():
            return await self._scan_and_index(digest)
        return await self._indexed_at(digest)

    async def _indexed(self) -> bool:
        try:
            await self.driver.stat(layout.tags_indexed(self.name))
        except PathNotFoundError:
            return False
        return True

    async def _indexed_at(self, digest: Digest) -> builtins.list[str]:
        try:
            names = await self.driver.list(layout.revision_dir(self.name, digest))
        except PathNotFoundError:
            return []
        prefix = layout.TAG_ENTRY_PREFIX
        candidates = [name[len(prefix) :] for name in names if name.startswith(prefix)]
        return [
            tag
            for tag in sorted(candidates)
            if is_valid_tag(tag) and await self._points_at(tag, digest)
        ]

    async def _points_at(self, tag: str, digest: Digest) -> bool:
        return await read_link(self.driver, layout.tag_current_link(self.name, tag)) == digest

    async def _scan_and_index(
        self, digest: Digest, untagged: asyncio.Future[bool] | None = None
    ) -> builtins.list[str]:
        """Every tag read and the index built; the tags at ``digest`` are answered once
        read, and the rest of the index is written after answering where there is
        ``deferred`` work to write it in, before answering where there is not.

        ``untagged``: whether the caller removed the tags answered (which then need no
        entries), set once it is done with ``digest``.
        """
        found: asyncio.Future[builtins.list[str]] = asyncio.get_running_loop().create_future()
        build = self._build_index(digest, found, untagged)
        if self.deferred is None:
            await build
        else:
            self.deferred.start(build, f"tag index of {self.name}")
        return await found

    async def _build_index(
        self,
        digest: Digest,
        found: asyncio.Future[builtins.list[str]],
        untagged: asyncio.Future[bool] | None,
    ) -> None:
        try:
            # One build at a time, in every worker: a call that waits here finds the index
            # complete, so no DELETE reads every tag while a build is writing entries
            # (for a manifest that DELETE might remove meanwhile).
            async with self.locks.hold(f"tag-index:{self.name}"):
                if await self._indexed():
                    _answer(found, await self._indexed_at(digest))
                    return
                pointing = await self._current_links()
                tags = sorted(tag for tag, at in pointing.items() if at == digest)
                if untagged is None:
                    # Their entries before the answer: a DELETE of ``digest`` removes them
                    # with its revision next, and nothing written later may land there.
                    await self._index_entries(dict.fromkeys(tags, digest), last=False)
                _answer(found, tags)
                rest = {tag: at for tag, at in pointing.items() if at != digest}
                # Nothing is written while the caller works (alone then, at the cost of a
                # DELETE that found the index).
                if untagged is not None and not await asyncio.shield(untagged):
                    # It failed to remove them, and is done: only now may their entries
                    # land in ``digest``'s revision.
                    rest.update(dict.fromkeys(tags, digest))
                # The caller goes on first (a DELETE has more to do before its answer).
                await asyncio.sleep(0)
                await self._index_entries(rest, last=True)
                await delete_if_exists(self.driver, layout.former_tag_index(self.name))
        except asyncio.CancelledError:
            found.cancel()
            raise
        except BaseException as error:
            if not found.done():
                found.set_exception(error)
            raise

    async def _current_links(self) -> dict[str, Digest]:
        """Where every tag points, as its ``current`` link says."""
        tags = await self.list()
        links = await self.driver.read_each(
            [layout.tag_current_link(self.name, tag) for tag in tags]
        )
        pointing: dict[str, Digest] = {}
        for tag, link in zip(tags, links, strict=True):
            current = parse_link(link)
            if current is not None:
                pointing[tag] = current
        return pointing

    async def _index_entries(self, pointing: dict[str, Digest], last: bool) -> None:
        """The entries of ``pointing``'s tags, in batches; with the ``last``, the mark
        that the index is complete, after them all.

        Tags moved meanwhile write their own entries; an entry written here for a tag
        that has moved on since is only a candidate that fails its check.
        """
        entries: dict[str, bytes] = {}
        # Each entry holds what the tag's history link for that digest holds: stored as
        # that file where the driver can (a hard link costs no inode of its own).
        copies: dict[str, str] = {}
        for tag, current in pointing.items():
            entry = layout.tag_entry(self.name, current, tag)
            entries[entry] = str(current).encode("ascii")
            copies[entry] = layout.tag_index_link(self.name, tag, current)
            if len(entries) == INDEX_BATCH:
                await self._write_entries(entries, copies, last=False)
                entries, copies = {}, {}
        if entries or last:
            await self._write_entries(entries, copies, last=last)

    async def _write_entries(
        self, entries: dict[str, bytes], copies: dict[str, str], last: bool
    ) -> None:
        """Reverse-index entries as batches a driver may make durable whole (the
        filesystem's publish journal: one record, where a write of each would be a
        durable write of its own); with the last, the mark that the index is complete,
        published after them."""
        marks = {layout.tags_indexed(self.name): b""} if last else {}
        stages = [list(entries), list(marks)]
        async with await self.driver.prepare_writes(
            {**entries, **marks}, replayable=True, copies=copies
        ) as files:
            await files.publish_in_order([stage for stage in stages if stage])


def _answer(found: asyncio.Future[builtins.list[str]], tags: builtins.list[str]) -> None:
    # The caller may have stopped waiting (its client gone): the build goes on.
    if not found.done():
        found.set_result(tags)
