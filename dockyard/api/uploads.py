"""``/v2/<name>/blobs/uploads/``: start, mount, chunk, finish, status and cancel."""

from __future__ import annotations

from aiohttp import web

from dockyard.api.context import empty, registry_of, urls_of
from dockyard.errors import DigestInvalid, SizeInvalid
from dockyard.registry.blobs import BlobDescriptor
from dockyard.registry.digest import Digest
from dockyard.registry.names import NAME_PATTERN
from dockyard.registry.uploads import (
    LastChunk,
    UploadSession,
    parse_content_range,
    range_headers,
)


def _session_headers(request: web.Request, session: UploadSession) -> dict[str, str]:
    return {
        "Location": urls_of(request).v2(
            request, f"{session.repository}/blobs/uploads/{session.id}"
        ),
        "Docker-Upload-UUID": session.id,
        **range_headers(session.size),
    }


def _blob_created(request: web.Request, name: str, blob: BlobDescriptor) -> web.Response:
    return empty(
        201,
        {
            "Location": urls_of(request).v2(request, f"{name}/blobs/{blob.digest}"),
            "Docker-Content-Digest": str(blob.digest),
        },
    )


def _has_body(request: web.Request) -> bool:
    return (
        request.content_length not in (None, 0)
        or request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    )


async def start_upload(request: web.Request, name: str) -> web.StreamResponse:
    registry = registry_of(request)
    registry.check_writable()
    repo = registry.repository(name)
    mount = request.query.get("mount")
    source = request.query.get("from")
    if mount is not None and source and NAME_PATTERN.match(source):
        mounted = Digest.parse(mount)
        origin = registry.repository(source)
        if await origin.blobs.is_linked(mounted) and await registry.blobs.hold(mounted):
            await repo.blobs.link(mounted)
            return _blob_created(request, name, await registry.blobs.stat(mounted))
    digest_text = request.query.get("digest")
    digest = Digest.parse(digest_text) if digest_text is not None else None
    session = await registry.uploads.start(repo.name)
    if digest is not None:
        blob = await registry.uploads.finish(
            repo.name,
            session.id,
            digest,
            _declared_size(request),
            LastChunk(request.content.iter_any()),
            linked_into=repo.blobs,
        )
        return _blob_created(request, name, blob)
    return empty(202, _session_headers(request, session))


def _declared_size(request: web.Request) -> int | None:
    return request.content_length if request.headers.get("Transfer-Encoding") is None else None


async def upload_status(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    session = await registry.uploads.get(registry.repository(name).name, upload_id)
    return empty(204, _session_headers(request, session))


async def patch_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    registry.check_writable()
    repo = registry.repository(name)
    session = await _append(request, repo.name, upload_id)
    return empty(202, _session_headers(request, session))


async def _append(request: web.Request, name: str, upload_id: str) -> UploadSession:
    return await registry_of(request).uploads.append(
        name, upload_id, request.content.iter_any(), *_chunk_range(request)
    )


def _chunk_range(request: web.Request) -> tuple[int | None, int | None]:
    """The chunk's first and last byte from ``Content-Range``, checked against its length."""
    start = end = None
    if "Content-Range" in request.headers:
        start, end = parse_content_range(request.headers["Content-Range"])
        length = request.content_length
        if length is not None and length != end - start + 1:
            raise SizeInvalid(
                "Content-Length does not match Content-Range",
                detail={
                    "Content-Length": length,
                    "Content-Range": request.headers["Content-Range"],
                },
            )
    return start, end


async def finish_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    registry.check_writable()
    repo = registry.repository(name)
    digest_text = request.query.get("digest")
    if not digest_text:
        # Look the session up first so an unknown session says so rather than this.
        await registry.uploads.get(repo.name, upload_id)
        raise DigestInvalid("digest parameter is required to finish an upload")
    digest = Digest.parse(digest_text)
    last = (
        LastChunk(request.content.iter_any(), *_chunk_range(request))
        if _has_body(request)
        else None
    )
    blob = await registry.uploads.finish(
        repo.name, upload_id, digest, last=last, linked_into=repo.blobs
    )
    return _blob_created(request, name, blob)


async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    registry = registry_of(request)
    registry.check_writable()
    await registry.uploads.cancel(registry.repository(name).name, upload_id)
    return empty(204, {})
