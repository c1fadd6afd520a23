"""A repository's manifests: stored as blobs, linked under ``_manifests/revisions``."""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from dockyard.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    Unavailable,
)
from dockyard.registry import layout
from dockyard.registry.blobs import BlobStore, RepositoryBlobs
from dockyard.registry.cache import DigestCache
from dockyard.registry.digest import Digest
from dockyard.registry.links import delete_if_exists, read_link
from dockyard.registry.manifests import (
    DOCKER_SCHEMA1,
    Manifest,
    infer_media_type,
    parse_manifest,
    parse_stored,
)
from dockyard.registry.tags import TagStore
from dockyard.storage.driver import PathNotFoundError, StorageDriver


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    media_type: str
    data: bytes


def stored_media_type(data: bytes) -> str:
    """The Content-Type a stored manifest is served with, as Distribution derives it."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "application/octet-stream"
    if not isinstance(body, dict):
        return "application/octet-stream"
    if body.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[1] if "signatures" in body else DOCKER_SCHEMA1[0]
    return infer_media_type(body)


class ManifestStore:
    def __init__(
        self,
        name: str,
        driver: StorageDriver,
        blobs: BlobStore,
        repo_blobs: RepositoryBlobs,
        tags: TagStore,
        hold_limit: float,
        cache: DigestCache[StoredManifest],
    ) -> None:
        self.name = name
        self.cache = cache
        self.hold_limit = hold_limit
        self.driver = driver
        self.blobs = blobs
        self.repo_blobs = repo_blobs
        self.tags = tags

    async def exists(self, digest: Digest) -> bool:
        return await read_link(self.driver, layout.revision_link(self.name, digest)) == digest

    async def hold(self, digest: Digest) -> bool:
        """Mark the manifest (its revision link and its content) as in use now."""
        try:
            await self.driver.touch(layout.revision_link(self.name, digest))
        except PathNotFoundError:
            return False
        return await self.exists(digest) and await self.blobs.hold(digest)

    async def get(self, digest: Digest) -> StoredManifest:
        if not await self.exists(digest):
            raise ManifestUnknown(detail={"digest": str(digest)})
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        try:
            data = await self.blobs.read(digest)
        except BlobUnknown:
            raise ManifestUnknown(detail={"digest": str(digest)}) from None
        stored = StoredManifest(digest, stored_media_type(data), data)
        self.cache.put(digest, stored, len(data))
        return stored

    async def put(
        self, data: bytes, content_type: str, tag: str | None, digest: Digest | None
    ) -> Manifest:
        """Validate and store; tag it when pushed by tag. Returns the parsed manifest."""
        algorithm = digest.algorithm if digest else "sha256"
        actual = Digest.of(data, algorithm)
        if digest is not None and actual != digest:
            raise DigestInvalid(
                "manifest digest does not match its content",
                detail={"expected": str(digest), "actual": str(actual)},
            )
        manifest = parse_manifest(data, content_type, actual)
        held_at = time.monotonic()
        await self._hold_references(manifest)
        link = str(actual).encode("ascii")
        files = {} if await self.blobs.hold(actual) else {layout.blob_data(actual): data}
        content = list(files)
        revision = [layout.revision_link(self.name, actual)]
        if manifest.subject is not None:
            revision.append(layout.referrer_link(self.name, manifest.subject.digest, actual))
        files.update(dict.fromkeys(revision, link))
        async with AsyncExitStack() as stack:
            move = None
            copies: dict[str, str] = {}
            if tag is not None:
                move = await stack.enter_async_context(self.tags.moving(tag, actual))
                files.update(move.files)
                # The tag's index link and its reverse-index entry hold the revision
                # link's bytes (the digest, fixed by each path): one file for all three.
                copies = dict.fromkeys([*move.entry, *move.history], revision[0])
            # Every file is written (invisibly) at once; then each stage appears only once
            # the one before it is durable: content, revision, tag. Replayable: these
            # files change again only through pushes like this one, or through deletes.
            prepared = await stack.enter_async_context(
                await self.driver.prepare_writes(
                    files,
                    replayable=True,
                    removals=move.stale if move else (),
                    copies=copies,
                )
            )
            stages = [[*content, *(move.entry if move else [])]]
            stages.append([*revision, *(move.history if move else [])])
            if move is not None:
                stages.append([move.current])

            def within_hold_limit(stage: int) -> None:
                # Garbage collection honours a hold for a bounded time only (see ``gc``):
                # past it, committing the revision could reference a blob that is being
                # removed. Once the revision is in, moving the tag references nothing new.
                if stage == 1 and time.monotonic() - held_at > self.hold_limit:
                    raise Unavailable("manifest references took too long to verify; retry")

            await prepared.publish_in_order(stages, within_hold_limit)
        return manifest

    async def _release(self, manifest: Manifest) -> None:
        """Mark the links this manifest used as released, so a collection may free them now.

        Links of content pushed recently are kept by garbage collection for a while, for a
        push whose manifest has not arrived yet; a deleted manifest's content is not that.
        A marker beside the link says so until the link is held again (its mtime then
        passes the marker's); the link's own mtime, which records holds, is left alone.
        Another manifest still using the content keeps it by reference, whatever its age.
        A marker is only a hint, and not made durable: one lost in a crash leaves its
        link to wait out the grace period, as a link of a recent push does.
        """
        links = [layout.layer_link(self.name, blob) for blob in manifest.referenced_blobs()]
        links += [layout.revision_link(self.name, child.digest) for child in manifest.children]
        for link in links:
            try:
                await self.driver.stat(link)
            except PathNotFoundError:
                continue
            await self.driver.write(layout.released_marker(link), b"", durable=False)

    async def _hold_references(self, manifest: Manifest) -> None:
        """Check every referenced blob and child manifest is there, marking each in use."""
        for blob in manifest.required_blobs():
            if not await self.repo_blobs.hold(blob):
                raise ManifestBlobUnknown(detail={"digest": str(blob)})
        for child in manifest.children:
            if not await self.hold(child.digest):
                raise ManifestBlobUnknown(
                    "manifest references a manifest unknown to the repository",
                    detail={"digest": str(child.digest)},
                )

    async def delete(self, digest: Digest) -> None:
        """Remove the manifest from the repository with every tag that points at it."""
        stored = await self.get(digest)
        try:
            manifest = parse_stored(stored.data, digest)
        except ManifestInvalid:
            # Content another registry accepted (schema1) has no subject or links to age.
            manifest = None
        async with self.tags.untagging_all_at(digest):
            if manifest is not None:
                await self._release(manifest)
            if manifest is not None and manifest.subject is not None:
                await delete_if_exists(
                    self.driver,
                    layout.referrer_dir(self.name, manifest.subject.digest, digest),
                )
            await delete_if_exists(self.driver, layout.revision_dir(self.name, digest))
