"""Tags: ``_manifests/tags/<tag>/current/link`` and the history under ``index/``."""

from __future__ import annotations

import builtins
from contextlib import AbstractAsyncContextManager

from dockyard.coordination.locks import Locks
from dockyard.errors import ManifestUnknown, NameUnknown
from dockyard.registry import layout
from dockyard.registry.digest import Digest
from dockyard.registry.links import delete_if_exists, read_link, write_link
from dockyard.registry.names import is_valid_tag
from dockyard.storage.driver import PathNotFoundError, StorageDriver


class TagStore:
    """Tags change under a lock per tag, so that an untag conditional on where the tag
    points (a manifest DELETE) cannot remove a tag a concurrent PUT has just moved."""

    def __init__(self, name: str, driver: StorageDriver, locks: Locks) -> None:
        self.name = name
        self.driver = driver
        self.locks = locks

    def _lock(self, tag: str) -> AbstractAsyncContextManager[None]:
        return self.locks.hold(f"tag:{self.name}:{tag}")

    async def resolve(self, tag: str) -> Digest:
        digest = await read_link(self.driver, layout.tag_current_link(self.name, tag))
        if digest is None:
            raise ManifestUnknown(detail={"tag": tag})
        return digest

    async def tag(self, tag: str, digest: Digest) -> None:
        # The index entry first: a crash in between leaves history that names a digest
        # the tag never pointed at, which is harmless, rather than a current tag missing
        # from its own history.
        async with self._lock(tag):
            await write_link(self.driver, layout.tag_index_link(self.name, tag, digest), digest)
            await write_link(self.driver, layout.tag_current_link(self.name, tag), digest)

    async def untag(self, tag: str) -> None:
        async with self._lock(tag):
            if not await delete_if_exists(self.driver, layout.tag_dir(self.name, tag)):
                raise ManifestUnknown(detail={"tag": tag})

    async def untag_if_at(self, tag: str, digest: Digest) -> bool:
        """Remove the tag if it still points at ``digest``; whether it did."""
        async with self._lock(tag):
            if await read_link(self.driver, layout.tag_current_link(self.name, tag)) != digest:
                return False
            return await delete_if_exists(self.driver, layout.tag_dir(self.name, tag))

    async def list(self) -> builtins.list[str]:
        """Every tag, sorted; a directory that is not a valid tag is not one.

        A repository is known while it has ``_manifests`` (as the catalog lists it), even
        with no tag left; without it the name is unknown.
        """
        try:
            names = await self.driver.list(layout.tags(self.name))
        except PathNotFoundError:
            try:
                await self.driver.stat(layout.manifests(self.name))
            except PathNotFoundError:
                raise NameUnknown(detail={"name": self.name}) from None
            return []
        return sorted(name for name in names if is_valid_tag(name))

    async def pointing_at(self, digest: Digest) -> builtins.list[str]:
        found = []
        for tag in await self.list():
            if await read_link(self.driver, layout.tag_current_link(self.name, tag)) == digest:
                found.append(tag)
        return found
