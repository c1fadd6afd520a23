"""Catalog and tag-list figures on a store of many repositories and a repository of many tags.

The repositories and tags are written into the on-disk layout before the servers start
(see bench/layout.py). Pages are walked by following the ``Link`` header, as clients do;
"whole" asks for everything in one request (both servers get the same raised
``catalog.maxentries`` so that ``n`` = everything is allowed).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from bench.layout import Store, push_image
from bench.servers import BenchError

CATALOG_PREFIX = "bench-catalog"
TAGS_REPO = "bench-tags/many"
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


def populate(root: Path, repositories: int, tags: int) -> None:
    store = Store(root)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = b"bench listing layer"
    # One manifest shared by every repository: the listing reads names, not content.
    digest = ""
    for index in range(repositories):
        repo = f"{CATALOG_PREFIX}/repo-{index:05d}"
        digest = push_image(store, repo, config, [layer])
        store.tag(repo, "latest", digest)
    digest = push_image(store, TAGS_REPO, config, [layer])
    for index in range(tags):
        store.tag(TAGS_REPO, f"t{index:05d}", digest)


async def _get_json(http: aiohttp.ClientSession, url: str) -> tuple[dict[str, object], str | None]:
    async with http.get(url) as response:
        if response.status != 200:
            raise BenchError(f"GET {url}: {response.status} {(await response.text())[:300]}")
        body = await response.json()
        link = response.headers.get("Link")
    match = _NEXT.search(link) if link else None
    return body, (urljoin(url, match.group(1)) if match else None)


async def walk(
    http: aiohttp.ClientSession, first_url: str, field: str, page: int | None
) -> tuple[float, int, int, bool]:
    """(seconds, entries, requests, paged) following Link headers from ``first_url``.

    ``paged`` is False when a server ignored ``n`` and answered everything at once
    (Distribution 2.8 does for tag lists): the walk then stops after that one answer.
    """
    started = time.perf_counter()
    url: str | None = first_url
    entries = requests = 0
    paged = True
    while url is not None:
        body, url = await _get_json(http, url)
        names = body.get(field) or []
        if not isinstance(names, list):
            raise BenchError(f"{first_url}: {field} is not a list")
        entries += len(names)
        requests += 1
        if page is not None and len(names) > page:
            paged = False
            break
    return time.perf_counter() - started, entries, requests, paged
