"""Tag lists and the catalog, paged with ``n``/``last`` and RFC 5988 ``Link`` headers."""

from __future__ import annotations

from aiohttp import web

from dockyard.api.context import CATALOG_MAX_ENTRIES, HEAP_TRIMMER, registry_of, urls_of
from dockyard.errors import NameUnknown, PaginationNumberInvalid
from dockyard.registry import layout
from dockyard.storage.driver import PathNotFoundError


def _page_size(request: web.Request, maximum: int | None) -> int | None:
    text = request.query.get("n")
    if text is None or text == "":
        return None
    try:
        n = int(text)
    except ValueError:
        raise PaginationNumberInvalid(detail={"n": text[:50]}) from None
    if n < 0 or (maximum is not None and n > maximum):
        raise PaginationNumberInvalid(detail={"n": n, "max": maximum})
    return n


def _link(request: web.Request, path: str, n: int, last: str) -> str:
    return f'<{urls_of(request).v2_path(path, {"n": str(n), "last": last})}>; rel="next"'


async def list_tags(request: web.Request, name: str) -> web.StreamResponse:
    registry = registry_of(request)
    repo = registry.repository(name)
    n = _page_size(request, None)
    try:
        await registry.driver.stat(layout.repository(repo.name))
    except PathNotFoundError:
        raise NameUnknown(detail={"name": repo.name}) from None
    tags, more = await repo.tags.page(n, request.query.get("last"))
    headers = {}
    if n and more:
        headers["Link"] = _link(request, f"{repo.name}/tags/list", n, tags[-1])
    response = web.json_response({"name": repo.name, "tags": tags}, headers=headers)
    request.app[HEAP_TRIMMER].listed(len(tags))
    return response


async def list_catalog(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    maximum = request.app[CATALOG_MAX_ENTRIES]
    n = _page_size(request, maximum)
    size = maximum if n is None else n
    names, more = await registry.catalog.page(size, request.query.get("last"))
    headers = {}
    if more and names:
        headers["Link"] = _link(request, "_catalog", size, names[-1])
    response = web.json_response({"repositories": names}, headers=headers)
    request.app[HEAP_TRIMMER].listed(len(names))
    return response
