"""Dispatch ``/v2/...`` paths whose repository names contain slashes.

One catch-all route and a table of patterns, tried in order: a name may itself end in
``blobs`` or ``manifests``, so the suffix decides, as in Distribution's router.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from dockyard import proxy
from dockyard.api import blobs, extensions, listing, manifests, referrers, uploads
from dockyard.api.context import urls_of
from dockyard.errors import NameUnknown, Unsupported

Endpoint = Callable[..., Awaitable[web.StreamResponse]]


async def base(request: web.Request) -> web.StreamResponse:
    return web.json_response({})


# Each pattern with a literal every path it matches contains: a path without the literal
# is not tried against the pattern (a manifest GET runs two patterns instead of seven).
_ROUTES: list[tuple[str, re.Pattern[str], dict[str, Endpoint]]] = [
    ("", re.compile(r"^/?$"), {"GET": base, "HEAD": base}),
    ("_catalog", re.compile(r"^_catalog$"), {"GET": listing.list_catalog}),
    ("_dockyard/usage", re.compile(r"^_dockyard/usage$"), {"GET": extensions.usage}),
    (
        "_dockyard/gc",
        re.compile(r"^_dockyard/gc$"),
        {"GET": extensions.collection_status, "POST": extensions.collect},
    ),
    (
        "_dockyard/repositories/",
        re.compile(r"^_dockyard/repositories/(?P<name>.+)$"),
        {"GET": extensions.repository_details, "DELETE": extensions.delete_repository},
    ),
    ("/tags/list", re.compile(r"^(?P<name>.+)/tags/list$"), {"GET": listing.list_tags}),
    (
        "/manifests/",
        re.compile(r"^(?P<name>.+)/manifests/(?P<reference>[^/]+)$"),
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    (
        "/blobs/uploads",
        re.compile(r"^(?P<name>.+)/blobs/uploads/?$"),
        {"POST": uploads.start_upload},
    ),
    (
        "/blobs/uploads/",
        re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)$"),
        {
            "GET": uploads.upload_status,
            "PATCH": uploads.patch_upload,
            "PUT": uploads.finish_upload,
            "DELETE": uploads.cancel_upload,
        },
    ),
    (
        "/blobs/",
        re.compile(r"^(?P<name>.+)/blobs/(?P<digest_text>[^/]+)$"),
        {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob},
    ),
    (
        "/referrers/",
        re.compile(r"^(?P<name>.+)/referrers/(?P<digest_text>[^/]+)$"),
        {"GET": referrers.list_referrers},
    ),
]


# Paths matched last are remembered with what they matched: a pull asks for the same
# few manifests and blobs again and again (and the auth middleware matches each path
# before the router does). Only paths up to REMEMBERED_PATH_LENGTH characters are kept,
# so that the table stays small whatever clients send.
PATHS_REMEMBERED = 1024
REMEMBERED_PATH_LENGTH = 256

_Match = tuple[dict[str, Endpoint], tuple[tuple[str, str], ...]]


def _match(tail: str) -> _Match | None:
    # Matched before percent-decoding (see raw_tail), each parameter decoded after.
    for literal, pattern, methods in _ROUTES:
        if literal not in tail:
            continue
        match = pattern.match(tail)
        if match is not None:
            return methods, tuple((key, unquote(raw)) for key, raw in match.groupdict().items())
    return None


_remembered_match = functools.lru_cache(maxsize=PATHS_REMEMBERED)(_match)


def resolve(tail: str, method: str) -> tuple[Endpoint, dict[str, Any]]:
    """The endpoint for a raw tail and method, and its percent-decoded parameters."""
    found = _remembered_match(tail) if len(tail) <= REMEMBERED_PATH_LENGTH else _match(tail)
    if found is None:
        raise NameUnknown("no such endpoint", detail={"path": tail[:300]})
    methods, params = found
    endpoint = methods.get(method)
    if endpoint is None:
        raise Unsupported(
            f"method {method} is not allowed here",
            headers={"Allow": ", ".join(sorted(methods))},
        )
    return endpoint, dict(params)


def raw_tail(request: web.Request) -> str:
    """The path after ``/v2/`` as the client encoded it.

    Matching happens before percent-decoding, so an encoded ``/`` inside a tag or an
    upload id stays inside that parameter and is refused by its own validation.
    """
    path = request.raw_path.split("?", 1)[0]
    return path[len(urls_of(request).prefix) + len("/v2") :].lstrip("/")


async def dispatch(request: web.Request) -> web.StreamResponse:
    endpoint, params = resolve(raw_tail(request), request.method)
    if request.method not in ("GET", "HEAD") and "name" in params:
        proxy.refuse_writes(request, params["name"])
    return await endpoint(request, **params)
