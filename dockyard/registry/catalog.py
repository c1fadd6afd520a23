"""The repository catalog: every directory under ``repositories/`` that has manifests."""

from __future__ import annotations

from dockyard.registry import layout
from dockyard.storage.driver import PathNotFoundError, StorageDriver


def path_order_key(name: str) -> tuple[str, ...]:
    """Order names component by component, as a depth-first walk (and Distribution) does:
    ``a/b`` comes before ``a-b``."""
    return tuple(name.split("/"))


class Catalog:
    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    async def repositories(self) -> list[str]:
        found: list[str] = []
        await self._collect(layout.REPOSITORIES, "", found)
        return found

    async def _collect(self, path: str, prefix: str, found: list[str]) -> None:
        try:
            children = await self.driver.list(path)
        except PathNotFoundError:
            return
        if "_manifests" in children:
            found.append(prefix)
        for child in children:
            # Directories starting with "_" hold a repository's data, never repositories.
            if child.startswith("_"):
                continue
            child_path = f"{path}/{child}"
            try:
                if not (await self.driver.stat(child_path)).is_dir:
                    continue
            except PathNotFoundError:
                continue
            await self._collect(child_path, f"{prefix}/{child}" if prefix else child, found)

    async def page(self, n: int, last: str | None) -> tuple[list[str], bool]:
        """Up to ``n`` names after ``last``, and whether more follow."""
        names = await self.repositories()
        if last:
            key = path_order_key(last)
            names = [name for name in names if path_order_key(name) > key]
        return names[:n], len(names) > n
