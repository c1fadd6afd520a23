"""The pull-through cache: manifests and blobs missing here come from the upstream.

What is fetched is stored exactly as a push would store it (blob content, the
repository's layer and revision links, tags), so it is served from storage from then
on, by this process or any other, and Distribution reading the same directory sees an
ordinary repository. Bookkeeping lives under ``_dockyard/proxy/repositories/<name>/``,
where Distribution does not look:

- ``_tags/<tag>``: ``{"digest", "validated"}``, when the upstream last confirmed the tag.
  A tag is served without asking the upstream for ``ttl`` after that; then a HEAD asks
  again (a new digest is fetched and the tag moved). If the upstream cannot be reached
  the cached manifest is served.
- ``_manifests/<alg>/<hex>``: ``{"fetched"}``; its modification time is the last pull.
  A manifest neither fetched nor pulled for ``ttl`` is expired by ``expire``: its tags
  and revision are deleted like a DELETE would, so garbage collection frees the blobs
  nothing else references. Expiry is skipped while the upstream is unreachable.

With several worker processes and storage in a local directory (the filesystem driver),
the first worker to claim a digest fetches it and the others follow its spool file
(``claims``): one upstream fetch in all. Other drivers cannot be read while being
written, so there each worker fetches at most once; committing is idempotent (a second
``adopt`` of the same digest is a no-op), so a duplicate costs upstream bandwidth,
never correctness.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dockyard.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    Unavailable,
)
from dockyard.proxy.claims import INCOMING, FollowedFetch, claim, claimed, spool_paths
from dockyard.proxy.fetch import BlobFetch
from dockyard.proxy.receive import BufferPool
from dockyard.proxy.routing import Route, Target, find_target
from dockyard.proxy.upstream import UPSTREAM_UNKNOWN, UpstreamUnavailable
from dockyard.registry import Registry, Repository, layout
from dockyard.registry.blobs import BlobDescriptor
from dockyard.registry.digest import Digest
from dockyard.registry.links import delete_if_exists, write_link
from dockyard.registry.manifest_store import StoredManifest
from dockyard.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_stored,
)
from dockyard.registry.names import is_valid_tag
from dockyard.storage.driver import PathNotFoundError

log = logging.getLogger("dockyard.proxy")

RECORDS = f"{layout.ROOT}/_dockyard/proxy/repositories"
# A spool nothing has written to for this long belongs to a fetch that died with its process.
SPOOL_AGE = 3600.0
ACCEPT = ", ".join(
    (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST, *DOCKER_SCHEMA1)
)


def tag_record(name: str, tag: str) -> str:
    return f"{RECORDS}/{name}/_tags/{tag}"


def manifest_record(name: str, digest: Digest) -> str:
    return f"{RECORDS}/{name}/_manifests/{digest.algorithm}/{digest.hex}"


@dataclass(frozen=True, slots=True)
class TagState:
    digest: Digest
    validated: float


class Mirror:
    def __init__(
        self,
        registry: Registry,
        routes: list[Route],
        fetched: Callable[[int], None] | None = None,
    ) -> None:
        self.registry = registry
        self.routes = routes
        self.fetches: dict[Digest, BlobFetch] = {}
        # The buffers every fetch of this process receives its upstream's body into.
        self.buffers = BufferPool()
        # Told the size of each blob fetched from an upstream (the server's heap trimmer:
        # a fetch holds up to its window of pieces in memory).
        self._fetched = fetched

    def target(self, name: str) -> Target | None:
        return find_target(self.routes, name)

    async def close(self) -> None:
        fetches = list(self.fetches.values())
        for fetch in fetches:
            # A verified fetch has given its readers the whole blob and is storing it:
            # cut short, the cache would lose what a client already took as pulled.
            if not fetch.verified:
                fetch.task.cancel()
        await asyncio.gather(*(fetch.task for fetch in fetches), return_exceptions=True)
        self.buffers.close()
        for route in self.routes:
            if route.client is not None:
                await route.client.close()

    # --- manifests ---------------------------------------------------------------------

    async def manifest(self, target: Target, reference: str) -> StoredManifest:
        repo = self.registry.repository(target.name)
        if ":" in reference:
            digest = Digest.parse(reference)
            if not await repo.manifests.exists(digest):
                await self._fetch_manifest(target, repo, reference, digest)
            return await self._serve(repo, digest)
        if not is_valid_tag(reference):
            raise ManifestUnknown(detail={"tag": reference[:200]})
        return await self._serve(repo, await self._tag(target, repo, reference))

    async def _serve(self, repo: Repository, digest: Digest) -> StoredManifest:
        stored = await repo.manifests.get(digest)
        try:
            await self.registry.driver.touch(manifest_record(repo.name, digest))
        except PathNotFoundError:
            # Content that was here before the cache was: it never expires.
            pass
        return stored

    async def _tag(self, target: Target, repo: Repository, tag: str) -> Digest:
        local: Digest | None
        try:
            local = await repo.tags.resolve(tag)
        except ManifestUnknown:
            local = None
        state = await self._tag_state(repo.name, tag)
        ttl = target.route.ttl
        if (
            local is not None
            and state is not None
            and state.digest == local
            and ttl > 0
            and time.time() - state.validated < ttl
        ):
            return local
        try:
            remote = await self._head_manifest(target, tag)
            if remote is None or not await repo.manifests.exists(remote):
                remote = await self._fetch_manifest(target, repo, tag, remote)
            elif remote != local:
                await repo.tags.tag(tag, remote)
        except (Unavailable, ManifestUnknown) as error:
            if local is None:
                raise
            # The upstream is down, or no longer has the tag: serve what is cached,
            # as Distribution's proxy does.
            log.info("serving cached %s:%s: %s", repo.name, tag, error.message)
            return local
        await self.registry.driver.write(
            tag_record(repo.name, tag),
            json.dumps({"digest": str(remote), "validated": time.time()}).encode(),
        )
        return remote

    async def _tag_state(self, name: str, tag: str) -> TagState | None:
        try:
            body = json.loads(await self.registry.driver.read(tag_record(name, tag)))
            return TagState(Digest.parse(body["digest"]), float(body["validated"]))
        except PathNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, DigestInvalid):
            return None  # a damaged record is as good as none

    async def _head_manifest(self, target: Target, tag: str) -> Digest | None:
        """The tag's digest upstream; None when the upstream does not say (then GET)."""
        try:
            response = await target.client.request(
                "HEAD", target.remote, f"manifests/{tag}", {"Accept": ACCEPT}
            )
        except UpstreamUnavailable as error:
            raise Unavailable("upstream unavailable", detail={"reason": str(error)}) from None
        async with response:
            if response.status in UPSTREAM_UNKNOWN:
                raise ManifestUnknown(detail={"tag": tag})
            if response.status != 200:
                raise Unavailable(
                    "upstream refused the manifest", detail={"status": response.status}
                )
            header = response.headers.get("Docker-Content-Digest")
        return _header_digest(header)

    async def _fetch_manifest(
        self, target: Target, repo: Repository, reference: str, expected: Digest | None
    ) -> Digest:
        """GET the manifest upstream, check its digest, store it (and tag it)."""
        try:
            response = await target.client.request(
                "GET", target.remote, f"manifests/{reference}", {"Accept": ACCEPT}
            )
            async with response:
                if response.status in UPSTREAM_UNKNOWN:
                    raise ManifestUnknown(detail={"reference": reference[:200]})
                if response.status != 200:
                    raise Unavailable(
                        "upstream refused the manifest", detail={"status": response.status}
                    )
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > MAX_MANIFEST_SIZE:
                        raise Unavailable("upstream manifest is too large")
                data = bytes(body)
                header = response.headers.get("Docker-Content-Digest")
        except UpstreamUnavailable as error:
            raise Unavailable("upstream unavailable", detail={"reason": str(error)}) from None
        claimed = expected or _header_digest(header)
        digest = Digest.of(data, claimed.algorithm if claimed else "sha256")
        if claimed is not None and digest != claimed:
            raise Unavailable(
                "upstream manifest does not match its digest",
                detail={"expected": str(claimed), "actual": str(digest)},
            )
        await self._store_manifest(repo, data, digest, None if ":" in reference else reference)
        return digest

    async def _store_manifest(
        self, repo: Repository, data: bytes, digest: Digest, tag: str | None
    ) -> None:
        driver = self.registry.driver
        await driver.write(
            manifest_record(repo.name, digest), json.dumps({"fetched": time.time()}).encode()
        )
        await self.registry.blobs.put(data, digest)
        await write_link(driver, layout.revision_link(repo.name, digest), digest)
        try:
            subject = parse_stored(data, digest).subject
        except ManifestInvalid:
            subject = None
        if subject is not None:
            await write_link(
                driver, layout.referrer_link(repo.name, subject.digest, digest), digest
            )
        if tag is not None:
            await repo.tags.tag(tag, digest)

    # --- blobs -------------------------------------------------------------------------

    async def blob_size(self, target: Target, digest: Digest) -> int:
        """What a HEAD of a blob not cached yet answers, from the upstream's HEAD."""
        try:
            response = await target.client.request("HEAD", target.remote, f"blobs/{digest}")
        except UpstreamUnavailable as error:
            raise Unavailable("upstream unavailable", detail={"reason": str(error)}) from None
        async with response:
            if response.status in UPSTREAM_UNKNOWN:
                raise BlobUnknown(detail={"digest": str(digest)})
            if response.status != 200 or response.content_length is None:
                raise Unavailable("upstream refused the blob", detail={"status": response.status})
            return response.content_length

    async def adopt_local(self, repo: Repository, digest: Digest) -> BlobDescriptor | None:
        """Link a blob another repository already brought in; None when it is not here."""
        try:
            descriptor = await self.registry.blobs.stat(digest)
        except BlobUnknown:
            return None
        await repo.blobs.link(digest)
        return descriptor

    def fetch(self, target: Target, digest: Digest) -> BlobFetch | FollowedFetch:
        """The fetch of ``digest`` in flight here, or in another process, or a new one."""
        fetch = self.fetches.get(digest)
        if fetch is not None:
            fetch.repositories.add(target.name)
            return fetch
        paths = spool_paths(self.registry, digest)
        taken = None
        if paths is not None:
            taken = claim(paths)
            if taken is None:
                return FollowedFetch(self.registry, target.name, digest, paths)
        fetch = self.fetches[digest] = BlobFetch(
            self.registry, target, digest, self._fetch_done, taken, self.buffers
        )
        return fetch

    def _fetch_done(self, fetch: BlobFetch) -> None:
        if self.fetches.get(fetch.digest) is fetch:
            del self.fetches[fetch.digest]
        if self._fetched is not None:
            self._fetched(fetch.received)

    # --- expiry ------------------------------------------------------------------------

    async def expire(self, now: float | None = None) -> int:
        """Delete cached manifests unused for their route's ttl; returns how many."""
        now = time.time() if now is None else now
        driver = self.registry.driver
        expired = 0
        reachable: dict[str, bool] = {}
        try:
            entries = [info async for info in driver.walk(RECORDS)]
        except PathNotFoundError:
            return 0
        for info in entries:
            if info.is_dir or "/_manifests/" not in info.path:
                continue
            name, _, rest = info.path[len(RECORDS) + 1 :].partition("/_manifests/")
            algorithm, _, hex_part = rest.partition("/")
            target = self.target(name)
            if target is None or target.route.ttl <= 0:
                continue
            if now - info.mtime < target.route.ttl:
                continue
            try:
                digest = Digest.parse(f"{algorithm}:{hex_part}")
                fetched = float(json.loads(await driver.read(info.path))["fetched"])
            except (PathNotFoundError, ValueError, KeyError, TypeError, DigestInvalid):
                fetched = 0.0
                digest = None
            if digest is None or now - fetched < target.route.ttl:
                continue
            if target.route.prefix not in reachable:
                reachable[target.route.prefix] = await target.client.ping()
            if not reachable[target.route.prefix]:
                continue
            await self._expire_one(name, digest)
            expired += 1
        return expired

    async def purge_spools(self, now: float | None = None) -> int:
        """Remove spools no fetch has written to for an hour (left by a crash)."""
        now = time.time() if now is None else now
        driver = self.registry.driver
        try:
            entries = [info async for info in driver.walk(INCOMING)]
        except PathNotFoundError:
            return 0
        stale = [
            info
            for info in entries
            if not info.is_dir and now - info.mtime > SPOOL_AGE and not claimed(driver, info.path)
        ]
        for info in stale:
            await delete_if_exists(driver, info.path)
        return len(stale)

    async def _expire_one(self, name: str, digest: Digest) -> None:
        repo = self.registry.repository(name)
        for tag in await _tags_at(repo, digest):
            await delete_if_exists(self.registry.driver, tag_record(name, tag))
        try:
            await repo.manifests.delete(digest)
        except ManifestUnknown:
            pass
        await delete_if_exists(self.registry.driver, manifest_record(name, digest))
        log.info("expired cached manifest %s@%s", name, digest)


async def describe_cache(
    mirror: Mirror | None, name: str, tags: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """What a mirrored repository's details say about the cache; None for a local one.

    Returns ``{upstream, prefix, repository, ttl}`` (``ttl`` in seconds, None when
    content never expires) and adds to each tag entry (``{"tag", "digest", ...}``) the
    times its manifest's record holds: ``cachedAt`` (fetched from the upstream),
    ``lastPulledAt`` and ``expiresAt`` (the later of the two plus ``ttl``). A manifest
    without a record (here before the cache was) gets none of them: it never expires.
    """
    target = mirror.target(name) if mirror is not None else None
    if mirror is None or target is None:
        return None
    route = target.route
    ttl = route.ttl if route.ttl > 0 else None
    parts = urlsplit(target.client.url)
    netloc = parts.netloc.rpartition("@")[2]  # credentials in the URL stay here
    cache = {
        "upstream": urlunsplit((parts.scheme, netloc, parts.path, "", "")),
        "prefix": route.prefix,
        "repository": target.remote,
        "ttl": ttl,
    }
    driver = mirror.registry.driver
    semaphore = asyncio.Semaphore(16)

    async def times(digest: Digest) -> dict[str, Any]:
        path = manifest_record(name, digest)
        async with semaphore:
            try:
                pulled = (await driver.stat(path)).mtime
                fetched = float(json.loads(await driver.read(path))["fetched"])
            except (PathNotFoundError, ValueError, KeyError, TypeError):
                return {}
        last = max(fetched, pulled)
        return {
            "cachedAt": fetched,
            "lastPulledAt": pulled,
            "expiresAt": last + ttl if ttl is not None else None,
        }

    digests: dict[Digest, dict[str, Any]] = {}
    for entry in tags:
        try:
            digests.setdefault(Digest.parse(str(entry.get("digest"))), {})
        except DigestInvalid:
            continue
    found = await asyncio.gather(*(times(digest) for digest in digests))
    digests = dict(zip(digests, found, strict=True))
    for entry in tags:
        try:
            entry.update(digests.get(Digest.parse(str(entry.get("digest"))), {}))
        except DigestInvalid:
            continue
    return cache


def _header_digest(header: str | None) -> Digest | None:
    """The upstream's ``Docker-Content-Digest``; None when absent or not a digest."""
    try:
        return Digest.parse(header) if header else None
    except DigestInvalid:
        return None


async def _tags_at(repo: Repository, digest: Digest) -> list[str]:
    try:
        return await repo.tags.pointing_at(digest)
    except NameUnknown:
        return []
