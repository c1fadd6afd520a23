"""What each page needs from the registry, fetched with as few requests as it takes.

Every page view costs a bounded number of registry requests, whatever the size of the
registry: a page of the catalog, not the catalog; a page of tags' details, not every
tag's. Content addressed by digest is cached for good, so a second view of the same
page costs one request per tag (its HEAD) or, against Dockyard, one in all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from dockyard.web.cache import LRUCache, TTLCache
from dockyard.web.client import (
    AuthRequired,
    RegistryClient,
    RegistryFailure,
    RegistryHTTPError,
    RegistrySession,
)
from dockyard.web.model import (
    ImageConfig,
    ManifestDoc,
    parse_config,
    parse_manifest,
    parse_time,
)

log = logging.getLogger("dockyard.web")
T = TypeVar("T")
R = TypeVar("R")

# How many registry requests one page view may have in flight at once.
CONCURRENCY = 16
# Catalog names read per request while searching, and how many such requests a single
# search page may make before it offers to continue.
SEARCH_CHUNK = 1000
SEARCH_BUDGET = 20
# An index's children whose details a tag row reads (the image page shows them all).
ROW_CHILDREN = 8


@dataclass(frozen=True, slots=True)
class TagRow:
    tag: str
    digest: str | None
    media_type: str | None = None
    size: int | None = None
    created: datetime | None = None
    platforms: tuple[str, ...] = ()
    pushed: float | None = None
    kind: str = "image"  # image, index, artifact, unknown
    error: str | None = None
    # A mirror's cached tag (Dockyard): fetched from the upstream, last pulled, expires.
    cached_at: float | None = None
    last_pulled_at: float | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class CacheSource:
    """The upstream a mirrored repository caches, as Dockyard's extension reports it."""

    upstream: str
    prefix: str = ""
    repository: str | None = None
    ttl: float | None = None  # seconds; None: cached content never expires


@dataclass(frozen=True, slots=True)
class RepoRow:
    name: str
    tags: int | None = None
    size: int | None = None
    last_push: float | None = None
    error: str | None = None
    cache: CacheSource | None = None


@dataclass(slots=True)
class RepoListing:
    rows: list[RepoRow]
    next_last: str | None
    query: str
    scanned: int = 0
    search_exhausted: bool = True
    with_usage: bool = False


@dataclass(slots=True)
class TagListing:
    name: str
    rows: list[TagRow]
    total: int
    matching: int
    page: int
    pages: int
    sort: str
    order: str
    query: str
    complete_details: bool
    delete_enabled: bool | None = None
    cache: CacheSource | None = None


@dataclass(slots=True)
class Referrer:
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    annotations: dict[str, str]


@dataclass(slots=True)
class ImageView:
    name: str
    reference: str
    tag: str | None
    manifest: ManifestDoc
    config: ImageConfig | None = None
    children: list[tuple[Any, ManifestDoc | None, ImageConfig | None]] = field(default_factory=list)
    referrers: list[Referrer] | None = None
    referrers_via: str = "api"
    other_tags: list[str] | None = None
    total_size: int | None = None


def is_digest(reference: str) -> bool:
    return ":" in reference


async def gather_limited(
    items: Iterable[T], work: Callable[[T], Awaitable[R]], limit: int = CONCURRENCY
) -> list[R]:
    semaphore = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with semaphore:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


@dataclass(slots=True)
class Snapshot:
    """A slow report (Dockyard's usage scan) kept and refreshed behind the pages' backs."""

    value: dict[str, Any] | None = None
    fetched: float = 0.0
    task: asyncio.Task[dict[str, Any]] | None = None


class Catalogue:
    """The UI's memory of one registry, shared by every page view of the process."""

    # A usage report older than this is refreshed in the background on the next view;
    # one older than ``USAGE_MAX_AGE`` is not shown at all.
    USAGE_REFRESH = 30.0
    USAGE_MAX_AGE = 600.0

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.manifests: LRUCache[str, ManifestDoc] = LRUCache(64 << 20)
        self.configs: LRUCache[str, ImageConfig] = LRUCache(32 << 20)
        # Keyed by who is asking: with auth, each user sees what their grants allow.
        self.dockyard: TTLCache[str, bool] = TTLCache(60)
        self.admin: TTLCache[str, bool] = TTLCache(60)
        self.anonymous_refused: TTLCache[str, bool] = TTLCache(60)
        self.usage: dict[str, Snapshot] = {}
        self.details: TTLCache[tuple[str, str], dict[str, Any]] = TTLCache(3)
        self.resolved: TTLCache[tuple[str, str], list[TagRow]] = TTLCache(15)
        self.delete_refused: TTLCache[str, str] = TTLCache(300)
        self.search_chunk = SEARCH_CHUNK

    def forget_repository(self, name: str) -> None:
        """After a delete or a collection: the next view must ask the registry."""
        for snapshot in self.usage.values():
            snapshot.value = None
        self.details.clear()
        self.resolved.clear()


class Browser:
    """One page view's access to the registry: a session plus the shared catalogue."""

    def __init__(self, catalogue: Catalogue, session: RegistrySession) -> None:
        self.catalogue = catalogue
        self.session = session
        self.who = session.who

    # --- what kind of registry ---------------------------------------------------------

    async def is_dockyard(self) -> bool:
        """Whether the registry has Dockyard's ``/v2/_dockyard/`` API.

        ``GET /v2/_dockyard/gc`` answers 200 to an admin; with auth, 401 or 403 to
        others, who still get the per-repository extensions. Other registries have no
        such route: 404.
        """
        known = self.catalogue.dockyard.get(self.who)
        if known is not None:
            return known
        admin = False
        try:
            status = await self.session.dockyard_gc_status()
            answer = admin = isinstance(status, dict) and "running" in status
        except AuthRequired:
            answer = True
            self.catalogue.anonymous_refused.put(self.who, True)
        except RegistryHTTPError as error:
            answer = error.denied
        except RegistryFailure:
            answer = False
        self.catalogue.dockyard.put(self.who, answer)
        self.catalogue.admin.put(self.who, admin)
        return answer

    async def is_admin(self, required: bool = False) -> bool:
        """May run collections and read the store's usage (the probe said 200).

        ``required``: the page is about administration, so an anonymous viewer the
        registry turned away is asked to sign in rather than told it is unavailable.
        """
        if not await self.is_dockyard():
            return False
        admin = bool(self.catalogue.admin.get(self.who))
        anonymous = self.session.credentials is None
        if required and not admin and anonymous and self.catalogue.anonymous_refused.get(self.who):
            # A browser sends Basic credentials unasked only below the path it signed in
            # at; a 401 makes it send them here too, where a 404 would end the visit.
            raise AuthRequired(
                "the registry's administration needs a user name and password", False
            )
        return admin

    # --- repositories ------------------------------------------------------------------

    async def repositories(self, last: str | None, query: str, page_size: int) -> RepoListing:
        query = query.strip().lower()
        if query:
            names, next_last, scanned, exhausted = await self._search(query, last, page_size)
        else:
            page = await self.session.catalog(page_size, last)
            names, next_last, scanned, exhausted = page.items, page.next_last, len(page.items), True
        usage = self._usage_by_name() if names and await self.is_admin() else None
        if usage is not None:
            rows = [self._usage_row(name, usage) for name in names]
            missing = [row.name for row in rows if row.tags is None]
            if missing:
                counted = {
                    row.name: row for row in await gather_limited(missing, self._counted_row)
                }
                rows = [counted.get(row.name, row) for row in rows]
        else:
            rows = await gather_limited(names, self._counted_row)
        return RepoListing(rows, next_last, query, scanned, exhausted, usage is not None)

    async def _search(
        self, query: str, last: str | None, want: int
    ) -> tuple[list[str], str | None, int, bool]:
        """Substring search by walking catalog pages, within a request budget.

        Returns (matches, where to continue, names scanned, whether the catalog ended).
        A registry has no search API, so this is what search can be over plain v2: the
        cost is one request per ``SEARCH_CHUNK`` names, never the whole catalog at once.
        """
        matches: list[str] = []
        scanned = 0
        cursor = last
        for _ in range(SEARCH_BUDGET):
            page = await self._catalog_chunk(cursor)
            for name in page.items:
                scanned += 1
                if query in name.lower():
                    matches.append(name)
                    if len(matches) >= want:
                        more = name != page.items[-1] or page.next_last is not None
                        return matches, name if more else None, scanned, not more
            if page.next_last is None or not page.items:
                return matches, None, scanned, True
            cursor = page.next_last
        return matches, cursor, scanned, False

    async def _catalog_chunk(self, last: str | None) -> Any:
        try:
            return await self.session.catalog(self.catalogue.search_chunk, last)
        except RegistryHTTPError as error:
            # A registry with a smaller catalog.maxentries refuses big pages (400
            # PAGINATION_NUMBER_INVALID); step down once and remember.
            if error.code == "PAGINATION_NUMBER_INVALID" and self.catalogue.search_chunk > 100:
                self.catalogue.search_chunk = 100
                return await self.session.catalog(self.catalogue.search_chunk, last)
            raise

    def _usage_by_name(self) -> dict[str, dict[str, Any]] | None:
        usage = self.usage_snapshot()
        if usage is None:
            return None
        return {str(repo.get("name")): repo for repo in usage.get("repositories") or []}

    def usage_snapshot(self) -> dict[str, Any] | None:
        """The last usage report, without waiting; refreshed in the background when old.

        Dockyard computes usage by scanning the store (seconds for thousands of
        repositories), so list pages never wait for it: they show what the last scan
        found, and sizes appear once a first scan is done.
        """
        snapshot = self.catalogue.usage.setdefault(self.who, Snapshot())
        age = time.monotonic() - snapshot.fetched
        if snapshot.task is None and (snapshot.value is None or age > Catalogue.USAGE_REFRESH):
            self._refresh_usage(snapshot)
        if snapshot.value is None or age > Catalogue.USAGE_MAX_AGE:
            return None
        return snapshot.value

    def _refresh_usage(self, snapshot: Snapshot) -> asyncio.Task[dict[str, Any]]:
        # Its own session: these requests belong to no page view's count.
        session = self.catalogue.client.session(self.session.credentials)

        async def fetch() -> dict[str, Any]:
            try:
                value = await session.dockyard_usage()
                snapshot.value = value
                snapshot.fetched = time.monotonic()
                return value
            finally:
                snapshot.task = None

        task = asyncio.ensure_future(fetch())
        # A failed background refresh must not log "exception never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        snapshot.task = task
        return task

    async def usage(self, fresh: bool = False) -> dict[str, Any]:
        """The usage report, waiting for it: for the storage page, which is about it."""
        snapshot = self.catalogue.usage.setdefault(self.who, Snapshot())
        age = time.monotonic() - snapshot.fetched
        if snapshot.value is not None and not fresh and age <= Catalogue.USAGE_REFRESH:
            return snapshot.value
        task = snapshot.task or self._refresh_usage(snapshot)
        return await asyncio.shield(task)

    @staticmethod
    def _usage_row(name: str, usage: dict[str, dict[str, Any]]) -> RepoRow:
        entry = usage.get(name)
        if entry is None:
            return RepoRow(name)
        return RepoRow(
            name,
            tags=int(entry.get("tags") or 0),
            size=int(entry.get("referenced_bytes") or 0),
            last_push=entry.get("last_push"),
            cache=cache_source(entry.get("cache")),
        )

    async def _counted_row(self, name: str) -> RepoRow:
        try:
            return RepoRow(name, tags=len(await self.session.tags(name)))
        except AuthRequired:
            raise
        except RegistryHTTPError as error:
            if error.not_found:
                return RepoRow(name, tags=0)
            return RepoRow(name, error=error.message)

    # --- one repository ----------------------------------------------------------------

    async def repository(
        self,
        name: str,
        *,
        sort: str | None,
        order: str | None,
        query: str,
        page: int,
        page_size: int,
    ) -> TagListing:
        """A page of a repository's tags with their details.

        ``sort`` None picks the most useful order the registry makes cheap: newest first
        where Dockyard gives every tag's date in one request, by name elsewhere.
        """
        query = query.strip()
        delete_enabled: bool | None = None
        cache: CacheSource | None = None
        details = await self._details_or_none(name)
        if details is not None:
            delete_enabled = details.get("deleteEnabled")
            cache = cache_source(details.get("cache"))
            all_rows = [_row_from_details(entry) for entry in details.get("tags") or []]
            total = len(all_rows)
            rows = [row for row in all_rows if query.lower() in row.tag.lower()]
            sort = sort or "date"
            complete = True
        else:
            sort = sort or "name"
            tags = await self.session.tags(name)
            total = len(tags)
            matching_tags = [tag for tag in tags if query.lower() in tag.lower()]
            if sort in ("date", "size"):
                rows = await self._resolved_rows(name, matching_tags)
                complete = True
            else:
                rows = [TagRow(tag, None) for tag in matching_tags]
                complete = False
        order = order or ("asc" if sort == "name" else "desc")
        rows = _sorted(rows, sort, order)
        pages = max(1, -(-len(rows) // page_size))
        page = min(max(page, 1), pages)
        window = rows[(page - 1) * page_size : page * page_size]
        if not complete:
            window = await gather_limited(
                [row.tag for row in window], lambda t: self.tag_row(name, t)
            )
        return TagListing(
            name=name,
            rows=window,
            total=total,
            matching=len(rows),
            page=page,
            pages=pages,
            sort=sort,
            order=order,
            query=query,
            complete_details=complete,
            delete_enabled=delete_enabled,
            cache=cache,
        )

    async def _details_or_none(self, name: str, fresh: bool = False) -> dict[str, Any] | None:
        """Dockyard's one-request tag details; None where they are not to be had.

        A Dockyard whose access rules keep this user from the extension still serves
        the plain v2 API, so any refusal falls back to it rather than failing.
        """
        if not await self.is_dockyard():
            return None
        try:
            return await self.repository_details(name, fresh)
        except RegistryFailure as failure:
            log.info("tag details of %s unavailable, asking tag by tag: %s", name, failure)
            return None

    async def repository_details(self, name: str, fresh: bool = False) -> dict[str, Any]:
        key = (self.who, name)
        cached = None if fresh else self.catalogue.details.get(key)
        if cached is not None:
            return cached
        details = await self.session.dockyard_repository(name)
        self.catalogue.details.put(key, details)
        return details

    async def _resolved_rows(self, name: str, tags: list[str]) -> list[TagRow]:
        """Every tag's details, for sorting by date where the registry has no shortcut."""
        key = (self.who, name)
        cached = self.catalogue.resolved.get(key)
        if cached is not None:
            wanted = set(tags)
            return [row for row in cached if row.tag in wanted]
        rows = await gather_limited(tags, lambda tag: self.tag_row(name, tag))
        self.catalogue.resolved.put(key, rows)
        return rows

    async def tag_row(self, name: str, tag: str) -> TagRow:
        try:
            head = await self.session.head_manifest(name, tag)
            digest = head.digest
            doc = await self.manifest(name, digest) if digest else None
            if doc is None:
                doc = await self._manifest_by_tag(name, tag)
            return await self._row_for(name, tag, doc)
        except AuthRequired:
            raise
        except RegistryFailure as error:
            return TagRow(tag, None, error=error.message)

    async def _manifest_by_tag(self, name: str, tag: str) -> ManifestDoc:
        response = await self.session.get_manifest(name, tag)
        digest = response.digest or ""
        doc = parse_manifest(digest, response.headers.get("Content-Type", ""), response.body)
        if digest:
            self.catalogue.manifests.put(digest, doc, len(response.body) * 3)
        return doc

    async def _row_for(self, name: str, tag: str, doc: ManifestDoc) -> TagRow:
        if doc.is_index:
            children = [c for c in doc.children if not c.is_attestation]
            platforms = tuple(c.platform or "unknown" for c in children)
            loaded = await gather_limited(
                children[:ROW_CHILDREN], lambda c: self._child(name, c.digest)
            )
            dates = [cfg.created for _, cfg in loaded if cfg and cfg.created]
            size = len(doc.raw) + _unique_size(child for child, _ in loaded if child)
            return TagRow(
                tag,
                doc.digest,
                doc.media_type,
                size,
                max(dates) if dates else None,
                platforms,
                kind="index",
            )
        config = await self.config(name, doc) if doc.is_image else None
        created = (
            config.created
            if config
            else parse_time(doc.annotations.get("org.opencontainers.image.created"))
        )
        platforms = (config.platform,) if config and config.platform else ()
        return TagRow(
            tag,
            doc.digest,
            doc.media_type,
            doc.image_size,
            created,
            platforms,
            kind="image" if doc.is_image or doc.is_schema1 else "artifact",
        )

    async def _child(self, name: str, digest: str) -> tuple[ManifestDoc | None, ImageConfig | None]:
        try:
            child = await self.manifest(name, digest)
            config = await self.config(name, child) if child.is_image else None
            return child, config
        except AuthRequired:
            raise
        except RegistryFailure:
            return None, None

    # --- manifests and configs -----------------------------------------------------------

    async def manifest(self, name: str, digest: str, checked: bool = True) -> ManifestDoc:
        """A manifest by digest: from the cache when we have it, else from the registry.

        ``checked`` means the caller already made a request that proves this viewer may
        read this repository (a HEAD of the tag), so a cached copy may be used as is.
        """
        cached = self.catalogue.manifests.get(digest)
        if cached is not None and checked:
            return cached
        response = await self.session.get_manifest(name, digest)
        doc = parse_manifest(
            response.digest or digest, response.headers.get("Content-Type", ""), response.body
        )
        self.catalogue.manifests.put(digest, doc, len(response.body) * 3)
        return doc

    async def config(self, name: str, doc: ManifestDoc) -> ImageConfig | None:
        if doc.config is None:
            return None
        # History sizes come from the manifest's layers, so the key names both: another
        # manifest sharing this config (a re-compressed image) has other layer sizes.
        key = f"{doc.config.digest}@{doc.digest}"
        cached = self.catalogue.configs.get(key)
        if cached is not None:
            return cached
        raw = await self.session.get_blob(name, doc.config.digest)
        config = parse_config(raw, doc.layers)
        self.catalogue.configs.put(key, config, len(raw) * 3)
        return config

    # --- one image ---------------------------------------------------------------------

    async def image(self, name: str, reference: str) -> ImageView:
        if is_digest(reference):
            cached = self.catalogue.manifests.get(reference)
            if cached is not None:
                # The HEAD checks this viewer may read it and that it still exists.
                await self.session.head_manifest(name, reference)
                doc = cached
            else:
                doc = await self.manifest(name, reference, checked=False)
            tag = None
        else:
            doc = await self._manifest_by_tag(name, reference)
            tag = reference
        view = ImageView(name=name, reference=reference, tag=tag, manifest=doc)
        work: list[Awaitable[None]] = [self._load_referrers(view)]
        if doc.is_image:
            work.append(self._load_config(view))
        elif doc.is_index:
            work.append(self._load_children(view))
        work.append(self._load_other_tags(view))
        await asyncio.gather(*work)
        if doc.is_index:
            view.total_size = len(doc.raw) + _unique_size(c for _, c, _ in view.children if c)
        else:
            view.total_size = doc.image_size
        return view

    async def _load_config(self, view: ImageView) -> None:
        try:
            view.config = await self.config(view.name, view.manifest)
        except RegistryHTTPError:
            view.config = None

    async def _load_children(self, view: ImageView) -> None:
        async def load(child: Any) -> tuple[Any, ManifestDoc | None, ImageConfig | None]:
            doc, config = await self._child(view.name, child.digest)
            return child, doc, config

        view.children = await gather_limited(list(view.manifest.children), load)

    async def _load_other_tags(self, view: ImageView) -> None:
        details = await self._details_or_none(view.name)
        if details is None:
            return
        view.other_tags = sorted(
            str(entry.get("tag"))
            for entry in details.get("tags") or []
            if entry.get("digest") == view.manifest.digest
        )

    async def _load_referrers(self, view: ImageView) -> None:
        """OCI 1.1's referrers API; where a registry lacks it (404), the tag schema."""
        digest = view.manifest.digest
        if not digest:
            return
        try:
            response = await self.session.referrers(view.name, digest)
            document = response.json()
        except AuthRequired:
            raise
        except (RegistryFailure, ValueError):
            document = None
        if not isinstance(document, dict) or "manifests" not in document:
            view.referrers_via = "tag"
            try:
                fallback = await self.session.get_manifest(view.name, digest.replace(":", "-"))
                document = fallback.json()
            except AuthRequired:
                raise
            except (RegistryFailure, ValueError):
                view.referrers = []
                return
        found = []
        for entry in document.get("manifests") or [] if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
                continue
            found.append(
                Referrer(
                    digest=entry["digest"],
                    media_type=str(entry.get("mediaType") or ""),
                    artifact_type=entry.get("artifactType")
                    if isinstance(entry.get("artifactType"), str)
                    else None,
                    size=int(entry.get("size") or 0),
                    annotations={
                        str(k): str(v) for k, v in (entry.get("annotations") or {}).items()
                    }
                    if isinstance(entry.get("annotations"), dict)
                    else {},
                )
            )
        view.referrers = found

    # --- what a delete takes with it -----------------------------------------------------

    async def tags_pointing_at(self, name: str, digest: str) -> list[str]:
        details = await self._details_or_none(name, fresh=True)
        if details is not None:
            return sorted(
                str(entry.get("tag"))
                for entry in details.get("tags") or []
                if entry.get("digest") == digest
            )
        tags = await self.session.tags(name)

        async def resolve(tag: str) -> str | None:
            try:
                head = await self.session.head_manifest(name, tag)
            except RegistryHTTPError:
                return None
            return tag if head.digest == digest else None

        return sorted(tag for tag in await gather_limited(tags, resolve) if tag)

    async def digest_of(self, name: str, tag: str) -> str | None:
        try:
            return (await self.session.head_manifest(name, tag)).digest
        except RegistryHTTPError as error:
            if error.not_found:
                return None
            raise

    async def repository_exists(self, name: str) -> bool:
        try:
            tags = await self.session.tags(name)
        except RegistryHTTPError as error:
            if error.not_found:
                return False
            raise
        return bool(tags)

    async def exists(self, name: str, reference: str) -> bool:
        try:
            await self.session.head_manifest(name, reference)
        except RegistryHTTPError as error:
            if error.not_found:
                return False
            raise
        return True


def _row_from_details(entry: dict[str, Any]) -> TagRow:
    platforms = entry.get("platforms") or []
    return TagRow(
        tag=str(entry.get("tag")),
        digest=entry.get("digest"),
        media_type=entry.get("mediaType"),
        size=entry.get("size"),
        created=parse_time(entry.get("created")),
        platforms=tuple(str(p) for p in platforms),
        pushed=entry.get("pushed"),
        kind=str(entry.get("kind") or "image"),
        error=entry.get("error"),
        cached_at=_seconds(entry.get("cachedAt")),
        last_pulled_at=_seconds(entry.get("lastPulledAt")),
        expires_at=_seconds(entry.get("expiresAt")),
    )


def cache_source(value: Any) -> CacheSource | None:
    """A details or usage entry's ``cache``; None for a local repository or a registry
    that does not report one (anything but a Dockyard mirror)."""
    if not isinstance(value, dict) or not isinstance(value.get("upstream"), str):
        return None
    prefix = value.get("prefix")
    repository = value.get("repository")
    return CacheSource(
        upstream=value["upstream"],
        prefix=prefix if isinstance(prefix, str) else "",
        repository=repository if isinstance(repository, str) else None,
        ttl=_seconds(value.get("ttl")),
    )


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _sorted(rows: list[TagRow], sort: str, order: str) -> list[TagRow]:
    reverse = order == "desc"
    if sort == "date":
        # Undated rows sort last either way: they are the least informative.
        dated = [row for row in rows if row.created is not None]
        undated = [row for row in rows if row.created is None]
        dated.sort(key=lambda row: (row.created, row.tag), reverse=reverse)
        return dated + sorted(undated, key=lambda row: row.tag)
    if sort == "size":
        return sorted(rows, key=lambda row: (row.size or 0, row.tag), reverse=reverse)
    return sorted(rows, key=lambda row: row.tag, reverse=reverse)


def _unique_size(docs: Iterable[ManifestDoc]) -> int:
    """Bytes of several images, counting each blob once (platforms share layers)."""
    sizes: dict[str, int] = {}
    for doc in docs:
        sizes[doc.digest] = len(doc.raw)
        if doc.config is not None:
            sizes[doc.config.digest] = doc.config.size
        for layer in doc.layers:
            sizes[layer.digest] = layer.size
    return sum(sizes.values())
