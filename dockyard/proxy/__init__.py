"""Registry mirror: a pull-through cache of one or more upstream registries.

Configured by Distribution's ``proxy`` section (one upstream for every repository) or
by ``dockyard.proxy`` (upstreams chosen by repository prefix). The API handlers call
the three hooks here; each is a no-op for a repository that no upstream serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from dockyard.config import Config
from dockyard.errors import Unavailable, Unsupported
from dockyard.proxy.claims import Retry
from dockyard.proxy.fetch import Finished
from dockyard.proxy.mirror import Mirror
from dockyard.proxy.routing import routes_of
from dockyard.registry import Registry, Repository
from dockyard.registry.blobs import OCTET_STREAM, BlobDescriptor
from dockyard.registry.digest import Digest
from dockyard.registry.manifest_store import StoredManifest

log = logging.getLogger("dockyard.proxy")

MIRROR = web.AppKey("mirror", Mirror)
# Expiry runs this often at most, and at least every quarter of the shortest ttl.
EXPIRY_INTERVAL = 600.0

__all__ = ["MIRROR", "Mirror", "install", "pull_blob", "pull_manifest", "refuse_writes"]


def install(
    app: web.Application,
    config: Config,
    registry: Registry,
    background: bool,
    fetched: Callable[[int], None] | None = None,
) -> None:
    """Make the application a mirror when the configuration names an upstream.
    ``fetched`` is told the size of every blob fetched from an upstream."""
    routes = routes_of(config)
    if not any(route.client is not None for route in routes):
        return
    mirror = Mirror(registry, routes, fetched)
    app[MIRROR] = mirror

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        job = None
        if background and not registry.options.read_only:
            job = asyncio.get_running_loop().create_task(_expire_periodically(mirror))
        yield
        if job is not None:
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
        await mirror.close()

    app.cleanup_ctx.append(lifecycle)


def _expiry_interval(mirror: Mirror) -> float:
    ttls = [route.ttl for route in mirror.routes if route.client is not None and route.ttl > 0]
    return min([EXPIRY_INTERVAL, *(max(ttl / 4, 1.0) for ttl in ttls)])


async def _expire_periodically(mirror: Mirror) -> None:
    interval = _expiry_interval(mirror)
    while True:
        await asyncio.sleep(interval)
        try:
            await mirror.purge_spools()
            count = await mirror.expire()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("expiring cached content failed")
            continue
        if count:
            log.info("expired %d cached manifest(s)", count)


def _mirror(request: web.Request) -> Mirror | None:
    mirror = request.app.get(MIRROR)
    if mirror is None or mirror.registry.options.read_only:
        return None
    return mirror


def _span(header: str, size: int) -> tuple[int, int]:
    # The API's own parsing, so a bad range gets the same error; imported here because
    # the API's blob handler imports this package.
    from dockyard.api.blobs import parse_range

    span = parse_range(header, size)
    return span if span is not None else (0, size - 1)


async def _within(
    pieces: AsyncIterator[bytes | memoryview], start: int, end: int | None
) -> AsyncIterator[bytes | memoryview]:
    """The bytes from ``start`` to ``end`` (inclusive; None: to the end) of a stream."""
    offset = 0
    async for piece in pieces:
        first, offset = offset, offset + len(piece)
        if end is not None and first > end:
            return
        if offset <= start:
            continue
        piece = piece[max(start - first, 0) :]
        if end is not None and offset > end + 1:
            yield piece[: len(piece) - (offset - end - 1)]
            return
        yield piece


def refuse_writes(request: web.Request, name: str) -> None:
    """Pushes and deletes in a mirrored repository: 405 UNSUPPORTED, as Distribution."""
    mirror = request.app.get(MIRROR)
    if mirror is not None and mirror.target(name) is not None:
        raise Unsupported(
            "this repository is a pull-through cache: pushes and deletes are not supported",
            detail={"name": name[:300]},
        )


async def pull_manifest(
    request: web.Request, repo: Repository, reference: str
) -> StoredManifest | None:
    """The manifest of a mirrored repository, from the cache or the upstream."""
    mirror = _mirror(request)
    target = mirror.target(repo.name) if mirror is not None else None
    if mirror is None or target is None:
        return None
    return await mirror.manifest(target, reference)


async def pull_blob(
    request: web.Request, repo: Repository, digest: Digest
) -> web.StreamResponse | BlobDescriptor | None:
    """A blob the repository does not have: None when it is not mirrored; a descriptor
    when it is now linked here (serve it as usual); else the answer, streamed from the
    upstream while it is stored."""
    mirror = _mirror(request)
    target = mirror.target(repo.name) if mirror is not None else None
    if mirror is None or target is None:
        return None
    local = await mirror.adopt_local(repo, digest)
    if local is not None:
        return local
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": OCTET_STREAM,
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    if request.method == "HEAD":
        size = await mirror.blob_size(target, digest)
        return web.Response(status=200, headers={**headers, "Content-Length": str(size)})
    for _ in range(3):
        fetch = mirror.fetch(target, digest)
        try:
            fd = await fetch.started()
            break
        except (Finished, Retry):
            # The fetch ended as this request came: stored (perhaps for another
            # repository, so linked here too), or failed and to be tried again.
            local = await mirror.adopt_local(repo, digest)
            if local is not None:
                return local
    else:
        raise Unavailable("the blob could not be fetched", detail={"digest": str(digest)})
    response = web.StreamResponse(status=200, headers=headers)
    try:
        start, end = 0, None
        if fetch.size is not None:
            response.content_length = fetch.size
            if "Range" in request.headers:
                start, end = _span(request.headers["Range"], fetch.size)
                response.set_status(206)
                response.headers["Content-Range"] = f"bytes {start}-{end}/{fetch.size}"
                response.content_length = end - start + 1
        await response.prepare(request)
        # A piece lives until the next is asked for. A plain socket sends it or copies
        # it before ``write`` returns; a TLS one may keep it queued, so it gets a copy.
        copied = request.transport is not None and bool(
            request.transport.get_extra_info("sslcontext")
        )
        async for piece in _within(fetch.pieces(fd), start, end):
            await response.write(bytes(piece) if copied else piece)
    except Exception as error:
        if not response.prepared:
            raise
        # The status line is out: cutting the connection short is the only way left to
        # tell the client that what it received is not the blob.
        log.warning("cut %s short: %s", request.path, error)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        fetch.release()
    await response.write_eof()
    return response
