"""Dockyard's own endpoints under ``/v2/_dockyard/``: usage, collection, repositories.

Names under ``_dockyard`` can never clash with repositories: a repository name may not
start with an underscore.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dockyard import metrics
from dockyard.api.context import registry_of
from dockyard.errors import NameUnknown, RegistryError, Unsupported
from dockyard.proxy import MIRROR
from dockyard.proxy.mirror import describe_cache
from dockyard.registry import Registry, Repository, layout
from dockyard.registry.cache import DigestCache
from dockyard.registry.digest import Digest
from dockyard.registry.gc import GarbageCollector, GcOptions, ScanCache
from dockyard.registry.gc_status import CollectionStatus
from dockyard.registry.links import read_link
from dockyard.registry.manifests import parse_stored
from dockyard.registry.usage import compute_usage
from dockyard.storage.driver import PathNotFoundError


@dataclass(slots=True)
class CollectorState:
    """This process's side of collecting: its scan cache and the run it has going.

    Which collection runs in any worker, and what the last one did, is in storage
    (:class:`CollectionStatus`); a dry run, which changes nothing, is known here only.
    """

    options: GcOptions
    cache: ScanCache = field(default_factory=ScanCache)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    running: dict[str, Any] | None = None


COLLECTOR = web.AppKey("collector", CollectorState)
# What a manifest's tags list entry says (size, created, platforms) by digest: derived
# from content only, so it never goes stale.
IMAGE_CONFIGS = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
SUMMARIES = web.AppKey("manifest_summaries", DigestCache[dict[str, Any]])


async def usage(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    state = request.app[COLLECTOR]
    result = await compute_usage(registry.driver, state.options, state.cache)
    body = result.to_json()
    for entry in body["repositories"]:
        # A mirrored repository says which upstream it caches (dockyard.proxy).
        cache = await describe_cache(request.app.get(MIRROR), entry["name"], [])
        if cache is not None:
            entry["cache"] = cache
    return web.json_response(body)


async def collect(request: web.Request) -> web.StreamResponse:
    """Run a collection: ``?dryRun=true`` lists what would go; ``?deleteUntagged=true``."""
    registry = registry_of(request)
    state = request.app[COLLECTOR]
    dry_run = request.query.get("dryRun", "false").lower() in ("1", "true", "yes")
    if not dry_run:
        registry.check_deletable()
    delete_untagged = request.query.get("deleteUntagged", "false").lower() in ("1", "true", "yes")
    options = GcOptions(
        dry_run=dry_run,
        delete_untagged=delete_untagged,
        delay=state.options.delay,
        settle=state.options.settle,
    )
    return web.json_response(await run_collection(state, registry, options))


def collector(registry: Registry, options: GcOptions, cache: ScanCache) -> GarbageCollector:
    return GarbageCollector(
        registry.driver, options, cache=cache, descriptors=registry.coordination.descriptors
    )


async def run_collection(
    state: CollectorState, registry: Registry, options: GcOptions
) -> dict[str, Any]:
    """Collect and report; a real collection is recorded as the last one, whoever asked.

    ``Unsupported`` when a collection is already running, in this worker or another.
    """
    if state.lock.locked() and not options.dry_run:
        raise Unsupported("a garbage collection is already running", detail=state.running)
    async with state.lock:
        state.running = {"startedAt": time.time(), "dryRun": options.dry_run}
        try:
            if options.dry_run:
                report = await collector(registry, options, state.cache).run()
                body = report.to_json(dry_run=True)
                metrics.record_collection(body, dry_run=True)
                return body
            status = CollectionStatus(registry.driver, registry.coordination)
            async with status.collecting():
                report = await collector(registry, options, state.cache).run()
                body = report.to_json(dry_run=False)
                await status.record({**body, "finishedAt": time.time()})
                metrics.record_collection(body, dry_run=False)
                return body
        except Unsupported:
            raise  # another worker's collection is running: not a failed one
        except Exception:
            metrics.record_collection(None, options.dry_run)
            raise
        finally:
            state.running = None


async def collection_status(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    status = CollectionStatus(registry.driver, registry.coordination)
    running = await status.running() or request.app[COLLECTOR].running
    return web.json_response({"running": running, "last": await status.last()})


async def delete_repository(request: web.Request, name: str) -> web.StreamResponse:
    """Remove a repository's manifests, tags and links; a collection then frees its blobs."""
    await registry_of(request).delete_repository(name)
    return web.Response(status=202, headers={"Content-Length": "0"})


async def repository_details(request: web.Request, name: str) -> web.StreamResponse:
    """Every tag with its digest, kind, size, creation time, platforms and push time.

    What a UI's tag table needs in one request instead of two or three per tag; the
    web UI uses it when the registry is Dockyard.
    """
    registry = registry_of(request)
    repo = registry.repository(name)
    try:
        await registry.driver.stat(layout.repository(repo.name))
    except PathNotFoundError:
        raise NameUnknown(detail={"name": repo.name}) from None
    cache = request.app.get(SUMMARIES)
    semaphore = asyncio.Semaphore(16)

    async def describe(tag: str) -> dict[str, Any] | None:
        async with semaphore:
            link = layout.tag_current_link(repo.name, tag)
            digest = await read_link(registry.driver, link)
            if digest is None:
                return None
            try:
                pushed: float | None = (await registry.driver.stat(link)).mtime
            except PathNotFoundError:
                return None
            summary = cache.get(digest) if cache is not None else None
            if summary is None:
                summary, _ = await _summary(registry, repo, digest)
                if cache is not None and "error" not in summary:
                    cache.put(digest, summary, 512)
            return {"tag": tag, "digest": str(digest), "pushed": pushed, **summary}

    entries = await asyncio.gather(*(describe(tag) for tag in await repo.tags.list()))
    options = registry.options
    tags = [entry for entry in entries if entry is not None]
    # A mirrored repository: its upstream, and when each tag was fetched, last pulled
    # and expires (dockyard.proxy); a local one has none of these fields.
    source = await describe_cache(request.app.get(MIRROR), repo.name, tags)
    return web.json_response(
        {
            "name": repo.name,
            "deleteEnabled": options.delete_enabled and not options.read_only,
            **({"cache": source} if source is not None else {}),
            "tags": tags,
        }
    )


async def _summary(
    registry: Registry, repo: Repository, digest: Digest
) -> tuple[dict[str, Any], dict[Digest, int]]:
    """A manifest's tag-table facts, and the sizes of the blobs it is made of.

    The blob sizes let an index count a layer its platforms share only once.
    """
    try:
        stored = await repo.manifests.get(digest)
        manifest = parse_stored(stored.data, digest)
    except RegistryError as error:
        return {"error": error.message}, {}
    blobs: dict[Digest, int] = {digest: manifest.size}
    if manifest.is_index:
        created: list[str] = []
        platforms: list[str] = []
        for child in manifest.children:
            if (child.annotations or {}).get("vnd.docker.reference.type") == "attestation-manifest":
                continue  # BuildKit's provenance entries are not a platform
            platform = child.platform or {}
            parts = [platform.get(key) for key in ("os", "architecture", "variant")]
            platforms.append("/".join(str(p) for p in parts if p) or "unknown")
            inner, inner_blobs = await _summary(registry, repo, child.digest)
            blobs.update(inner_blobs)
            if inner.get("created"):
                created.append(inner["created"])
        summary: dict[str, Any] = {
            "kind": "index",
            "mediaType": manifest.media_type,
            "size": sum(blobs.values()),
            "created": max(created) if created else None,
            "platforms": platforms,
        }
        return summary, blobs
    if manifest.config is not None:
        blobs[manifest.config.digest] = manifest.config.size
    for layer in manifest.layers:
        blobs[layer.digest] = layer.size
    summary = {
        "kind": "artifact",
        "mediaType": manifest.media_type,
        "size": sum(blobs.values()),
        "created": manifest.annotations.get("org.opencontainers.image.created"),
        "platforms": [],
    }
    config = manifest.config
    if config is not None and not manifest.artifact_type and config.media_type in IMAGE_CONFIGS:
        summary["kind"] = "image"
        try:
            document = json.loads(await registry.blobs.read(config.digest))
        except (RegistryError, ValueError):
            document = None
        if isinstance(document, dict):
            if isinstance(document.get("created"), str):
                summary["created"] = document["created"]
            parts = [document.get(key) for key in ("os", "architecture", "variant")]
            text = "/".join(p for p in parts if isinstance(p, str) and p)
            summary["platforms"] = [text] if text else []
    return summary, blobs
