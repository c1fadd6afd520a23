"""A driver that hands every operation to another; subclasses change a few of them."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence

from dockyard.storage.driver import FileInfo, FileWriter, PreparedWrites, StorageDriver


class DelegatingDriver(StorageDriver):
    def __init__(self, inner: StorageDriver) -> None:
        self.inner = inner
        self.name = inner.name
        self.atomic_holds = inner.atomic_holds
        self.remote = inner.remote

    async def read(self, path: str) -> bytes:
        return await self.inner.read(path)

    async def read_each(self, paths: Sequence[str]) -> builtins.list[bytes | None]:
        return await self.inner.read_each(paths)

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        await self.inner.write(path, data, durable)

    async def prepare_writes(
        self,
        files: Mapping[str, bytes],
        replayable: bool = False,
        removals: Sequence[str] = (),
        copies: Mapping[str, str] | None = None,
    ) -> PreparedWrites:
        return await self.inner.prepare_writes(files, replayable, removals, copies)

    def stream(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.inner.stream(path, offset, length)

    async def writer(self, path: str, resume_at: int | None = None) -> FileWriter:
        return await self.inner.writer(path, resume_at)

    async def writer_at_end(self, path: str) -> FileWriter:
        return await self.inner.writer_at_end(path)

    async def staged_writer(self, path: str) -> FileWriter | None:
        return await self.inner.staged_writer(path)

    async def stat(self, path: str) -> FileInfo:
        return await self.inner.stat(path)

    async def touch(self, path: str, mtime: float | None = None) -> None:
        await self.inner.touch(path, mtime)

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        return await self.inner.move_unless_touched(source, dest, since)

    async def list(self, path: str) -> list[str]:
        return await self.inner.list(path)

    async def move(self, source: str, dest: str) -> None:
        await self.inner.move(source, dest)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def delete_each(self, paths: Sequence[str]) -> builtins.list[bool]:
        return await self.inner.delete_each(paths)

    async def remove_empty(self, path: str) -> bool:
        return await self.inner.remove_empty(path)

    def walk(self, path: str) -> AsyncIterator[FileInfo]:
        return self.inner.walk(path)

    def local_path(self, path: str) -> str | None:
        return self.inner.local_path(path)

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        return await self.inner.redirect_url(path, method)

    async def close(self) -> None:
        await self.inner.close()
