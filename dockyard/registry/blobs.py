"""Blob content, shared by every repository, and each repository's links to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

from dockyard.coordination.descriptors import DescriptorCache, NoDescriptorCache
from dockyard.errors import BlobUnknown
from dockyard.registry import layout
from dockyard.registry.digest import Digest
from dockyard.registry.links import delete_if_exists, read_link, write_link
from dockyard.storage.driver import PathNotFoundError, StorageDriver, StorageError
from dockyard.storage.refusal import refuses_writes

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class BlobDescriptor:
    digest: Digest
    size: int
    media_type: str = OCTET_STREAM


class BlobStore:
    """``blobs/<alg>/<2 hex>/<hex>/data``: content addressed, written once, never changed."""

    def __init__(self, driver: StorageDriver, descriptors: DescriptorCache | None = None) -> None:
        self.driver = driver
        self.descriptors = descriptors or NoDescriptorCache()

    async def stat(self, digest: Digest) -> BlobDescriptor:
        size = await self.descriptors.size(digest)
        if size is not None:
            return BlobDescriptor(digest, size)
        try:
            info = await self.driver.stat(layout.blob_data(digest))
        except PathNotFoundError:
            raise BlobUnknown(detail={"digest": str(digest)}) from None
        if info.is_dir:
            raise BlobUnknown(detail={"digest": str(digest)})
        await self.descriptors.remember_size(digest, info.size)
        return BlobDescriptor(digest, info.size)

    async def exists(self, digest: Digest) -> bool:
        """Asked of storage itself, never of the cache: callers decide what to store on it."""
        try:
            info = await self.driver.stat(layout.blob_data(digest))
        except PathNotFoundError:
            return False
        return not info.is_dir

    async def read(self, digest: Digest) -> bytes:
        try:
            return await self.driver.read(layout.blob_data(digest))
        except PathNotFoundError:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    async def hold(self, digest: Digest) -> bool:
        """Mark the blob as in use now; False when it is not there.

        Touching and checking are one step, so a garbage collection that has set the
        blob aside sees the touch, or the caller sees the blob gone (see ``gc``).
        """
        try:
            await self.driver.touch(layout.blob_data(digest))
        except PathNotFoundError:
            return False
        except StorageError as error:
            # Storage that refuses writes (a read-only mount): no push can commit through
            # it, so there is nothing to protect; being there is all a hold can say.
            if not refuses_writes(error):
                raise
            return await self.exists(digest)
        return True

    async def put(self, data: bytes, digest: Digest | None = None) -> Digest:
        """Store small content (a manifest) under its digest, unless it is there already."""
        digest = digest or Digest.of(data)
        if not await self.hold(digest):
            await self.driver.write(layout.blob_data(digest), data)
        return digest

    async def adopt(self, source: str, digest: Digest) -> None:
        """Make a verified upload file the blob's content, in one rename."""
        if await self.hold(digest):
            await delete_if_exists(self.driver, source)
        else:
            await self.driver.move(source, layout.blob_data(digest))

    def stream(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.driver.stream(layout.blob_data(digest), offset, length)

    def local_path(self, digest: Digest) -> str | None:
        return self.driver.local_path(layout.blob_data(digest))

    async def redirect_url(self, digest: Digest, method: str) -> str | None:
        return await self.driver.redirect_url(layout.blob_data(digest), method)

    async def delete(self, digest: Digest) -> bool:
        return await delete_if_exists(self.driver, layout.blob_dir(digest))


class RepositoryBlobs:
    """A repository's view of the blob store: only blobs linked into it exist for it."""

    def __init__(self, name: str, store: BlobStore) -> None:
        self.name = name
        self.store = store
        self.driver = store.driver
        self.descriptors = store.descriptors

    async def is_linked(self, digest: Digest) -> bool:
        """Read from storage (never the cache): holds and mounts decide on it."""
        return await read_link(self.driver, layout.layer_link(self.name, digest)) == digest

    async def stat(self, digest: Digest) -> BlobDescriptor:
        if not await self.descriptors.linked(self.name, digest):
            mark = self.descriptors.link_mark()
            if not await self.is_linked(digest):
                raise BlobUnknown(detail={"digest": str(digest)})
            await self.descriptors.remember_link(self.name, digest, mark=mark)
        return await self.store.stat(digest)

    async def forget(self, digest: Digest) -> None:
        """The cache said the blob was there and storage says it is not: drop the answer."""
        await self.descriptors.forget_link(self.name, digest)
        await self.descriptors.forget_blob(digest)

    async def hold(self, digest: Digest) -> bool:
        """Mark the repository's link and the blob as in use now; False if either is gone."""
        try:
            await self.driver.touch(layout.layer_link(self.name, digest))
        except PathNotFoundError:
            return False
        except StorageError as error:
            if not refuses_writes(error):  # as in BlobStore.hold
                raise
        return await self.is_linked(digest) and await self.store.hold(digest)

    async def link(self, digest: Digest, beside: Awaitable[None] | None = None) -> None:
        """Link the blob into the repository. With ``beside`` (the blob's own commit),
        the link is written while that runs, each waiting on its own fsyncs: a link
        whose blob is not there reads as no blob (``stat`` looks at both), so a crash
        between the two shows nothing that is not stored. The cache learns of the link
        only once both are done."""
        mark = self.descriptors.link_mark()
        writing = write_link(self.driver, layout.layer_link(self.name, digest), digest)
        if beside is None:
            await writing
        else:
            await _both(beside, writing)
        await self.descriptors.remember_link(self.name, digest, fresh=True, mark=mark)

    async def unlink(self, digest: Digest) -> None:
        removed = await delete_if_exists(self.driver, layout.layer_dir(self.name, digest))
        # Forgotten either way: the cache may still name a link another replica removed.
        await self.descriptors.forget_link(self.name, digest)
        if not removed:
            raise BlobUnknown(detail={"digest": str(digest)})


async def _both(first: Awaitable[None], second: Awaitable[None]) -> None:
    """Run both to their end; then raise the first one's error, if any, else the second's."""
    for outcome in await asyncio.gather(first, second, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
