"""The repository catalog: every directory under ``repositories/`` that has manifests.

A page is found by a depth-first walk in path order that skips every subtree wholly
before ``last`` and stops once it has ``n`` names and knows whether more follow, so a
page costs about its own size, not the size of the registry.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools

from dockyard.registry import layout
from dockyard.storage.driver import PathNotFoundError, StorageDriver


def path_order_key(name: str) -> tuple[str, ...]:
    """Order names component by component, as a depth-first walk (and Distribution) does:
    ``a/b`` comes before ``a-b``."""
    return tuple(name.split("/"))


class _PageFull(Exception):
    """Stops the walk once the page and the "more follow" answer are known."""


# Directories listed between two yields to the event loop: a listing the driver kept
# answers without awaiting anything, and a walk over 10,000 repositories must not hold
# every other request back until it is done.
LISTINGS_PER_TURN = 256


class _PageWalk:
    def __init__(self, driver: StorageDriver, after: tuple[str, ...] | None, n: int | None):
        self.driver = driver
        self.after = after
        self.n = n
        self.found: list[str] = []
        self.listed = 0

    async def visit(self, path: str, key: tuple[str, ...]) -> None:
        self.listed += 1
        if self.listed % LISTINGS_PER_TURN == 0:
            await asyncio.sleep(0)
        try:
            children = await self.driver.list(path)
        except PathNotFoundError:
            return
        after = self.after
        if key and "_manifests" in children and (after is None or key > after):
            if self.n is not None and len(self.found) >= self.n:
                raise _PageFull
            self.found.append("/".join(key))
        start = 0
        if after is not None and len(after) > len(key) and after[: len(key)] == key:
            # Drivers list names sorted: every child before the next component of `after`
            # has only names before it, and bisection skips them all at once (a page deep
            # into 10,000 repositories of one namespace does not step over the others).
            start = bisect.bisect_left(children, after[len(key)])
        for child in itertools.islice(children, start, None):
            # Directories starting with "_" hold a repository's data, never repositories.
            if child.startswith("_"):
                continue
            # A file here is not listable: visit finds nothing in it, without a stat.
            await self.visit(f"{path}/{child}", (*key, child))


class Catalog:
    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    async def repositories(self) -> list[str]:
        names, _ = await self.page(None, None)
        return names

    async def page(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Up to ``n`` names (all when None) after ``last``, and whether more follow."""
        walk = _PageWalk(self.driver, path_order_key(last) if last else None, n)
        try:
            await walk.visit(layout.REPOSITORIES, ())
        except _PageFull:
            return walk.found[:n], True
        return walk.found, False
