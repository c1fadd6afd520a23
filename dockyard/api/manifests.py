"""``/v2/<name>/manifests/<reference>``: GET, HEAD, PUT and DELETE by tag or digest."""

from __future__ import annotations

from aiohttp import web

from dockyard import proxy
from dockyard.api.context import empty, registry_of, urls_of
from dockyard.errors import ManifestInvalid, ManifestUnknown
from dockyard.registry import Repository
from dockyard.registry.digest import Digest
from dockyard.registry.manifests import MAX_MANIFEST_SIZE
from dockyard.registry.names import check_tag, is_valid_tag


class ManifestTooLarge(ManifestInvalid):
    status = 413
    default_message = f"manifest is larger than {MAX_MANIFEST_SIZE} bytes"


def _is_digest(reference: str) -> bool:
    return ":" in reference


async def _resolve(repo: Repository, reference: str) -> Digest:
    if _is_digest(reference):
        return Digest.parse(reference)
    if not is_valid_tag(reference):
        raise ManifestUnknown(detail={"tag": reference[:200]})
    return await repo.tags.resolve(reference)


async def get_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    repo = registry_of(request).repository(name)
    # A mirror answers from its cache or its upstream (dockyard.proxy).
    stored = await proxy.pull_manifest(request, repo, reference) or await repo.manifests.get(
        await _resolve(repo, reference)
    )
    headers = {
        "Docker-Content-Digest": str(stored.digest),
        "Content-Type": stored.media_type,
        "ETag": f'"{stored.digest}"',
    }
    if request.method == "HEAD":
        return web.Response(
            status=200, headers={**headers, "Content-Length": str(len(stored.data))}
        )
    return web.Response(status=200, body=stored.data, headers=headers)


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_MANIFEST_SIZE:
        raise ManifestTooLarge()
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > MAX_MANIFEST_SIZE:
            raise ManifestTooLarge()
    return bytes(data)


async def put_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    registry = registry_of(request)
    registry.check_writable()
    repo = registry.repository(name)
    tag, digest = (
        (None, Digest.parse(reference)) if _is_digest(reference) else (check_tag(reference), None)
    )
    data = await _read_body(request)
    manifest = await repo.manifests.put(data, request.headers.get("Content-Type", ""), tag, digest)
    headers = {
        "Location": urls_of(request).v2(request, f"{repo.name}/manifests/{manifest.digest}"),
        "Docker-Content-Digest": str(manifest.digest),
    }
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject.digest)
    return empty(201, headers)


async def delete_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    registry = registry_of(request)
    registry.check_deletable()
    repo = registry.repository(name)
    if _is_digest(reference):
        await repo.manifests.delete(Digest.parse(reference))
    else:
        if not is_valid_tag(reference):
            raise ManifestUnknown(detail={"tag": reference[:200]})
        await repo.tags.untag(reference)
    return empty(202, {})
