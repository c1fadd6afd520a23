"""The repository catalog: every directory under ``repositories/`` that has manifests.

A page is found by a depth-first walk in path order that skips every subtree wholly
before ``last`` and stops once it has ``n`` names and knows whether more follow, so a
page costs about its own size, not the size of the registry.
"""

from __future__ import annotations

from dockyard.registry import layout
from dockyard.storage.driver import PathNotFoundError, StorageDriver


def path_order_key(name: str) -> tuple[str, ...]:
    """Order names component by component, as a depth-first walk (and Distribution) does:
    ``a/b`` comes before ``a-b``."""
    return tuple(name.split("/"))


class _PageFull(Exception):
    """Stops the walk once the page and the "more follow" answer are known."""


class Catalog:
    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    async def repositories(self) -> list[str]:
        names, _ = await self.page(None, None)
        return names

    async def page(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Up to ``n`` names (all when None) after ``last``, and whether more follow."""
        found: list[str] = []
        after = path_order_key(last) if last else None
        try:
            await self._visit(layout.REPOSITORIES, (), after, n, found)
        except _PageFull:
            return found[:n], True
        return found, False

    async def _visit(
        self,
        path: str,
        key: tuple[str, ...],
        after: tuple[str, ...] | None,
        n: int | None,
        found: list[str],
    ) -> None:
        try:
            children = await self.driver.list(path)
        except PathNotFoundError:
            return
        if key and "_manifests" in children and (after is None or key > after):
            if n is not None and len(found) >= n:
                raise _PageFull
            found.append("/".join(key))
        for child in children:
            # Directories starting with "_" hold a repository's data, never repositories.
            if child.startswith("_"):
                continue
            child_key = (*key, child)
            # Every name below child_key sorts before `after` unless child_key is a prefix
            # of it or sorts after it.
            if after is not None and child_key < after and after[: len(child_key)] != child_key:
                continue
            # A file here is not listable: _visit finds nothing in it, without a stat.
            await self._visit(f"{path}/{child}", child_key, after, n, found)
