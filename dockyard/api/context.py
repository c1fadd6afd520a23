"""What every handler reaches through the application object (no module globals)."""

from __future__ import annotations

from aiohttp import web

from dockyard.api.urls import UrlBuilder
from dockyard.memory import HeapTrimmer
from dockyard.registry import Registry

REGISTRY = web.AppKey("registry", Registry)
URLS = web.AppKey("urls", UrlBuilder)
CATALOG_MAX_ENTRIES = web.AppKey("catalog_max_entries", int)
HEAP_TRIMMER = web.AppKey("heap_trimmer", HeapTrimmer)


def registry_of(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def urls_of(request: web.Request) -> UrlBuilder:
    return request.app[URLS]


def empty(status: int, headers: dict[str, str]) -> web.Response:
    """A body-less answer that says so: Content-Length 0."""
    return web.Response(status=status, headers={**headers, "Content-Length": "0"})
