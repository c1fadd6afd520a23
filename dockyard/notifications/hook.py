"""Events derived from the API's answers, in one middleware.

Which event a request makes follows from its route, method and status, as
Distribution emits them: a manifest ``PUT`` is a push, a ``GET`` of a manifest or a
blob a pull (a ``HEAD`` is not), a completed upload a blob push, a cross-repository
mount a mount, a ``DELETE`` of a manifest, tag, blob or repository a delete. The
details come from the response headers (``Docker-Content-Digest``, ``Content-Type``)
and, where a response does not carry them, from storage (a pushed manifest's bytes, a
blob's size). The event is on disk before the response leaves; delivery happens later,
in the background.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from dockyard.api.context import registry_of, urls_of
from dockyard.api.observe import REQUEST_INFO
from dockyard.auth.http import identity_of
from dockyard.errors import RegistryError
from dockyard.notifications import events
from dockyard.notifications.notifier import Notifier
from dockyard.registry.digest import Digest

log = logging.getLogger("dockyard.notifications")

_REPOSITORY_DELETE = re.compile(r"^_dockyard/repositories/(?P<name>.+)$")
_MANIFEST = re.compile(r"^(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
_UPLOAD_START = re.compile(r"^(?P<name>.+)/blobs/uploads/?$")
_UPLOAD = re.compile(r"^(?P<name>.+)/blobs/uploads/[^/]+$")
_BLOB = re.compile(r"^(?P<name>.+)/blobs/(?P<digest>[^/]+)$")


def middleware(notifier: Notifier, prefix: str) -> Middleware:
    api = f"{prefix}/v2/"

    @web.middleware
    async def notify(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(api) or request.method == "HEAD":
            return await handler(request)
        # Deleting a manifest deletes the tags on it; each is an event of its own.
        untagged = await _tags_on_deleted_manifest(notifier, request, api)
        try:
            response = await handler(request)
        except web.HTTPRedirection as redirect:
            # A blob served from object storage by a redirect is pulled all the same.
            await _observe(notifier, request, redirect.status, redirect.headers, None, api, [])
            raise
        body = response.body if isinstance(response, web.Response) else None
        await _observe(
            notifier,
            request,
            response.status,
            response.headers,
            body if isinstance(body, bytes) else None,
            api,
            untagged,
        )
        return response

    return notify


async def _tags_on_deleted_manifest(
    notifier: Notifier, request: web.Request, api: str
) -> list[str]:
    if request.method != "DELETE" or not notifier.active:
        return []
    if not registry_of(request).options.delete_enabled:
        return []  # refused: nothing is deleted
    match = _MANIFEST.match(_tail(request, api))
    if match is None or _REPOSITORY_DELETE.match(_tail(request, api)):
        return []
    reference = unquote(match["reference"])
    if ":" not in reference:
        return []
    try:
        repository = registry_of(request).repository(unquote(match["name"]))
        return await repository.tags.pointing_at(Digest.parse(reference))
    except (RegistryError, OSError):
        # The handler will refuse the request for the same reason.
        return []


def _tail(request: web.Request, api: str) -> str:
    return request.raw_path.split("?", 1)[0][len(api) :]


async def _observe(
    notifier: Notifier,
    request: web.Request,
    status: int,
    headers: Any,
    body: bytes | None,
    api: str,
    untagged: list[str],
) -> None:
    if not notifier.active or status >= 400 or status < 200:
        return
    try:
        event = await _event(notifier, request, status, headers, body, api)
    except Exception:
        # A notification must never cost the client its answer.
        log.exception("notifications: cannot describe %s %s", request.method, request.path)
        return
    if event is None:
        return
    notifier.publish(event)
    if event["action"] == events.DELETE and "digest" in event["target"]:
        repository = event["target"]["repository"]
        for tag in untagged:
            notifier.publish(
                events.event(
                    events.DELETE,
                    events.deleted_target(repository, tag=tag),
                    _request_record(request),
                    _actor(request),
                    notifier.source,
                )
            )


async def _event(
    notifier: Notifier,
    request: web.Request,
    status: int,
    headers: Any,
    body: bytes | None,
    api: str,
) -> dict[str, Any] | None:
    tail = _tail(request, api)
    method = request.method
    digest_text = headers.get("Docker-Content-Digest")
    found: tuple[str, dict[str, Any]] | None = None
    match = _REPOSITORY_DELETE.match(tail)
    if match:
        if method == "DELETE":
            found = (events.DELETE, events.deleted_target(unquote(match["name"])))
    elif match := _MANIFEST.match(tail):
        found = await _manifest(notifier, request, method, match, digest_text, headers, body)
    elif match := _UPLOAD_START.match(tail):
        if method == "POST" and status == 201 and digest_text:
            found = await _created(request, unquote(match["name"]), Digest.parse(digest_text))
    elif match := _UPLOAD.match(tail):
        if method == "PUT" and status == 201 and digest_text:
            name = unquote(match["name"])
            found = (events.PUSH, await _blob(request, name, Digest.parse(digest_text)))
    elif match := _BLOB.match(tail):
        name = unquote(match["name"])
        digest = Digest.parse(digest_text or unquote(match["digest"]))
        if method == "GET":
            found = (events.PULL, await _blob(request, name, digest))
        elif method == "DELETE":
            found = (events.DELETE, events.deleted_target(name, digest))
    if found is None:
        return None
    action, target = found
    return events.event(action, target, _request_record(request), _actor(request), notifier.source)


async def _manifest(
    notifier: Notifier,
    request: web.Request,
    method: str,
    match: re.Match[str],
    digest_text: str | None,
    headers: Any,
    body: bytes | None,
) -> tuple[str, dict[str, Any]] | None:
    name, reference = unquote(match["name"]), unquote(match["reference"])
    tag = None if ":" in reference else reference
    if method == "DELETE":
        if tag is not None:
            return events.DELETE, events.deleted_target(name, tag=tag)
        return events.DELETE, events.deleted_target(name, Digest.parse(reference))
    if digest_text is None or method not in ("GET", "PUT"):
        return None
    digest = Digest.parse(digest_text)
    if method == "GET" and body is not None:
        media_type = str(headers.get("Content-Type", ""))
        data = body
    else:
        # The response to a push has no body; the stored manifest is what was pushed.
        stored = await registry_of(request).repository(name).manifests.get(digest)
        media_type, data = stored.media_type, stored.data
    action = events.PUSH if method == "PUT" else events.PULL
    url = urls_of(request).v2(request, f"{name}/manifests/{digest}")
    target = events.manifest_target(
        name, digest, media_type, data, url, tag, notifier.include_references
    )
    return action, target


async def _created(request: web.Request, name: str, digest: Digest) -> tuple[str, dict[str, Any]]:
    """A ``POST`` answered 201: a cross-repository mount, or a single-request upload."""
    source = request.query.get("from")
    mounted = request.query.get("mount")
    uploaded = request.query.get("digest")
    if source and mounted == str(digest) and (uploaded != mounted or not request.body_exists):
        return events.MOUNT, await _blob(request, name, digest, source)
    return events.PUSH, await _blob(request, name, digest)


async def _blob(
    request: web.Request, name: str, digest: Digest, source: str | None = None
) -> dict[str, Any]:
    try:
        size: int | None = (await registry_of(request).blobs.stat(digest)).size
    except (RegistryError, OSError):
        # A mirror streaming a blob it has not stored (yet): what it announced.
        size = request.content_length if request.method != "GET" else None
    url = urls_of(request).v2(request, f"{name}/blobs/{digest}")
    return events.blob_target(name, digest, size, url, source)


def _request_record(request: web.Request) -> events.RequestRecord:
    # The id the access log and the metrics give the request (observe's middleware).
    info = request.get(REQUEST_INFO)
    return events.RequestRecord(
        id=info.id if info is not None else str(uuid.uuid4()),
        addr=_remote_addr(request),
        host=request.host,
        method=request.method,
        useragent=request.headers.get("User-Agent", ""),
    )


def _remote_addr(request: web.Request) -> str:
    # Like Distribution: a proxy's X-Forwarded-For or X-Real-Ip, else the peer.
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    if forwarded:
        return forwarded
    real = request.headers.get("X-Real-Ip", "").strip()
    if real:
        return real
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return request.remote or ""


def _actor(request: web.Request) -> str | None:
    identity = identity_of(request)
    return identity.user if identity is not None else None
