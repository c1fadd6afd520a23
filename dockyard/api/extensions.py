"""Dockyard's own endpoints under ``/v2/_dockyard/``: usage, collection, repository delete.

Names under ``_dockyard`` can never clash with repositories: a repository name may not
start with an underscore.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dockyard.api.context import registry_of
from dockyard.errors import Unsupported
from dockyard.registry.gc import GarbageCollector, GcOptions, GcReport, ScanCache
from dockyard.registry.usage import compute_usage


@dataclass(slots=True)
class CollectorState:
    """The one collection this process runs at a time, and what the last one did."""

    options: GcOptions
    cache: ScanCache = field(default_factory=ScanCache)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    running: dict[str, Any] | None = None
    last: dict[str, Any] | None = None


COLLECTOR = web.AppKey("collector", CollectorState)


def report_json(report: GcReport, dry_run: bool) -> dict[str, Any]:
    return {
        "dryRun": dry_run,
        "repositories": report.repositories,
        "manifestsMarked": report.manifests_marked,
        "blobsMarked": report.blobs_marked,
        "blobsDeleted": [str(d) for d in report.blobs_deleted],
        "manifestsDeleted": [
            {"repository": n, "digest": str(d)} for n, d in report.manifests_deleted
        ],
        "layerLinksDeleted": report.layer_links_deleted,
        "repositoriesRemoved": report.repositories_removed,
        "bytesFreed": report.bytes_freed,
        "restored": report.restored,
        "seconds": round(report.duration, 3),
        "summary": report.summary(dry_run),
    }


async def usage(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    state = request.app[COLLECTOR]
    result = await compute_usage(registry.driver, state.options, state.cache)
    return web.json_response(result.to_json())


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
    if state.lock.locked() and not dry_run:
        raise Unsupported("a garbage collection is already running", detail=state.running)
    async with state.lock:
        state.running = {"startedAt": time.time(), "dryRun": dry_run}
        try:
            report = await GarbageCollector(registry.driver, options, cache=state.cache).run()
        finally:
            state.running = None
    body = report_json(report, dry_run)
    if not dry_run:
        state.last = {**body, "finishedAt": time.time()}
    return web.json_response(body)


async def collection_status(request: web.Request) -> web.StreamResponse:
    state = request.app[COLLECTOR]
    return web.json_response({"running": state.running, "last": state.last})


async def delete_repository(request: web.Request, name: str) -> web.StreamResponse:
    """Remove a repository's manifests, tags and links; a collection then frees its blobs."""
    await registry_of(request).delete_repository(name)
    return web.Response(status=202, headers={"Content-Length": "0"})
