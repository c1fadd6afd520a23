"""Drivers that remember what a collection asked of the store, around a real one."""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import StorageDriver, StorageError


class BatchRecorder(DelegatingDriver):
    """Remembers each ``delete_each`` call's paths, in order; fails those that name
    ``/broken``."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.batches: list[list[str]] = []

    async def delete_each(self, paths: Sequence[str]) -> list[bool]:
        self.batches.append(list(paths))
        if any(path.startswith("/broken") for path in paths):
            raise StorageError("the disk went away")
        return await self.inner.delete_each(paths)
