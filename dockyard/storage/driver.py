"""The storage-driver interface every backend implements.

Paths are absolute, slash-separated and relative to the driver's root, for example
``/docker/registry/v2/blobs/sha256/ab/abcd.../data``. Every driver checks each path
against :data:`PATH_PATTERN` before touching anything, so no caller can reach outside
the root whatever a client sends.

Writes are atomic for readers: :meth:`StorageDriver.write` and a committed
:class:`FileWriter` either show the whole content or nothing, and :meth:`move`
replaces its destination in one step.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Self

# Components are letters, digits, '.', '_' and '-', but never '.' or '..' alone. The
# pattern ends in \Z, not $, which would also accept a trailing newline.
PATH_PATTERN = re.compile(r"^(/[A-Za-z0-9._-]+)+\Z")

# Longer names fail on common filesystems (NAME_MAX) and longer paths exceed object
# store key limits, so they are refused up front instead of failing differently per
# backend.
MAX_COMPONENT_LENGTH = 255
MAX_PATH_LENGTH = 1024
# Reads read_each has in flight at once by default: an object store answers them side by
# side, and a repository of 10,000 tags costs 10,000 round trips otherwise.
READ_EACH_WINDOW = 32


class StorageError(Exception):
    """A driver failure that is not the caller's fault."""


class PathNotFoundError(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path}")
        self.path = path


class InvalidPathError(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"invalid path: {path!r}")
        self.path = path


class InvalidOffsetError(StorageError):
    def __init__(self, path: str, offset: int) -> None:
        super().__init__(f"invalid offset {offset} for {path}")
        self.path = path
        self.offset = offset


def check_path(path: str) -> str:
    """Return ``path`` if it is a valid driver path, else raise :class:`InvalidPathError`."""
    if len(path) > MAX_PATH_LENGTH or not PATH_PATTERN.match(path):
        raise InvalidPathError(path)
    # Only a path with "/." can have a "." or ".." component, and only a path longer than
    # the longest allowed component can have one that is too long: most skip the split.
    if ("/." in path or len(path) > MAX_COMPONENT_LENGTH) and any(
        part in (".", "..") or len(part) > MAX_COMPONENT_LENGTH for part in path.split("/")
    ):
        raise InvalidPathError(path)
    return path


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    mtime: float
    is_dir: bool


class FileWriter(ABC):
    """An appending writer whose content becomes durable on :meth:`commit`.

    A writer opened with ``resume_at`` continues an earlier one: content past that
    offset (bytes written but never committed, for example before a crash) is
    discarded.
    """

    @property
    @abstractmethod
    def size(self) -> int:
        """Bytes in the file so far, committed or not."""

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    def blocking_append(self) -> Callable[[bytes], None] | None:
        """A function that appends as :meth:`write` does but blocks, for a caller that
        already hands each piece to a thread of its own (to hash it) and would otherwise
        hand it to a second one to write it; None where writes are not plain system
        calls. One thread at a time may call it, and every call must have returned
        before the next ``write``, ``commit``, ``cancel`` or ``close``."""
        return None

    @abstractmethod
    async def commit(self) -> None:
        """Make everything written so far durable; the writer stays usable."""

    async def seal(self) -> None:
        """:meth:`commit` the last of the file: nothing more will be appended, and it is
        about to be read or moved whole. A writer that keeps a file in pieces until then
        (an object store's multipart upload) puts them together now, while it still holds
        what it has not stored yet, rather than storing that to read it back. The
        writer stays usable: what is written after continues the whole file."""
        await self.commit()

    @abstractmethod
    async def cancel(self) -> None:
        """Discard the file entirely."""

    @abstractmethod
    async def close(self) -> None:
        """Release resources; what was committed stays."""


class PreparedWrites(ABC):
    """Files made ready to write but not visible yet, published in stages.

    Leaving its ``async with`` block discards whatever was not published.
    """

    @abstractmethod
    async def publish(self, paths: Iterable[str]) -> None:
        """Make these prepared files visible, each atomically; all are durable on return."""

    async def publish_in_order(
        self, stages: Sequence[Iterable[str]], between: Callable[[int], None] | None = None
    ) -> None:
        """Publish each stage as :meth:`publish` does, every one durable before the next
        appears. ``between`` is called with each later stage's index before it is
        published; what it raises stops the rest, which the block's exit discards. It
        may run in another thread."""
        for number, stage in enumerate(stages):
            if number and between is not None:
                between(number)
            await self.publish(stage)
        await self.remove_stale()

    async def remove_stale(self) -> None:
        """Delete the batch's ``removals``, where they are (after its last stage)."""

    @abstractmethod
    async def discard(self) -> None:
        """Drop every prepared file not published yet."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.discard()


class DeferredWrites(PreparedWrites):
    """Prepares nothing: each file is written when published, a stage's files together."""

    def __init__(
        self, driver: StorageDriver, files: Mapping[str, bytes], removals: Sequence[str] = ()
    ) -> None:
        for path in [*files, *removals]:
            check_path(path)
        self._driver = driver
        self._files = dict(files)
        self._removals = list(removals)

    async def publish(self, paths: Iterable[str]) -> None:
        pending = [(path, self._files.pop(path)) for path in paths]
        # Every write ends before publish does, also when one fails: none goes on in the
        # background after the caller has seen the failure.
        outcomes = await asyncio.gather(
            *(self._driver.write(path, data) for path, data in pending), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def remove_stale(self) -> None:
        removals, self._removals = self._removals, []
        for path in removals:
            with suppress(PathNotFoundError):
                await self._driver.delete(path)

    async def discard(self) -> None:
        self._files.clear()


class StorageDriver(ABC):
    """A small async interface over a tree of files."""

    name: str = "abstract"
    # Whether touch and move_unless_touched are one step against each other here; where
    # they are not (object stores), replicas sharing a Redis fence them (coordination).
    atomic_holds: bool = False
    # Whether each operation is a network round trip (an object store), which caches save.
    remote: bool = False

    @abstractmethod
    async def read(self, path: str) -> bytes:
        """The whole content of a (small) file."""

    async def read_each(self, paths: Sequence[str]) -> builtins.list[bytes | None]:
        """Each (small) file's content, in order; None where there is no file. For many
        links read at once (every tag of a repository): here a window of reads at a
        time, each a round trip on an object store; a driver that reads them more
        cheaply in one go overrides this."""
        found: list[bytes | None] = []
        for start in range(0, len(paths), READ_EACH_WINDOW):
            window = paths[start : start + READ_EACH_WINDOW]
            # Every read of the window ended before any failure is raised: none is left
            # running behind the caller.
            for outcome in await asyncio.gather(
                *(self._read_or_none(path) for path in window), return_exceptions=True
            ):
                if isinstance(outcome, BaseException):
                    raise outcome
                found.append(outcome)
        return found

    async def _read_or_none(self, path: str) -> bytes | None:
        try:
            return await self.read(path)
        except PathNotFoundError:
            return None

    @abstractmethod
    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        """Replace the file's content atomically, creating parent directories.

        ``durable=False`` is for files whose loss in a crash costs only work: a cache of
        others (an upload's saved hash state), a hint (a manifest's released links, for
        garbage collection). The write need not wait for the disk. Drivers whose writes
        cost the same either way ignore it.
        """

    async def prepare_writes(
        self,
        files: Mapping[str, bytes],
        replayable: bool = False,
        removals: Sequence[str] = (),
        copies: Mapping[str, str] | None = None,
    ) -> PreparedWrites:
        """Get several writes ready, so that publishing them in ordered stages costs about
        one durable write per stage: a manifest push shows its content, then its
        revision, then its tag, each durable before the next appears.

        ``replayable``: the caller promises that until these files change again through
        another replayable batch, nothing else changes them but this driver's own
        writes, moves and deletes. A driver may then make the whole batch durable at
        once through a journal that writes it again, in order, after a crash (the
        filesystem driver does); each of its other changes settles that journal first.
        Once the batch is recorded, every stage of it is published, and a crash
        replays all of them: ``between`` is then called for every later stage before
        anything is published.

        ``removals``: files of the same batch that go once every stage is published
        (by :meth:`PreparedWrites.publish_in_order`), where they are; like any delete,
        a crash may undo their removal.

        ``copies``: files of the batch whose bytes are those of another file (path to the
        path it copies), of the batch or already stored, which a driver may store as that
        same file (a hard link) rather than a new one. A copy always holds the bytes the
        batch gives it: where a stored file holds others, or none, it is a file of its
        own. Only for files that neither is ever rewritten in place.

        This default writes each file when it is published (as :meth:`write` does).
        """
        return DeferredWrites(self, files, removals)

    @abstractmethod
    def stream(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Yield the file's bytes from ``offset``, ``length`` of them or to the end, in
        pieces of at most a mebibyte, none of them empty.

        Raises :class:`PathNotFoundError` on first iteration when the file is missing and
        :class:`InvalidOffsetError` when ``offset`` is past its end.
        """

    @abstractmethod
    async def writer(self, path: str, resume_at: int | None = None) -> FileWriter:
        """An appending writer: a new empty file, or an existing one cut to ``resume_at``."""

    async def staged_writer(self, path: str) -> FileWriter | None:
        """A writer of a new file that appears at ``path`` whole when sealed (or
        committed), and not at all if the writer is closed or cancelled before: whatever
        is at ``path`` meanwhile stays as it is. None where writing the file elsewhere
        and moving it there costs no more (a local rename): object stores offer one,
        since their move copies every byte."""
        return None

    async def writer_at_end(self, path: str) -> FileWriter:
        """An appending writer that continues the existing file from its end; its ``size``
        says where that is. For a caller that holds the file against other writers and
        would otherwise look at its size first: a driver that learns the size while
        opening it (an object store's one request) spares that separate look.

        Raises :class:`PathNotFoundError` when there is no file at ``path``.
        """
        return await self.writer(path, (await self.stat(path)).size)

    @abstractmethod
    async def stat(self, path: str) -> FileInfo: ...

    async def touch(self, path: str, mtime: float | None = None) -> None:
        """Set the file's modification time, to now by default.

        Garbage collection reads a recent time as "in use" and an old one as "free to
        go". Backends without a cheap way to set it rewrite the content, which gives it
        the current time whatever ``mtime`` asks for: the safe direction.
        """
        await self.write(path, await self.read(path))

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        """Move ``source`` to ``dest`` unless a file under it was modified at ``since`` or later.

        Whether it moved. Drivers that can, make this one step with :meth:`touch`: a touch
        either lands before (and the move is refused) or finds ``source`` gone. A file
        *replaced* under ``source`` during the call is judged too: if what was moved
        turns out modified since, it is moved back. This default checks, moves, and
        checks again; what a touch lands on in between is missing for that moment.
        """
        try:
            if await self._modified_since(source, since):
                return False
            await self.move(source, dest)
        except PathNotFoundError:
            return False
        if await self._modified_since(dest, since):
            try:
                await self.stat(source)
            except PathNotFoundError:
                await self.move(dest, source)
            return False
        return True

    async def _modified_since(self, path: str, since: float) -> bool:
        top = await self.stat(path)
        if not top.is_dir:
            return top.mtime >= since
        async for info in self.walk(path):
            if not info.is_dir and info.mtime >= since:
                return True
        return False

    @abstractmethod
    async def list(self, path: str) -> list[str]:
        """Names (not paths) of the directory's direct children, sorted."""

    @abstractmethod
    async def move(self, source: str, dest: str) -> None:
        """Rename ``source`` to ``dest`` in one step, replacing ``dest``."""

    @abstractmethod
    async def delete(self, path: str) -> None:
        """Remove a file or a whole directory tree."""

    async def delete_each(self, paths: Sequence[str]) -> builtins.list[bool]:
        """``delete`` every path; whether each was there. For many deletes at once (a
        collection alone with its store); a driver that can do them more cheaply
        together overrides this."""
        found = []
        for path in paths:
            try:
                await self.delete(path)
            except PathNotFoundError:
                found.append(False)
            else:
                found.append(True)
        return found

    async def remove_empty(self, path: str) -> bool:
        """Remove the directory tree at ``path`` if it holds no file; whether it is gone.

        Never removes a file, not even one written while this runs. This default suits
        drivers whose directories exist only through their files (object stores): there
        is nothing to remove.
        """
        try:
            async for info in self.walk(path):
                if not info.is_dir:
                    return False
        except PathNotFoundError:
            pass
        return True

    @abstractmethod
    def walk(self, path: str) -> AsyncIterator[FileInfo]:
        """Every file and directory below ``path``, depth first, in lexical order."""

    def local_path(self, path: str) -> str | None:
        """A local filesystem path for ``sendfile``, when the driver has one."""
        return None

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        """A URL the client may fetch the content from directly, when the backend has one."""
        return None

    async def close(self) -> None:
        """Release connections and threads."""
