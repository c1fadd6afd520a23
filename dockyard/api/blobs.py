"""``/v2/<name>/blobs/<digest>``: HEAD, GET (with Range) and DELETE."""

from __future__ import annotations

import re
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETAG_ANY, ETag
from aiohttp.web_request import BaseRequest

from dockyard import proxy
from dockyard.api import sendfile
from dockyard.api.context import empty, registry_of
from dockyard.errors import BlobUnknown, RangeInvalid
from dockyard.registry.blobs import OCTET_STREAM
from dockyard.registry.digest import Digest
from dockyard.storage.driver import PathNotFoundError

SMALL_BLOB = 64 * 1024


class BlobFileResponse(web.FileResponse):
    """``sendfile``, with the digest as the ETag, as Distribution answers: aiohttp's own
    (modification time and size) would differ between small and large blobs and change
    whenever a push holds the blob."""

    @property
    def etag(self) -> ETag | None:
        return web.FileResponse.etag.fget(self)  # type: ignore[attr-defined,no-any-return]

    @etag.setter
    def etag(self, value: ETag | str | None) -> None:
        pass  # the digest ETag among the headers stays

    async def _sendfile(
        self, request: BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        # aiohttp's own calls loop.sendfile, which uvloop lacks (dockyard.api.sendfile).
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        if self.compression or not sendfile.can_send_directly(transport):
            return await self._sendfile_fallback(writer, fobj, offset, count)
        await sendfile.send(transport, fobj, offset, count)
        await web.StreamResponse.write_eof(self)
        return writer


def _not_modified(request: web.Request, digest: Digest) -> bool:
    tags = request.if_none_match
    return tags is not None and any(tag.value in (str(digest), ETAG_ANY) for tag in tags)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, as (start, end inclusive); None for the whole blob."""
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise RangeInvalid(
            detail={"Range": header[:100]}, headers={"Content-Range": f"bytes */{size}"}
        )
    first, last = match.group(1), match.group(2)
    if not first:
        start, end = max(size - int(last), 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeInvalid(
            detail={"Range": header[:100]}, headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end


async def get_blob(request: web.Request, name: str, digest_text: str) -> web.StreamResponse:
    registry = registry_of(request)
    digest = Digest.parse(digest_text)
    repo = registry.repository(name)
    try:
        descriptor = await repo.blobs.stat(digest)
    except BlobUnknown:
        # A mirror brings the blob in from its upstream (dockyard.proxy).
        pulled = await proxy.pull_blob(request, repo, digest)
        if pulled is None:
            raise
        if isinstance(pulled, web.StreamResponse):
            return pulled
        descriptor = pulled
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": OCTET_STREAM,
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        # Content never changes under its digest.
        "Cache-Control": "max-age=31536000",
    }
    if request.method == "HEAD":
        # Clients HEAD a blob to skip uploading it, then reference it from a manifest:
        # mark it in use so a collection running meanwhile keeps it. Read-only, nothing
        # is pushed or collected here, and a read must not write (the store may be a
        # read-only mount).
        if not registry.options.read_only and not await repo.blobs.hold(digest):
            # Gone since the descriptor cache learnt of it (a collection, another replica).
            await repo.blobs.forget(digest)
            raise BlobUnknown(detail={"digest": str(digest)})
        return web.Response(status=200, headers={**headers, "Content-Length": str(descriptor.size)})
    if _not_modified(request, digest):
        # The client's copy is the blob: content never changes under its digest.
        headers.pop("Content-Type")
        return web.Response(status=304, headers=headers)
    span = (
        parse_range(request.headers["Range"], descriptor.size)
        if "Range" in request.headers
        else None
    )
    if span is None and descriptor.size <= SMALL_BLOB:
        # Configs and small layers: one read beats setting up sendfile.
        try:
            body = await registry.blobs.read(digest)
        except BlobUnknown:
            await repo.blobs.forget(digest)
            raise
        return web.Response(status=200, body=body, headers=headers)
    redirect = await registry.blobs.redirect_url(digest, request.method)
    if redirect:
        raise web.HTTPTemporaryRedirect(redirect, headers=headers)
    local = registry.blobs.local_path(digest)
    if local is not None:
        # FileResponse answers with sendfile and handles the Range header itself; the
        # range was checked above so that a bad one gets the registry's error body.
        return BlobFileResponse(local, headers=headers)
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    if span:
        start, end = span
        response.headers["Content-Range"] = f"bytes {start}-{end}/{descriptor.size}"
        response.content_length = end - start + 1
        stream = registry.blobs.stream(digest, start, end - start + 1)
    else:
        response.content_length = descriptor.size
        stream = registry.blobs.stream(digest)
    try:
        # The first piece before the headers: a blob the descriptor cache still knew but
        # a collection removed is a proper BLOB_UNKNOWN, not a response cut short.
        first = await anext(stream)
    except PathNotFoundError:
        await repo.blobs.forget(digest)
        raise BlobUnknown(detail={"digest": str(digest)}) from None
    except StopAsyncIteration:
        first = b""
    await response.prepare(request)
    await response.write(first)
    async for chunk in stream:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_blob(request: web.Request, name: str, digest_text: str) -> web.StreamResponse:
    registry = registry_of(request)
    registry.check_deletable()
    digest = Digest.parse(digest_text)
    await registry.repository(name).blobs.unlink(digest)
    return empty(202, {"Docker-Content-Digest": str(digest)})
