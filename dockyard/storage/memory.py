"""The ``inmemory`` driver: a tree of directories and byte arrays, for tests and demos.

It follows the filesystem driver's semantics throughout, down to the cases that are
errors there (writing over a directory, moving a directory into itself), so a test that
passes against one passes against the other. Nothing here blocks, so every operation
runs on the event loop and none of them interleave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from dockyard.storage.driver import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    PathNotFoundError,
    StorageDriver,
    StorageError,
    check_path,
)

CHUNK_SIZE = 1 << 20


@dataclass(eq=False)
class _File:
    data: bytearray = field(default_factory=bytearray)
    mtime: float = field(default_factory=time.time)

    def touch(self) -> None:
        self.mtime = time.time()


@dataclass(eq=False)
class _Directory:
    children: dict[str, _File | _Directory] = field(default_factory=dict)
    mtime: float = field(default_factory=time.time)

    def put(self, name: str, node: _File | _Directory) -> None:
        self.children[name] = node
        self.mtime = time.time()

    def remove(self, name: str) -> None:
        del self.children[name]
        self.mtime = time.time()


def _holds_no_file(node: _File | _Directory) -> bool:
    if isinstance(node, _File):
        return False
    return all(_holds_no_file(child) for child in node.children.values())


def _touched_since(node: _File | _Directory, since: float) -> bool:
    if isinstance(node, _File):
        return node.mtime >= since
    return any(_touched_since(child, since) for child in node.children.values())


def _parts(path: str) -> list[str]:
    return check_path(path).split("/")[1:]


def _sorted_children(directory: _Directory) -> Iterator[tuple[str, _File | _Directory]]:
    return iter(sorted(directory.children.items(), key=lambda item: item[0]))


def _info(path: str, node: _File | _Directory) -> FileInfo:
    if isinstance(node, _Directory):
        return FileInfo(path, 0, node.mtime, True)
    return FileInfo(path, len(node.data), node.mtime, False)


class _MemoryWriter(FileWriter):
    def __init__(self, tree: _Tree, path: str, file: _File) -> None:
        self._tree = tree
        self._path = path
        self._file = file
        # Counted rather than read from the file, as on a filesystem, where another writer
        # may change the file underneath this one.
        self._size = len(file.data)
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer for {self._path} is closed")

    async def write(self, data: bytes) -> None:
        self._check_open()
        # Appends to the file it opened even if the path was replaced meanwhile, as an
        # open file descriptor does.
        self._file.data += data
        self._file.touch()
        self._size += len(data)

    async def commit(self) -> None:
        self._check_open()

    async def cancel(self) -> None:
        self._closed = True
        self._tree.unlink_file(self._path)

    async def close(self) -> None:
        self._closed = True


class _Tree:
    """The nodes and the path operations the driver and its writers share."""

    def __init__(self) -> None:
        self.root = _Directory()

    def lookup(self, path: str) -> _File | _Directory | None:
        node: _File | _Directory = self.root
        for part in _parts(path):
            if not isinstance(node, _Directory):
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    def file(self, path: str) -> _File:
        node = self.lookup(path)
        if not isinstance(node, _File):
            raise PathNotFoundError(path)
        return node

    def directory(self, path: str) -> _Directory:
        node = self.lookup(path)
        if not isinstance(node, _Directory):
            raise PathNotFoundError(path)
        return node

    def parent_of(self, path: str) -> tuple[_Directory, str]:
        """The existing directory holding ``path``'s entry, and the entry's name."""
        head, name = path.rsplit("/", 1)
        return (self.directory(head) if head else self.root), name

    def make_parent(self, path: str) -> tuple[_Directory, str]:
        """Like :meth:`parent_of`, creating missing directories as ``mkdir -p`` does."""
        *heads, name = _parts(path)
        node = self.root
        for depth, part in enumerate(heads, start=1):
            child = node.children.get(part)
            if child is None:
                child = _Directory()
                node.put(part, child)
            elif isinstance(child, _File):
                raise StorageError(f"/{'/'.join(heads[:depth])}: not a directory")
            node = child
        return node, name

    def unlink_file(self, path: str) -> None:
        node = self.lookup(path)
        if isinstance(node, _File):
            parent, name = self.parent_of(path)
            parent.remove(name)


class MemoryDriver(StorageDriver):
    name = "inmemory"
    atomic_holds = True

    def __init__(self) -> None:
        self._tree = _Tree()

    async def read(self, path: str) -> bytes:
        return bytes(self._tree.file(path).data)

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        parent, name = self._tree.make_parent(path)
        if isinstance(parent.children.get(name), _Directory):
            raise StorageError(f"{path}: is a directory")
        # A new node rather than new content in the old one: streams already reading
        # the old content finish with it, as they do on a replaced file.
        parent.put(name, _File(bytearray(data)))

    def stream(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        check_path(path)
        if length is not None and length < 0:
            raise ValueError(f"negative length {length}")
        return self._stream(path, offset, length)

    async def _stream(self, path: str, offset: int, length: int | None) -> AsyncIterator[bytes]:
        file = self._tree.file(path)
        size = len(file.data)
        if not 0 <= offset <= size:
            raise InvalidOffsetError(path, offset)
        end = size if length is None else min(size, offset + length)
        position = offset
        while position < end:
            chunk = bytes(file.data[position : min(end, position + CHUNK_SIZE)])
            if not chunk:
                # Truncated underneath us, by a writer resuming at an earlier offset.
                break
            position += len(chunk)
            yield chunk
            # Let other tasks run between chunks, as the filesystem driver's reads do.
            await asyncio.sleep(0)

    async def writer(self, path: str, resume_at: int | None = None) -> FileWriter:
        if resume_at is None:
            parent, name = self._tree.make_parent(path)
            existing = parent.children.get(name)
            if isinstance(existing, _Directory):
                raise StorageError(f"{path}: is a directory")
            if isinstance(existing, _File):
                # Truncated in place, as O_TRUNC does to an existing file.
                existing.data.clear()
                existing.touch()
                file = existing
            else:
                file = _File()
                parent.put(name, file)
            return _MemoryWriter(self._tree, path, file)
        file = self._tree.file(path)
        if not 0 <= resume_at <= len(file.data):
            raise InvalidOffsetError(path, resume_at)
        if resume_at < len(file.data):
            del file.data[resume_at:]
            file.touch()
        return _MemoryWriter(self._tree, path, file)

    async def stat(self, path: str) -> FileInfo:
        node = self._tree.lookup(path)
        if node is None:
            raise PathNotFoundError(path)
        return _info(path, node)

    async def touch(self, path: str, mtime: float | None = None) -> None:
        file = self._tree.file(path)
        file.touch()
        if mtime is not None:
            file.mtime = mtime

    async def list(self, path: str) -> list[str]:
        return sorted(self._tree.directory(path).children)

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        # No await before the move: no touch can come between the check and the move.
        node = self._tree.lookup(source)
        if node is None or _touched_since(node, since):
            return False
        await self.move(source, dest)
        return True

    async def move(self, source: str, dest: str) -> None:
        check_path(dest)
        node = self._tree.lookup(source)
        if node is None:
            raise PathNotFoundError(source)
        if dest == source:
            return
        if dest.startswith(source + "/"):
            raise StorageError(f"cannot move {source} into itself ({dest})")
        parent, name = self._tree.make_parent(dest)
        existing = parent.children.get(name)
        if isinstance(node, _File) and isinstance(existing, _Directory):
            raise StorageError(f"{dest}: is a directory")
        if isinstance(node, _Directory) and isinstance(existing, _File):
            raise StorageError(f"{dest}: not a directory")
        if isinstance(existing, _Directory) and existing.children:
            raise StorageError(f"{dest}: directory not empty")
        source_parent, source_name = self._tree.parent_of(source)
        source_parent.remove(source_name)
        parent.put(name, node)

    async def delete(self, path: str) -> None:
        if self._tree.lookup(path) is None:
            raise PathNotFoundError(path)
        parent, name = self._tree.parent_of(path)
        parent.remove(name)

    async def remove_empty(self, path: str) -> bool:
        # No await in between: nothing can be written while this looks and removes.
        node = self._tree.lookup(path)
        if node is None:
            return True
        if not _holds_no_file(node):
            return False
        parent, name = self._tree.parent_of(path)
        parent.remove(name)
        return True

    def walk(self, path: str) -> AsyncIterator[FileInfo]:
        check_path(path)
        return self._walk(path)

    async def _walk(self, path: str) -> AsyncIterator[FileInfo]:
        top = self._tree.directory(path)
        # Each directory's children are taken when it is reached, and a subdirectory is
        # looked up again by path before descending, so changes made while walking show
        # the way they do on a filesystem.
        stack = [(path, _sorted_children(top))]
        while stack:
            base, remaining = stack[-1]
            entry = next(remaining, None)
            if entry is None:
                stack.pop()
                continue
            name, node = entry
            child = f"{base}/{name}"
            yield _info(child, node)
            if isinstance(node, _Directory):
                current = self._tree.lookup(child)
                if isinstance(current, _Directory):
                    stack.append((child, _sorted_children(current)))

    def local_path(self, path: str) -> str | None:
        check_path(path)
        return None
