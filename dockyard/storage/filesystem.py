"""The ``filesystem`` driver: the registry tree as plain files below a root directory.

The layout on disk is exactly the driver paths below the root, as Distribution's
filesystem driver keeps it, so either registry can serve the other's storage.

Small reads and stats run directly on the event loop, where a thread hand-off would cost
more than the system call. Anything that fsyncs, renames or moves bulk data runs in a
worker thread.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import fcntl
import os
import re
import shutil
import sys
import threading
import time
import uuid
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Any, TypeVar

from dockyard.storage.driver import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    PreparedWrites,
    StorageDriver,
    StorageError,
    check_path,
)
from dockyard.storage.journal import PublishJournal
from dockyard.storage.writeback import start_writeback
from dockyard.storage.writes import write_all

T = TypeVar("T")

CHUNK_SIZE = 1 << 20
# Up to this size a read or an appended buffer is handled on the event loop: link files
# and manifests are far below it, and a thread hand-off costs more than their I/O.
INLINE_LIMIT = 64 * 1024
# Directory sizes (st_size) up to this are listed without a thread hop: a few dozen
# entries on ext4 and xfs, some hundreds on tmpfs.
SMALL_DIRECTORY = 4096
# Entries of a directory tree removed without a thread hop (a tag's has seven).
SMALL_TREE_ENTRIES = 32
# How many symlink-free directories a driver remembers (see FilesystemDriver._real_dir):
# about 300 bytes each. The ancestors every path shares are looked up all the time and
# come back at the cost of one lstat when evicted; most others (a blob's, a revision's)
# are seen once or twice, so more would only hold memory.
PLAIN_DIRS_REMEMBERED = 4096
# How many paths below such directories a driver remembers resolved (about 330 bytes
# each): the links, blobs and upload files that requests come back to.
PLAIN_PATHS_REMEMBERED = 1024
# At most so many subdirectories of one listing are remembered from it (a blob prefix
# holds some hundreds in a registry of 100,000 blobs).
PLAIN_DIRS_SEEDED = 1024
# Listings of more subdirectories than that (a registry's repositories, the tags of a
# large repository) whose subdirectories are known plain, as one sorted tuple each (see
# _WideListing): the latest used so many, of at most LISTED_NAMES_REMEMBERED
# subdirectories in all. A walk over every tag then costs no lstat of each tag's
# directory, and a catalog walk no read of each repository's.
PLAIN_LISTINGS_REMEMBERED = 16
# Listings of large directories kept, at most so many names in all (about 60 bytes
# each), and how long a directory must have been left unchanged before its listing is
# kept: a change is then sure to move its modification time, even on file systems that
# keep it in whole seconds.
LISTINGS_REMEMBERED = 32
LISTED_NAMES_REMEMBERED = 100_000
# Listings of small directories kept (a repository's own, with its `_layers`,
# `_manifests` and `_uploads`: about 260 bytes each, 4 MiB for all), enough for a
# catalog walk of so many repositories to stat rather than read them.
SMALL_LISTINGS_REMEMBERED = 16_384
SMALL_NAMES_REMEMBERED = 131_072
# Sets of names kept once for all the small directories that hold just them: the first
# so many seen (a repository's own directory, a tag's, a revision's are a handful).
SMALL_SHAPES_REMEMBERED = 64
# Shapes (sets of names) the listings of a wide listing's subdirectories are kept as: the
# first so many seen; one byte numbers each.
WALKED_SHAPES_REMEMBERED = 255
SETTLED_AFTER_NS = 2_000_000_000
# Small files whose contents a driver keeps: links (71 bytes for sha256, 135 for
# sha512, about 500 with their paths) and the small blobs a pull asks for again and
# again (image configs, small layers). At most so many, so many bytes of content in
# all, each of at most SMALL_FILE_LIMIT bytes: 2 MiB for 4,096 links, 6 at most.
SMALL_FILES_REMEMBERED = 4096
SMALL_FILES_BYTES = 4 << 20
SMALL_FILE_LIMIT = 16 * 1024
# Files read_each reads between two turns of the event loop (some 1 ms).
READ_EACH_TURN = 256
# Batches of more files than this (with their removals and copies) have their paths
# resolved without being remembered.
BULK_WRITES = 64
# Threads that fsync side by side within one durability barrier (see _Syncs): a manifest
# push's first barrier holds about a dozen files and directories.
SYNC_THREADS = 8
# How often a tree is removed again when entries appear in it while it is removed.
REMOVE_ATTEMPTS = 20
# '~' can never occur in a driver path, so a temporary file can neither collide with a
# real entry nor be reported as one, even when a crash leaves it behind.
TEMP_PREFIX = ".tmp~"
# Names a driver path can contain; anything else in a directory (temporary files,
# 'lost+found') cannot be addressed by callers and is left out of list and walk.
_ADDRESSABLE = re.compile(r"[A-Za-z0-9._-]+\Z")

# Errors that mean "there is no file there" when reading.
_READ_MISSING: tuple[type[OSError], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
)
_LISTING_MISSING: tuple[type[OSError], ...] = (FileNotFoundError, NotADirectoryError)


def _storage_error(path: str, error: OSError, missing: tuple[type[OSError], ...]) -> Exception:
    if isinstance(error, missing):
        return PathNotFoundError(path)
    if error.errno == errno.ENAMETOOLONG:
        return InvalidPathError(path)
    return StorageError(f"{path}: {error.strerror or error}")


@contextmanager
def _translated(path: str, missing: tuple[type[OSError], ...] = ()) -> Iterator[None]:
    """Turn ``OSError`` into the driver's errors, so callers never see OS specifics."""
    try:
        yield
    except OSError as error:
        raise _storage_error(path, error, missing) from error


def _addressable(name: str) -> bool:
    return _ADDRESSABLE.match(name) is not None and name not in (".", "..")


def _append(fd: int, data: bytes, offset: int) -> None:
    """Append ``data`` (which lands at ``offset``) and start writing it to disk, so the
    closing fsync does not wait for the whole file."""
    write_all(fd, data)
    start_writeback(fd, offset, len(data))


class _NotSmall(Exception):
    """Not a small regular file that :func:`_read_small` reads on its own."""


def _read_small(real: str) -> bytes | None:
    """A small file's content, or None where there is none (missing, a directory).

    ``O_NOFOLLOW``: a symbolic link is for the caller to resolve inside the root, and
    raises :class:`_NotSmall`, as does a file larger than ``SMALL_FILE_LIMIT``.
    """
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except _READ_MISSING:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _NotSmall(real) from error
        raise
    try:
        status = os.fstat(fd)
        if S_ISDIR(status.st_mode):
            return None
        if not S_ISREG(status.st_mode) or status.st_size > SMALL_FILE_LIMIT:
            raise _NotSmall(real)
        return _read_to_end(fd, status.st_size)
    finally:
        os.close(fd)


def _read_file(real: str, size: int) -> bytes:
    """The whole file, its ``size`` (from a stat just before) sizing the first read.

    ``os.read`` rather than ``open()``: a file object costs an fstat, an ioctl and an
    lseek besides, three of the seven system calls of reading a link. Reading goes on
    to the end, in case the file grew since the stat.
    """
    fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_to_end(fd, size)
    finally:
        os.close(fd)


def _read_to_end(fd: int, size: int) -> bytes:
    pieces = []
    request = size + 1
    while piece := os.read(fd, request):
        pieces.append(piece)
        request = CHUNK_SIZE
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # moved away since: its entries are durable wherever it went
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Syncs:
    """Runs the fsyncs of one durability barrier side by side, when it is the only one.

    Nothing in a barrier depends on another of its fsyncs, only on all of them having
    finished. One after another, each fsync waits for its own cache flush of the device;
    issued together, the block layer merges the flushes pending at once, so a barrier of
    a dozen costs a few flushes instead of a dozen. A barrier that starts while another
    is running goes one fsync after another in its own thread: concurrent barriers
    already keep several flushes pending, and more threads would only add wake-ups.
    """

    def __init__(self, threads: int = SYNC_THREADS) -> None:
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._running = 0
        self._guard = threading.Lock()

    def _executor(self, jobs: int) -> ThreadPoolExecutor | None:
        with self._guard:
            self._running += 1
            if jobs < 2 or self._running > 1 or self._closed:
                return None
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="dockyard-fsync")
            return self._pool

    def run(self, descriptors: Iterable[int] = (), directories: Iterable[str] = ()) -> None:
        """fsync every descriptor and directory; return once all are durable, or raise
        the first error once every fsync has ended."""
        jobs: list[Callable[[], None]] = [partial(os.fsync, fd) for fd in descriptors]
        jobs.extend(partial(_fsync_dir, directory) for directory in directories)
        pool = self._executor(len(jobs))
        try:
            self._run(jobs, pool)
        finally:
            with self._guard:
                self._running -= 1

    def _run(self, jobs: list[Callable[[], None]], pool: ThreadPoolExecutor | None) -> None:
        # Each thread takes the next job until none is left: a barrier of thousands (the
        # files of a large batch settled one by one) costs as many hand-offs as threads,
        # not a future per fsync. A list's iterator hands each item out once, whichever
        # thread asks.
        pending = iter(jobs)
        errors: list[OSError] = []

        def take_each() -> None:
            for job in pending:
                try:
                    job()
                except OSError as failure:
                    errors.append(failure)

        futures: list[Future[None]] = []
        if pool is not None:
            with suppress(RuntimeError):  # shut down meanwhile: the rest run here
                for _ in range(min(self._threads, len(jobs)) - 1):
                    futures.append(pool.submit(take_each))
        take_each()
        for future in futures:
            future.result()
        if errors:
            raise errors[0]

    def close(self) -> None:
        with self._guard:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


def _make_dirs(directory: str, durable: bool = True) -> list[str]:
    """``mkdir -p``; the new directories, each one's entry in its parent made durable
    unless ``durable`` is False (the caller then fsyncs their parents itself)."""
    missing: list[str] = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created = []
    for new in reversed(missing):
        try:
            os.mkdir(new)
            created.append(new)
        except FileExistsError:
            # A concurrent writer may have made it first; a file in the way is an error.
            if not os.path.isdir(new):
                raise
        if durable:
            _fsync_dir(os.path.dirname(new))
    return created


# How often a write retries when its directory is removed or moved away under it
# (garbage collection removes an empty tree once per run, so a few retries suffice).
_VANISHED_RETRIES = 100


def _rename_durably(source: str, dest: str, syncs: _Syncs) -> None:
    dest_parent = os.path.dirname(dest)
    for attempt in range(_VANISHED_RETRIES):
        try:
            _make_dirs(dest_parent)
            os.replace(source, dest)
            break
        except FileNotFoundError:
            # Only the destination's directory moved away (see _publish_files).
            if attempt == _VANISHED_RETRIES - 1 or not os.path.lexists(source):
                raise
    # Both directories at once: the new entry and the removed one. A new directory on
    # the way was made durable before the rename (above), so that a rename written back
    # early cannot leave the file in a directory that a crash unlinks.
    syncs.run(directories={dest_parent, os.path.dirname(source)})


@dataclass(frozen=True, slots=True)
class _PreparedFile:
    real: str
    data: bytes
    temp: str


def _make_temp_beside(real: str, created: list[str], make: Callable[[str], T]) -> tuple[T, str]:
    """``make(temp)`` for a new temporary name in ``real``'s directory, made (not durably)
    if missing; the directories made are appended to ``created``. Returns what ``make``
    returned, and the name."""
    parent = os.path.dirname(real)
    attempts = 0
    while True:
        try:
            created.extend(_make_dirs(parent, durable=False))
            temp = os.path.join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
            return make(temp), temp
        except FileNotFoundError:
            # The directory was moved away meanwhile (garbage collection).
            attempts += 1
            if attempts == _VANISHED_RETRIES:
                raise


def _open_new(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def _create_temp_beside(real: str, created: list[str]) -> tuple[int, str]:
    """A new temporary file in ``real``'s directory (see :func:`_make_temp_beside`);
    its descriptor and path."""
    return _make_temp_beside(real, created, _open_new)


def _write_temp(real: str, data: bytes, created: list[str]) -> tuple[int, _PreparedFile]:
    """``data`` in a new temporary file beside ``real`` (not fsynced); its descriptor,
    still open, and the prepared file."""
    fd, temp = _create_temp_beside(real, created)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(temp)
        raise
    return fd, _PreparedFile(real, data, temp)


# What ``link`` answers where a copy must be a file of its own: no hard links on this
# file system, a link count at its limit, or the source moved away meanwhile.
_LINK_REFUSALS = (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.ENOENT)


def _link_temp(
    source: _PreparedFile, real: str, data: bytes, created: list[str]
) -> _PreparedFile:
    """A new name for ``source``'s temporary file beside ``real``: a hard link, so that a
    copy costs the file system no inode; a file of its own where linking fails."""
    return _linked_or_written(partial(os.link, source.temp), real, data, created)


def _holds(source: str, data: bytes) -> bool:
    """Whether the stored file ``source`` holds exactly ``data``."""
    try:
        # Not through a symbolic link (whatever it leads to is not the store's file), and
        # never waiting on something that is not a plain file.
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            # One byte more than ``data``: a longer file is not a copy of it.
            return os.read(fd, len(data) + 1) == data
        finally:
            os.close(fd)
    except OSError:
        return False


def _publish_stored_copy(source: str, real: str, data: bytes) -> None:
    """Publish at ``real`` a copy of the stored file ``source``: where it holds ``data``,
    linked there directly while nothing is there (no temporary name, no rename, in what
    may be a directory of thousands of entries), otherwise linked beside it and renamed
    into place; where it does not, or linking fails, a file of its own."""
    if not _holds(source, data):
        _replace(real, data)
        return
    try:
        os.link(source, real, follow_symlinks=False)
        return
    except FileExistsError:
        pass
    except OSError as error:
        # ENOENT: the source gone, or ``real``'s directory (made below).
        if error.errno not in _LINK_REFUSALS:
            raise
    # Checked just above: linked beside it, or written where that fails too.
    file = _linked_or_written(partial(os.link, source, follow_symlinks=False), real, data, [])
    try:
        os.replace(file.temp, real)
    except BaseException:
        with suppress(OSError):
            os.unlink(file.temp)
        raise


def _linked_or_written(
    link: Callable[[str], None] | None, real: str, data: bytes, created: list[str]
) -> _PreparedFile:
    """``link(temp)`` for a temporary name beside ``real``; ``data`` in a file of its own
    where there is no ``link`` or linking fails."""
    if link is not None:
        try:
            _, temp = _make_temp_beside(real, created, link)
            return _PreparedFile(real, data, temp)
        except OSError as error:
            if error.errno not in _LINK_REFUSALS:
                raise
    fd, file = _write_temp(real, data, created)
    os.close(fd)
    return file


def _prepare_files(
    targets: list[tuple[str, bytes]],
    created: list[str],
    synced: set[str],
    syncs: _Syncs,
) -> list[_PreparedFile]:
    """Each file's content in a temporary file beside it, all of them durable.

    Nothing is fsynced until every file is written; then, in one barrier, the files and
    the parents of the directories made on the way (appended to ``created``), so each
    new directory's entry is durable too. Those parents are added to ``synced``:
    publishing need not fsync them again for the new directories' sake.
    """
    prepared: list[_PreparedFile] = []
    descriptors: list[int] = []
    made = len(created)
    try:
        for real, data in targets:
            fd, file = _write_temp(real, data, created)
            descriptors.append(fd)
            prepared.append(file)
        parents = {os.path.dirname(directory) for directory in created[made:]}
        syncs.run(descriptors, parents)
        synced.update(parents)
    except BaseException:
        _discard_files(prepared, created)
        raise
    finally:
        for fd in descriptors:
            os.close(fd)
    return prepared


def _publish_files(
    files: Iterable[_PreparedFile],
    created: Iterable[str],
    synced: set[str],
    syncs: _Syncs,
    retries: int = _VANISHED_RETRIES,
) -> None:
    """Rename each prepared file into place, then make the renames (and the new
    directories they are in) durable: every directory fsynced once, after all renames.
    On a failure no temporary file is left behind.

    ``synced``: directories an earlier stage of the same writes made durable. Every
    directory in ``created`` was made before the first stage, so a parent fsynced then
    already holds its new entries; only the directories renamed into need it again.
    The set is updated with this stage's.
    """
    files = list(files)
    new = set(created)
    directories: set[str] = set()
    try:
        for file in files:
            try:
                os.replace(file.temp, file.real)
            except FileNotFoundError:
                # Its directory was moved away since it was prepared (garbage collection
                # removing an empty tree): prepare it again, in a new directory.
                if retries == 0:
                    raise
                again: list[str] = []
                done: set[str] = set()
                _publish_files(
                    _prepare_files([(file.real, file.data)], again, done, syncs),
                    again,
                    done,
                    syncs,
                    retries - 1,
                )
                continue
            directory = os.path.dirname(file.real)
            directories.add(directory)
            while directory in new:
                directory = os.path.dirname(directory)
                if directory not in synced:
                    directories.add(directory)
    except BaseException:
        for file in files:
            with suppress(OSError):
                os.unlink(file.temp)  # those renamed into place are no longer there
        raise
    syncs.run(directories=directories)
    synced.update(directories)


def _discard_files(files: Iterable[_PreparedFile], created: list[str]) -> None:
    for file in files:
        with suppress(OSError):
            os.unlink(file.temp)
    # Directories made only for these files go too (a tag's directory would otherwise
    # list the tag). One that another writer has used meanwhile is not empty and stays:
    # its entry is made durable here, since that writer found it made and will not.
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError:
            _fsync_dir(os.path.dirname(directory))


def _replace_atomically(real: str, data: bytes, syncs: _Syncs) -> None:
    """Replace ``real`` whole and durably: one file prepared beside it, then published."""
    created: list[str] = []
    synced: set[str] = set()
    _publish_files(_prepare_files([(real, data)], created, synced, syncs), created, synced, syncs)


def _unlink_if_there(real: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(real)


def _replace(real: str, data: bytes) -> None:
    """Replace ``real`` whole, atomically but not durably: no fsync at all."""
    fd, temp = _create_temp_beside(real, [])
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, real)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


class _PreparedFiles(PreparedWrites):
    """Files written beside their targets when the first stage is published, in the same
    thread call (one hand-off fewer per write), then renamed into place stage by stage.

    Through the ``journal`` (a replayable batch), the whole batch is one record there
    and no file or directory is fsynced; otherwise each stage is a durability barrier,
    after the journal has been settled.
    """

    def __init__(
        self,
        targets: dict[str, tuple[str, bytes]],
        removals: list[str],
        syncs: _Syncs,
        journal: PublishJournal,
        replayable: bool,
        copies: Mapping[str, str],
        stored_copies: Mapping[str, str],
    ) -> None:
        self._targets = targets
        self._copies = {
            path: source
            for path, source in copies.items()
            if path in targets
            and source in targets
            and source not in copies
            and targets[path][1] == targets[source][1]
        }
        # Copies of files already stored (their real paths), not of the batch's own.
        self._stored_copies = stored_copies
        self._removals = removals
        self._syncs = syncs
        self._journal = journal
        self._replayable = replayable
        self._files: dict[str, _PreparedFile] | None = None
        self._created: list[str] = []
        self._synced: set[str] = set()

    async def publish(self, paths: Iterable[str]) -> None:
        await self.publish_in_order([paths])

    async def publish_in_order(
        self, stages: Sequence[Iterable[str]], between: Callable[[int], None] | None = None
    ) -> None:
        # Every stage in one thread call: a hand-off to a thread and back costs more
        # kernel time (futex wake-ups, GIL hand-over) than a small stage's renames.
        listed = [list(stage) for stage in stages]
        with _translated(" ".join(path for stage in listed for path in stage)):
            await asyncio.to_thread(self._publish_stages, listed, between)
        await self.remove_stale()

    async def remove_stale(self) -> None:
        # Recorded with the batch when it is replayable (and removed as it is published).
        removals, self._removals = self._removals, []
        for real in removals:
            with _translated(real):
                await asyncio.to_thread(_unlink_if_there, real)

    def _publish_stages(
        self, stages: list[list[str]], between: Callable[[int], None] | None
    ) -> None:
        if self._replayable:
            self._record(stages, between)
            return
        if self._files is None and self._journal.touches(
            [*(real for real, _ in self._targets.values()), *self._removals]
        ):
            self._journal.settle()
        for number, paths in enumerate(stages):
            if number and between is not None:
                between(number)
            self._publish(paths)

    def _publish(self, paths: list[str]) -> None:
        if self._files is None:
            prepared = _prepare_files(
                list(self._targets.values()), self._created, self._synced, self._syncs
            )
            self._files = dict(zip(self._targets, prepared, strict=True))
        files = [self._files.pop(path) for path in paths]
        _publish_files(files, self._created, self._synced, self._syncs)

    def _record(self, stages: list[list[str]], between: Callable[[int], None] | None) -> None:
        # A recorded batch is replayed whole after a crash: whatever may stop a later
        # stage must stop it before anything is recorded.
        if between is not None:
            for number in range(1, len(stages)):
                between(number)
        order = [path for stage in stages for path in stage]
        self._files = {}
        # Copies of stored files are made when published, after the record: each is
        # checked and linked then, with nothing to write beforehand.
        stored = self._stored_copies
        for path in order:
            if path not in self._copies and path not in stored:
                fd, self._files[path] = _write_temp(*self._targets[path], self._created)
                os.close(fd)
        # A copy after its source, whichever stage each is in (a file of its own if its
        # source is not published with it). Replayed, it is written as a file of its
        # own: the record holds its bytes.
        for path in order:
            if path in self._copies:
                source = self._files.get(self._copies[path])
                if source is not None:
                    file = _link_temp(source, *self._targets[path], self._created)
                else:
                    fd, file = _write_temp(*self._targets[path], self._created)
                    os.close(fd)
                self._files[path] = file
        files, targets = self._files, self._targets

        def publish() -> None:
            for path in order:
                try:
                    if path in stored:
                        _publish_stored_copy(stored[path], *targets[path])
                        continue
                    file = files.pop(path)
                    os.replace(file.temp, file.real)
                except FileNotFoundError:
                    # Its directory was moved away since (garbage collection removing an
                    # empty tree): written again in a new one, durable through the record.
                    _replace(*targets[path])

        removals, self._removals = self._removals, []

        def publish_and_remove() -> None:
            publish()
            for real in removals:
                _unlink_if_there(real)

        self._journal.record(
            [
                *(targets[path] for path in order),
                *((r, None) for r in removals),
            ],
            publish_and_remove,
        )

    async def discard(self) -> None:
        if self._files:
            files, self._files = list(self._files.values()), {}
            await asyncio.to_thread(_discard_files, files, self._created)


def _touch_in_place(real: str, times: tuple[float, float] | None) -> bool:
    """Set a file's times while it is at ``real``; False if it is not (or not a file).

    Under a shared lock, which :func:`_move_unless_touched` takes exclusively: a touch
    either lands before that check, or finds the file moved away.
    """
    fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    try:
        held = os.fstat(fd)
        if S_ISDIR(held.st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.utime(fd, times)
        try:
            now = os.stat(real)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
    finally:
        os.close(fd)


def _move_unless_touched(
    source: str, dest: str, since: float, known: list[str] | None = None
) -> bool:
    """Rename ``source`` unless a file in it was modified at ``since`` or later.

    Each file is locked exclusively while checked and until the rename is done, so no
    :func:`_touch_in_place` can fall between the check and the move. ``known``: the
    files of a flat ``source`` (:func:`_flat_files`), already listed.
    """
    if known is None:
        try:
            top = os.lstat(source)
        except FileNotFoundError:
            return False
        files = (
            [source]
            if not S_ISDIR(top.st_mode)
            else [os.path.join(base, name) for base, _, names in os.walk(source) for name in names]
        )
    else:
        files = known
    locked: list[int] = []
    judged: set[tuple[int, int]] = set()
    try:
        for path in sorted(files):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue  # replaced meanwhile; its successor is judged below
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                continue  # a symbolic link: no content of its own to hold
            locked.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            status = os.fstat(fd)
            if status.st_mtime >= since:
                return False
            judged.add((status.st_dev, status.st_ino))
        dest_parent = os.path.dirname(dest)
        _make_dirs(dest_parent)
        try:
            os.replace(source, dest)
        except FileNotFoundError:
            if os.path.lexists(source):
                raise
            return False
        # A file replaced (new inode, not touched) after the check above moved too.
        if _changed_since(dest, since, judged if known is not None else None):
            if not os.path.lexists(source):
                os.replace(dest, source)
            return False
    finally:
        for fd in locked:
            os.close(fd)
    # Not made durable: a crash that undoes this move only brings the item back where it
    # was, to be judged again; garbage collection sets aside thousands of items.
    return True


def _changed_since(real: str, since: float, judged: set[tuple[int, int]] | None) -> bool:
    """Whether a file under ``real`` was modified at ``since`` or later, answered from
    the listing alone when ``real`` (a file or a flat directory) holds only ``judged``
    files: those were checked under their lock, which no touch gets past."""
    if judged is not None:
        try:
            status = os.lstat(real)
            if not S_ISDIR(status.st_mode):
                if (status.st_dev, status.st_ino) in judged:
                    return False
            else:
                with os.scandir(real) as entries:
                    if all(
                        not entry.is_dir(follow_symlinks=False)
                        and (status.st_dev, entry.inode()) in judged
                        for entry in entries
                    ):
                        return False
        except FileNotFoundError:
            pass
    return _modified_since(real, since)


def _modified_since(real: str, since: float) -> bool:
    top = os.lstat(real)
    if not S_ISDIR(top.st_mode):
        return top.st_mtime >= since
    for base, _, names in os.walk(real):
        for name in names:
            with suppress(FileNotFoundError):
                if os.lstat(os.path.join(base, name)).st_mtime >= since:
                    return True
    return False


def _remove_empty_tree(real: str) -> bool:
    """Remove directories bottom-up with ``rmdir``, which refuses any that gained an entry."""
    try:
        if not S_ISDIR(os.lstat(real).st_mode):
            return False
        names = os.listdir(real)
    except FileNotFoundError:
        return True
    for name in names:
        if not _remove_empty_tree(os.path.join(real, name)):
            return False
    try:
        os.rmdir(real)
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def _removed_if_empty(real: str) -> bool:
    """``rmdir``: whether ``real`` is a directory that is gone now (or was not there)."""
    try:
        os.rmdir(real)
    except FileNotFoundError:
        return True
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            return False
        raise
    return True


def _flat_files(real: str) -> list[str] | None:
    """The files a move of ``real`` judges, when that is cheaper done at once than in a
    thread: a file, or a small directory without subdirectories (a blob's, a link's).
    None for anything else, or a path that changes while it is looked at."""
    try:
        status = os.lstat(real)
    except FileNotFoundError:
        return None
    if not S_ISDIR(status.st_mode):
        return [real]
    if status.st_size > SMALL_DIRECTORY:
        return None
    files = []
    try:
        with os.scandir(real) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    return None
                files.append(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return files


def _removed_small_tree(real: str) -> bool:
    """Remove a directory tree of at most ``SMALL_TREE_ENTRIES`` entries (a tag's: its
    links and their directories) without a thread hop. False for a larger one (nothing
    removed) or one that changed meanwhile (what could be, removed): the caller removes
    the rest the thorough way."""
    entries: list[tuple[str, bool]] = []  # each below every directory it is in
    if not _list_small_tree(real, entries):
        return False
    for path, is_dir in entries:
        try:
            if is_dir:
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False  # an entry came meanwhile: the thorough way
            raise
    return True


def _list_small_tree(directory: str, entries: list[tuple[str, bool]]) -> bool:
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                if len(entries) >= SMALL_TREE_ENTRIES:
                    return False
                if not entry.is_dir(follow_symlinks=False):
                    entries.append((entry.path, False))
                elif not _list_small_tree(entry.path, entries):
                    return False
    except (FileNotFoundError, NotADirectoryError):
        return False
    entries.append((directory, True))
    return True


def _cheap_to_change(real: str) -> bool:
    """Whether moving or removing ``real`` is a few system calls, cheaper than a thread
    hand-off: a file, a missing path, or a small directory without subdirectories (a
    blob's, a link's). Garbage collection does tens of thousands of these."""
    # Gone, even while it was looked at: the operation itself reports what it finds.
    return _flat_files(real) is not None or not os.path.lexists(real)


def _remove(real: str) -> None:
    # lstat, so that a symbolic link is removed itself and never what it points to.
    if not S_ISDIR(os.lstat(real).st_mode):
        os.unlink(real)
        return
    if _removed_tree(real):
        return
    # A writer is adding entries as fast as rmtree removes them, and may recreate the
    # directories it empties. Moved aside under a name no listing shows, the tree is out
    # of every writer's path: only what is already in flight can still land in it. A
    # crash from here on leaves the hidden tree behind, which a failed delete would too.
    aside = os.path.join(os.path.dirname(real), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    try:
        os.rename(real, aside)
        for _ in range(REMOVE_ATTEMPTS):
            if _removed_tree(aside):
                return
    except FileNotFoundError:
        return  # removed by someone else meanwhile: gone, as asked
    raise OSError(errno.ENOTEMPTY, "entries kept changing while it was removed", aside)


def _removed_tree(path: str) -> bool:
    """Remove the tree at ``path``; False when an entry came or went meanwhile, so that
    the caller tries again. ``FileNotFoundError`` when ``path`` itself is gone."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        if not os.path.lexists(path):
            raise
        return False
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise
        return False
    return True


def _remove_flat(real: str, files: list[str]) -> None:
    """Remove a file, or a directory of the ``files`` just listed in it (``_flat_files``):
    the unlinks and one rmdir, without listing it again. Garbage collection removes
    tens of thousands of these."""
    if files == [real]:
        os.unlink(real)
        return
    for file in files:
        with suppress(FileNotFoundError):
            os.unlink(file)
    try:
        os.rmdir(real)
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise
        _remove(real)  # a writer added an entry meanwhile


def _delete_each(reals: list[str], found: list[bool]) -> None:
    """Remove each path, appending to ``found`` whether it was there; stops at the first
    other failure, which is then for ``reals[len(found)]``."""
    for real in reals:
        try:
            files = _flat_files(real)
            if files is not None:
                _remove_flat(real, files)
            else:
                _remove(real)
        except _LISTING_MISSING:
            found.append(False)
        else:
            found.append(True)


def _visible(entry: os.DirEntry[str], inside: Callable[[str], bool]) -> bool:
    """Whether list and walk report an entry: one callers can address, staying in the root.

    Entry types come with the directory listing, so only symbolic links cost a lookup.
    """
    if not _addressable(entry.name):
        return False
    return not entry.is_symlink() or inside(os.path.realpath(entry.path))


def _names_and_dirs(real: str, inside: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """A directory's addressable names, sorted, and which of them are directories
    themselves, not symbolic links: entry types come with the listing, at no system
    call of their own."""
    names = []
    dirs = []
    with os.scandir(real) as entries:
        for entry in entries:
            if _visible(entry, inside):
                names.append(entry.name)
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.name)
    names.sort()
    return names, dirs


def _version(status: os.stat_result) -> int:
    """What a kept listing or file is checked against: its times and identity."""
    # One int holding all four, each in 64 bits of its own: the same comparison as a
    # tuple of them, in a third of the memory (16,384 small listings are kept).
    return (
        status.st_mtime_ns | status.st_ctime_ns << 64 | status.st_ino << 128 | status.st_dev << 192
    )


def _settled(status: os.stat_result, before: int) -> bool:
    """Whether, at ``before`` (ns), the entry had been unchanged long enough to be kept:
    a change within the same clock tick could otherwise leave its times as they were."""
    return before - max(status.st_mtime_ns, status.st_ctime_ns) >= SETTLED_AFTER_NS


class _Shapes:
    """Sets of names that many small directories hold alike (every repository's own:
    ``_layers``, ``_manifests``, ``_uploads``; every tag's ``current`` and ``index``),
    each kept once, interned, and numbered from 1: a directory holding one of them
    keeps a reference or a byte rather than its own tuple of strings. The first
    ``limit`` seen are numbered; a set seen after them is kept by each directory itself.
    """

    __slots__ = ("_limit", "_names", "_numbers")

    def __init__(self, limit: int) -> None:
        self._names: list[tuple[str, ...]] = []
        self._numbers: dict[tuple[str, ...], int] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._names)

    def number(self, names: Sequence[str]) -> int:
        """The number of the set ``names`` make, or 0 once all are taken by others."""
        shape = tuple(names)
        number = self._numbers.get(shape)
        if number is None:
            if len(self._names) >= self._limit:
                return 0
            shape = tuple(map(sys.intern, shape))
            self._names.append(shape)
            number = self._numbers[shape] = len(self._names)
        return number

    def names(self, number: int) -> tuple[str, ...]:
        return self._names[number - 1]


class _Listings:
    """Names of directories, each kept with the identity and times its directory had
    when it was read, and answered again only while both are unchanged.

    A repository's tags or a registry's repositories are listed far more often than
    they change; reading 10,000 entries costs milliseconds, a stat microseconds. A
    catalog lists every repository's own directory, each a few names: kept, a walk over
    10,000 of them costs a stat each instead of an open, a read and a sort. Directories
    are kept by their path below ``root`` (the part every one shares is not repeated),
    and, given ``shapes``, a directory holding one of them keeps its shared tuple.
    """

    def __init__(
        self,
        root: str,
        names_limit: int = LISTED_NAMES_REMEMBERED,
        entries_limit: int = LISTINGS_REMEMBERED,
        shapes: _Shapes | None = None,
    ) -> None:
        self._kept: OrderedDict[str, tuple[int, tuple[str, ...]]] = OrderedDict()
        self._root_length = len(root)
        self._names_limit = names_limit
        self._entries_limit = entries_limit
        self._names = 0
        self._shapes = shapes

    def get(self, real: str, status: os.stat_result) -> list[str] | None:
        key = real[self._root_length :]
        kept = self._kept.get(key)
        if kept is None or kept[0] != _version(status):
            return None
        self._kept.move_to_end(key)
        return list(kept[1])

    def keep(self, real: str, status: os.stat_result, before: int, names: list[str]) -> None:
        """Keep ``names``, read after ``status`` was taken at ``before`` (ns), if the
        directory had settled by then."""
        key = real[self._root_length :]
        self._forget(key)
        if not _settled(status, before):
            return
        if len(names) > self._names_limit:
            return
        kept = tuple(names)
        if self._shapes is not None:
            # Interned: the names small directories hold (a tag's `current` and `index`)
            # are then kept once, not once per directory. Not a large listing's: its
            # names are its own, and 10,000 more interned strings would grow the
            # interpreter's table of them for good.
            shape = self._shapes.number(kept)
            kept = self._shapes.names(shape) if shape else tuple(map(sys.intern, kept))
        self._kept[key] = (_version(status), kept)
        self._names += len(names)
        while len(self._kept) > self._entries_limit or self._names > self._names_limit:
            self._forget(next(iter(self._kept)))

    def _forget(self, key: str) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._names -= len(kept[1])


def _shared_run(old: tuple[str, ...], i: int, new: tuple[str, ...], j: int) -> int:
    """How many names ``old`` from ``i`` and ``new`` from ``j`` have in common, in a row
    (at least one: ``old[i] == new[j]``): the run known in common is extended by slices
    of doubling length, then of halving length, each compared only past it."""
    limit = min(len(old) - i, len(new) - j)
    same, step = 1, 1
    while step:
        ahead = min(same + step, limit)
        if ahead > same and old[i + same : i + ahead] == new[j + same : j + ahead]:
            same = ahead
            step *= 2
        else:
            step //= 2
    return same


class _WideListing:
    """The subdirectories of a listing that holds more than ``PLAIN_DIRS_SEEDED`` of them
    (a registry's repositories, a repository's tags), known plain, and the listings of
    those subdirectories once read.

    A catalog walk lists each repository's own directory (``_layers``, ``_manifests``,
    ``_uploads``) right after their parent's. Each such listing is kept here by its
    position among the parent's subdirectories: four 64-bit fields for its version and
    one byte for its shape, 33 bytes where a listing kept on its own (its path as a key,
    its version, its entry) takes some 260. For 10,000 repositories that is 330 KB
    rather than 2.7 MiB, in every worker that has walked the catalog.
    """

    __slots__ = ("dirs", "shapes", "versions")

    def __init__(self, dirs: list[str], former: _WideListing | None) -> None:
        dirs.sort()
        self.dirs = tuple(dirs)
        # Made on the first listing kept: 32 bytes of versions and 1 of shape per
        # subdirectory; shape 0 means none kept.
        self.versions: array[int] | None = None
        self.shapes: bytearray | None = None
        if former is not None and former.shapes is not None:
            self._carry_over(former)

    def _carry_over(self, former: _WideListing) -> None:
        """Keep what ``former`` (the parent's listing before it changed) kept of the
        subdirectories still there: one repository pushed among 10,000 must not make
        the next catalog walk read them all again. Both are sorted: the runs of names
        they share are found by comparing slices and copied whole, so a few names
        added or removed cost a few slices, not a step per name."""
        assert former.shapes is not None and former.versions is not None
        old, new = former.dirs, self.dirs
        if len(new) > LISTED_NAMES_REMEMBERED:
            return
        self._allocate()
        assert self.shapes is not None and self.versions is not None
        i = j = 0
        while i < len(old) and j < len(new):
            if old[i] != new[j]:
                if new[j] < old[i]:
                    j += 1  # added since
                else:
                    i += 1  # gone since
                continue
            run = _shared_run(old, i, new, j)
            self.shapes[j : j + run] = former.shapes[i : i + run]
            self.versions[4 * j : 4 * (j + run)] = former.versions[4 * i : 4 * (i + run)]
            i += run
            j += run

    def _allocate(self) -> None:
        self.versions = array("Q", bytes(32 * len(self.dirs)))
        self.shapes = bytearray(len(self.dirs))

    def index(self, name: str) -> int:
        """Where ``name`` is among the subdirectories, or -1."""
        dirs = self.dirs
        at = bisect_left(dirs, name)
        return at if at < len(dirs) and dirs[at] == name else -1

    def shape(self, at: int, status: os.stat_result) -> int:
        """The shape kept for the subdirectory at ``at`` if it is unchanged since, else 0."""
        shapes, versions = self.shapes, self.versions
        if shapes is None or versions is None or not shapes[at]:
            return 0
        first = 4 * at
        if (
            versions[first] != status.st_mtime_ns
            or versions[first + 1] != status.st_ctime_ns
            or versions[first + 2] != status.st_ino
            or versions[first + 3] != status.st_dev
        ):
            shapes[at] = 0
            return 0
        return shapes[at]

    def keep(self, at: int, status: os.stat_result, before: int, shape: int) -> bool:
        """Keep the subdirectory at ``at`` as of ``shape``, read after ``status`` was
        taken at ``before`` (ns): whether it is now kept here (False for a directory
        still changing, or one this cannot hold)."""
        fields = (status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev)
        if len(self.dirs) > LISTED_NAMES_REMEMBERED or min(fields) < 0:
            return False
        if self.shapes is None:
            self._allocate()
        assert self.shapes is not None and self.versions is not None
        self.shapes[at] = 0
        if not _settled(status, before):
            return True  # not kept, as a listing kept on its own would not be
        self.versions[4 * at : 4 * at + 4] = array("Q", fields)
        self.shapes[at] = shape
        return True


class _SmallFiles:
    """Contents of small files, each kept with the identity and times its file had when
    it was read, and answered again only while both are unchanged.

    A manifest GET by tag reads two links, a blob GET one: answered from here, each
    costs one ``lstat`` instead of resolving its path, an open, a read and a close. The
    registry replaces a file by renaming a new one over it (a new inode and ctime) and
    touches it with ``utime`` (a new ctime). As with listings, only a file that had
    settled when it was read is kept, so a change within the same clock tick cannot
    leave its times as they were.

    Files are kept by their driver path, with the OS path it resolved to: a path is
    checked and resolved once, when it is read from disk. What an ``lstat`` of that OS
    path finds is then either the very file whose content is kept (same device, inode
    and times), or anything else, which sends the read the whole way again. So a
    directory replaced by a symbolic link since can make a read slower, never answer
    from outside the root. A path that is itself a symbolic link is never kept: its
    target may change without the link changing.
    """

    def __init__(
        self, limit: int = SMALL_FILES_REMEMBERED, bytes_limit: int = SMALL_FILES_BYTES
    ) -> None:
        self._kept: OrderedDict[str, tuple[str, int, bytes]] = OrderedDict()
        self._limit = limit
        self._bytes_limit = bytes_limit
        self._bytes = 0

    def get(self, path: str) -> bytes | None:
        """The content kept for ``path`` if its file is unchanged since, else None."""
        kept = self._kept.get(path)
        if kept is None:
            return None
        real, version, data = kept
        try:
            unchanged = _version(os.lstat(real)) == version
        except OSError:
            unchanged = False  # gone or unreachable: the whole read says which
        if not unchanged:
            # Dropped now rather than when evicted: a collected blob's content (up to
            # SMALL_FILE_LIMIT) is not held for nothing, whatever the read finds.
            self._forget(path)
            return None
        self._kept.move_to_end(path)
        return data

    def keep(self, path: str, real: str, status: os.stat_result, before: int, data: bytes) -> None:
        """Keep ``data``, read from ``real`` after ``status`` was taken at ``before`` (ns)."""
        self._forget(path)
        if not _settled(status, before):
            return
        self._kept[path] = (real, _version(status), data)
        self._bytes += len(data)
        while len(self._kept) > self._limit or self._bytes > self._bytes_limit:
            _, (_, _, evicted) = self._kept.popitem(last=False)
            self._bytes -= len(evicted)

    def _forget(self, path: str) -> None:
        kept = self._kept.pop(path, None)
        if kept is not None:
            self._bytes -= len(kept[2])


def _scan(real: str, inside: Callable[[str], bool]) -> list[tuple[str, os.stat_result]]:
    """A directory's addressable entries with their status, sorted by name."""
    found: list[tuple[str, os.stat_result]] = []
    with os.scandir(real) as entries:
        for entry in entries:
            if not _visible(entry, inside):
                continue
            try:
                found.append((entry.name, entry.stat()))
            except FileNotFoundError:
                # Removed meanwhile, or a link to nothing.
                continue
    found.sort(key=lambda item: item[0])
    return found


def _info(path: str, status: os.stat_result) -> FileInfo:
    is_dir = S_ISDIR(status.st_mode)
    # A directory's st_size is filesystem-specific bookkeeping, not content.
    return FileInfo(path, 0 if is_dir else status.st_size, status.st_mtime, is_dir)


class _Descriptor:
    """An open file descriptor that worker threads read and write.

    Cancelling an await does not stop its thread, and a descriptor closed under a running
    read or write could be reused by the next ``open``, sending the data to another
    file. So operations run one at a time and :meth:`close` waits for the one in flight.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending: asyncio.Future[Any] | None = None
        self._closed = False

    @property
    def idle(self) -> bool:
        return self._pending is None or self._pending.done()

    async def run(self, function: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise ValueError("file is closed")
        while (pending := self._pending) is not None and not pending.done():
            await asyncio.wait([pending])
        task: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(function, self.fd, *args))
        task.add_done_callback(_consume_outcome)
        self._pending = task
        # Shielded, so a cancelled caller leaves the task running and visible to close().
        return await asyncio.shield(task)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending is None or self._pending.done():
            os.close(self.fd)
        else:
            self._pending.add_done_callback(lambda _: os.close(self.fd))


def _consume_outcome(task: asyncio.Future[T]) -> None:
    # Marks an error as seen: a caller cancelled meanwhile cannot receive it, and asyncio
    # would otherwise log it as never retrieved.
    if not task.cancelled():
        task.exception()


class _FilesystemWriter(FileWriter):
    def __init__(self, path: str, real: str, descriptor: _Descriptor, size: int, new: bool):
        self._path = path
        self._real = real
        self._descriptor = descriptor
        self._size = size
        # A new file's directory entry needs one fsync of its directory to survive a crash.
        self._entry_durable = not new
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer for {self._path} is closed")

    async def write(self, data: bytes) -> None:
        self._check_open()
        with _translated(self._path):
            if len(data) <= INLINE_LIMIT and self._descriptor.idle:
                write_all(self._descriptor.fd, data)
            else:
                await self._descriptor.run(_append, data, self._size)
        self._size += len(data)

    def blocking_append(self) -> Callable[[bytes], None] | None:
        self._check_open()
        fd = self._descriptor.fd

        def append(data: bytes) -> None:
            if self._closed:
                raise ValueError(f"writer for {self._path} is closed")
            with _translated(self._path):
                _append(fd, data, self._size)
            self._size += len(data)

        return append

    async def commit(self) -> None:
        self._check_open()
        with _translated(self._path):
            await self._descriptor.run(os.fsync)
            if not self._entry_durable:
                await asyncio.to_thread(_fsync_dir, os.path.dirname(self._real))
                self._entry_durable = True

    async def cancel(self) -> None:
        await self.close()
        with _translated(self._path), suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self._real)

    async def close(self) -> None:
        self._closed = True
        self._descriptor.close()


class FilesystemDriver(StorageDriver):
    """Files below ``root``; symbolic links are followed only while they stay below it."""

    name = "filesystem"
    atomic_holds = True

    def __init__(self, root: str) -> None:
        self._root = os.path.realpath(root)
        self._prefix = self._root.rstrip(os.sep) + os.sep
        # Directories seen to be reached without a symbolic link: resolving a path is
        # then one lstat of its last component instead of one per component (the bulk
        # of a catalog walk's or a collection's scan). The registry never makes links;
        # one made inside the root while it runs is noticed once the entry is evicted.
        self._plain_dirs: OrderedDict[str, None] = OrderedDict()
        self._plain_listed: OrderedDict[str, _WideListing] = OrderedDict()
        self._plain_listed_dirs = 0
        # The shapes the listings a wide listing keeps are made of. Apart from those of
        # small listings kept on their own, so that the handful of names a long-running
        # server lists one by one (tags of small repositories) cannot take them all
        # before a catalog walk comes.
        self._walked_shapes = _Shapes(WALKED_SHAPES_REMEMBERED)
        # Paths whose every directory is such a directory, with their OS path: the same
        # promise, for the files a pull reads and stats again and again.
        self._plain_paths: OrderedDict[str, str] = OrderedDict()
        self._listings = _Listings(self._root)
        self._small_listings = _Listings(
            self._root,
            SMALL_NAMES_REMEMBERED,
            SMALL_LISTINGS_REMEMBERED,
            _Shapes(SMALL_SHAPES_REMEMBERED),
        )
        self._small_files = _SmallFiles()
        self._syncs = _Syncs()
        # Replayable batches (a manifest push) are made durable through it; every other
        # change settles it first (see journal).
        self._journal = PublishJournal(
            self._root,
            _make_dirs,
            lambda real, data: _replace_atomically(real, data, self._syncs),
            _unlink_if_there,
            self._sync_existing,
        )
        # What a crash of the machine may have lost is written again before any use.
        self._journal.recover()

    def _sync_existing(self, files: Iterable[str], directories: Iterable[str]) -> None:
        """fsync the files and directories that are there, side by side."""
        descriptors = []
        try:
            for file in files:
                with suppress(FileNotFoundError):
                    descriptors.append(os.open(file, os.O_RDONLY | os.O_CLOEXEC))
            self._syncs.run(descriptors, directories)
        finally:
            for fd in descriptors:
                os.close(fd)

    async def _settle(self, *reals: str) -> None:
        """Before any change to ``reals`` but a replayable batch: files recorded there
        (or below) must be durable in place, so that no replay after a crash can undo
        this change. Records elsewhere wait for the next settle; with no ``reals``,
        every record is settled now."""
        try:
            needed = self._journal.touches(reals) if reals else self._journal.pending()
            if needed:
                await asyncio.to_thread(self._journal.settle)
        except OSError as error:
            raise StorageError(f"settling the publish journal: {error}") from error

    def _inside(self, real: str) -> bool:
        return real.startswith(self._prefix)

    def _real_dir(self, joined: str) -> str:
        """``joined`` with symbolic links resolved, component by component from the root,
        each component's lstat answered from memory once it is known to be a plain
        directory."""
        return self._locate_dir(joined)[0]

    def _locate_dir(self, joined: str, remember: bool = True) -> tuple[str, bool]:
        """:meth:`_real_dir`, and False when it is known to be missing: below a missing
        directory (a new tag's, a new blob's) nothing is there to lstat. Without
        ``remember``, neither ``joined`` nor the directories above it are remembered."""
        if joined in self._plain_dirs or joined == self._root:
            return joined, True
        parent, name = os.path.split(joined)
        if not name or not joined.startswith(self._prefix):
            return os.path.realpath(joined), True
        real_parent, present = self._locate_dir(parent, remember)
        candidate = os.path.join(real_parent, name)
        if not present:
            return candidate, False
        if real_parent != parent:
            return os.path.realpath(candidate), True
        if self._listed_plain(parent, name):
            return candidate, True
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            return candidate, False  # missing: nothing to resolve, nothing to remember
        if S_ISLNK(mode):
            return os.path.realpath(candidate), True
        if S_ISDIR(mode) and remember:
            self._remember_plain(joined)
        return candidate, True

    def _listed_plain(self, parent: str, name: str) -> bool:
        """Whether a kept listing of ``parent`` says ``name`` there is a plain directory."""
        listed = self._plain_listed.get(parent)
        return listed is not None and listed.index(name) >= 0

    def _keep_wide(self, real: str, dirs: builtins.list[str]) -> None:
        """Know the ``dirs`` of ``real`` plain, with what was kept of them before."""
        former = self._plain_listed.pop(real, None)
        if former is not None:
            self._plain_listed_dirs -= len(former.dirs)
        self._plain_listed[real] = _WideListing(dirs, former)
        self._plain_listed_dirs += len(dirs)
        while len(self._plain_listed) > 1 and (
            len(self._plain_listed) > PLAIN_LISTINGS_REMEMBERED
            or self._plain_listed_dirs > LISTED_NAMES_REMEMBERED
        ):
            _, evicted = self._plain_listed.popitem(last=False)
            self._plain_listed_dirs -= len(evicted.dirs)

    def _remember_plain(self, joined: str) -> None:
        self._plain_dirs[joined] = None
        if len(self._plain_dirs) > PLAIN_DIRS_REMEMBERED:
            self._plain_dirs.popitem(last=False)

    def _resolve(self, path: str, follow: bool = True, remember: bool = True) -> str:
        """The OS path for ``path``, refusing any that a symbolic link leads out of the root.

        With ``follow`` false the last component is not resolved, for operations that act
        on the directory entry itself (replace, rename, remove) rather than on its target.
        Without ``remember``, neither ``path`` nor the directories above it are remembered.
        """
        real = self._plain_paths.get(path)
        present = True
        if real is None:
            # A valid path is absolute, with no empty component and no trailing "/":
            # rpartition splits it at a fraction of os.path.split's cost.
            joined = self._prefix + check_path(path)[1:]
            head, _, name = joined.rpartition("/")
            real_head, present = self._locate_dir(head or "/", remember)
            real = os.path.join(real_head, name)
            # Not one of thousands listed in a row (a catalog walk's repositories): it
            # would push out the paths requests come back to.
            if (
                remember
                and present
                and real_head == head
                and self._inside(real)
                and not self._listed_plain(head, name)
            ):
                self._plain_paths[path] = real
                if len(self._plain_paths) > PLAIN_PATHS_REMEMBERED:
                    self._plain_paths.popitem(last=False)
        if follow and present:
            try:
                if S_ISLNK(os.lstat(real).st_mode):
                    real = os.path.realpath(real)
            except OSError:
                pass  # missing: the operation itself reports it
        if not self._inside(real):
            raise InvalidPathError(path)
        return real

    async def read(self, path: str) -> bytes:
        kept = self._small_files.get(path)
        if kept is not None:
            return kept
        real = self._resolve(path, follow=False)
        with _translated(path, _READ_MISSING):
            before = time.time_ns()
            status = os.lstat(real)
            linked = S_ISLNK(status.st_mode)
            if linked:
                real = self._resolve(path)
                status = os.stat(real)
            if S_ISDIR(status.st_mode):
                raise PathNotFoundError(path)
            if status.st_size <= SMALL_FILE_LIMIT:
                data = _read_file(real, status.st_size)
                if not linked:
                    self._small_files.keep(path, real, status, before, data)
                return data
            if status.st_size <= INLINE_LIMIT:
                return _read_file(real, status.st_size)
            return await asyncio.to_thread(_read_file, real, status.st_size)

    async def read_each(self, paths: Sequence[str]) -> builtins.list[bytes | None]:
        # Opened and read in a row, without the small-file cache (thousands of links read
        # once would only push out what is read again and again).
        found: list[bytes | None] = []
        path = ""
        try:
            for number, path in enumerate(paths, 1):
                if number % READ_EACH_TURN == 0:
                    await asyncio.sleep(0)  # let other requests run
                # As _resolve(path, follow=False) would, but remembering neither the path
                # nor the directories above it: thousands read once would evict the paths
                # and directories read again and again.
                joined = self._prefix + check_path(path)[1:]
                head, _, name = joined.rpartition("/")
                real_head, present = self._locate_dir(head, remember=False)
                real = f"{real_head}/{name}"
                if not self._inside(real):
                    raise InvalidPathError(path)
                try:
                    found.append(_read_small(real) if present else None)
                except _NotSmall:
                    # A symbolic link (resolved by read) or a larger file.
                    found.append(await self._read_or_none(path))
        except OSError as error:
            raise _storage_error(path, error, ()) from error
        return found

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        real = self._resolve(path, follow=False)
        with _translated(path):
            await self._settle(real)
            if durable:
                await asyncio.to_thread(_replace_atomically, real, data, self._syncs)
            elif len(data) <= SMALL_FILE_LIMIT:
                # Nothing to wait for on the disk: a few system calls, cheaper than a
                # thread hop (a DELETE's markers on the links it releases).
                _replace(real, data)
            else:
                await asyncio.to_thread(_replace, real, data)

    async def prepare_writes(
        self,
        files: Mapping[str, bytes],
        replayable: bool = False,
        removals: Sequence[str] = (),
        copies: Mapping[str, str] | None = None,
    ) -> PreparedWrites:
        copies = copies or {}
        # Paths written by the thousand (a tag index's entries) are written once: kept,
        # they would push out the paths and directories requests come back to, and hold
        # memory among what the batch's own work frees.
        remember = len(files) + len(removals) + len(copies) <= BULK_WRITES

        def resolve(path: str) -> str:
            return self._resolve(path, follow=False, remember=remember)

        return _PreparedFiles(
            {path: (resolve(path), data) for path, data in files.items()},
            [resolve(path) for path in removals],
            self._syncs,
            self._journal,
            replayable,
            copies,
            # Only a recorded batch links copies: resolved for no other.
            {
                path: resolve(source)
                for path, source in copies.items()
                if path in files and source not in files
            }
            if replayable
            else {},
        )

    def stream(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        check_path(path)
        if length is not None and length < 0:
            raise ValueError(f"negative length {length}")
        return self._stream(path, offset, length)

    async def _stream(self, path: str, offset: int, length: int | None) -> AsyncIterator[bytes]:
        real = self._resolve(path)
        with _translated(path, _READ_MISSING):
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        descriptor = _Descriptor(fd)
        try:
            with _translated(path, _READ_MISSING):
                status = os.fstat(fd)
            if S_ISDIR(status.st_mode):
                raise PathNotFoundError(path)
            if not 0 <= offset <= status.st_size:
                raise InvalidOffsetError(path, offset)
            end = status.st_size if length is None else min(status.st_size, offset + length)
            position = offset
            while position < end:
                with _translated(path):
                    chunk = await descriptor.run(
                        os.pread, min(CHUNK_SIZE, end - position), position
                    )
                if not chunk:
                    # Truncated underneath us, by a writer resuming at an earlier offset.
                    break
                position += len(chunk)
                yield chunk
        finally:
            descriptor.close()

    async def writer(self, path: str, resume_at: int | None = None) -> FileWriter:
        real = self._resolve(path)
        # Every record, not only this path's: settled later, in the background, its
        # syncfs would flush and wait on the stream being written (a blob's) meanwhile.
        await self._settle()
        if resume_at is None:
            parent = os.path.dirname(real)
            with _translated(path):
                if not os.path.isdir(parent):
                    await asyncio.to_thread(_make_dirs, parent)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                fd = os.open(real, flags, 0o644)
            return _FilesystemWriter(path, real, _Descriptor(fd), 0, new=True)
        return await self._reopen(path, real, resume_at)

    async def writer_at_end(self, path: str) -> FileWriter:
        real = self._resolve(path)
        await self._settle()  # every record, as for writer
        return await self._reopen(path, real, None)

    async def _reopen(self, path: str, real: str, resume_at: int | None) -> FileWriter:
        """A writer of the existing file, cut to ``resume_at`` or (None) at its end."""
        with _translated(path, _READ_MISSING):
            fd = os.open(real, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        descriptor = _Descriptor(fd)
        try:
            with _translated(path):
                size = os.fstat(fd).st_size
                if resume_at is None:
                    resume_at = size
                elif not 0 <= resume_at <= size:
                    raise InvalidOffsetError(path, resume_at)
                if resume_at < size:
                    await descriptor.run(os.ftruncate, resume_at)
        except BaseException:
            descriptor.close()
            raise
        return _FilesystemWriter(path, real, descriptor, resume_at, new=False)

    async def stat(self, path: str) -> FileInfo:
        real = self._resolve(path, follow=False)
        # try/except rather than _translated: every blob GET and HEAD stats its blob,
        # and the context manager cost a tenth of the whole stat.
        try:
            # One lstat, unless the entry is a symbolic link: then its target, which
            # must be inside the root.
            status = os.lstat(real)
            if S_ISLNK(status.st_mode):
                status = os.stat(self._resolve(path))
        except OSError as error:
            raise _storage_error(path, error, _LISTING_MISSING) from error
        return _info(path, status)

    async def touch(self, path: str, mtime: float | None = None) -> None:
        real = self._resolve(path)
        with _translated(path, _READ_MISSING):
            if not _touch_in_place(real, None if mtime is None else (mtime, mtime)):
                raise PathNotFoundError(path)

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        source_real = self._resolve(source, follow=False)
        dest_real = self._resolve(dest, follow=False)
        if dest == source or dest.startswith(source + "/"):
            raise StorageError(f"cannot move {source} onto or into itself ({dest})")
        with _translated(source):
            await self._settle(source_real, dest_real)
            files = _flat_files(source_real)
            if files is not None:
                return _move_unless_touched(source_real, dest_real, since, files)
            return await asyncio.to_thread(_move_unless_touched, source_real, dest_real, since)

    async def list(self, path: str) -> list[str]:
        real = self._resolve(path, follow=False)
        # Not _translated: a catalog walk lists every repository, and the context
        # manager would cost more than the kept listing's answer.
        try:
            before = time.time_ns()
            status = os.lstat(real)
            # A directory reached without a symbolic link: so are the directories in it.
            plain = S_ISDIR(status.st_mode) and path != "/" and real == self._prefix + path[1:]
            if S_ISLNK(status.st_mode):
                real = self._resolve(path)
                status = os.stat(real)
            # A directory's size grows with its entries: a small one (a repository's, a
            # tag's) is listed at once; a thread for one that may hold many thousands of
            # names (blobs, a registry's repositories), so the event loop never waits.
            small = status.st_size <= SMALL_DIRECTORY
            listings = self._small_listings if small else self._listings
            # A directory its parent's listing already says is plain is one of thousands
            # listed in a row (a catalog's walk over every repository): neither it nor
            # the few directories it holds are remembered one by one, which would push
            # out what requests come back to.
            above, _, own = real.rpartition(os.sep)
            parent = self._plain_listed.get(above) if plain else None
            at = parent.index(own) if parent is not None else -1
            walked = parent if at >= 0 else None
            if plain and walked is None:
                self._remember_plain(real)
            if walked is not None and small:
                shape = walked.shape(at, status)
                if shape:
                    return list(self._walked_shapes.names(shape))
            kept = listings.get(real, status)
            if kept is not None:
                if real in self._plain_listed:
                    # In use (a catalog's walk comes back to it page after page): kept
                    # before the one-off listings of other large directories.
                    self._plain_listed.move_to_end(real)
                return kept
            if small:
                names, dirs = _names_and_dirs(real, self._inside)
            else:
                names, dirs = await asyncio.to_thread(_names_and_dirs, real, self._inside)
            # Kept beside the parent's listing when it can be, on its own otherwise.
            if not (
                walked is not None
                and small
                and (shape := self._walked_shapes.number(names))
                and walked.keep(at, status, before, shape)
            ):
                listings.keep(real, status, before, names)
            # A listing is usually followed by a look at each entry (a collection stats
            # every link below a repository's `_layers`, every blob below a prefix): the
            # entry types answer those lookups' lstats of directories. Not for thousands
            # of them, which would evict all else remembered.
            if plain and len(dirs) <= PLAIN_DIRS_SEEDED:
                if walked is None:
                    for name in dirs:
                        self._remember_plain(f"{real}{os.sep}{name}")
            elif plain:
                self._keep_wide(real, dirs)
            return names
        except OSError as error:
            raise _storage_error(path, error, _LISTING_MISSING) from error

    async def move(self, source: str, dest: str) -> None:
        source_real = self._resolve(source, follow=False)
        dest_real = self._resolve(dest, follow=False)
        with _translated(source, _LISTING_MISSING):
            os.lstat(source_real)
        if dest == source:
            return
        if dest.startswith(source + "/"):
            raise StorageError(f"cannot move {source} into itself ({dest})")
        await self._settle(source_real, dest_real)
        try:
            await asyncio.to_thread(_rename_durably, source_real, dest_real, self._syncs)
        except FileNotFoundError as error:
            # The source was removed concurrently, after the check above.
            raise PathNotFoundError(source) from error
        except OSError as error:
            raise _storage_error(dest, error, ()) from error

    async def delete(self, path: str) -> None:
        # Deletes are not fsynced: one undone by a crash only leaves garbage for the next
        # collection, while every write is durable.
        real = self._resolve(path, follow=False)
        with _translated(path, _LISTING_MISSING):
            await self._settle(real)
            files = _flat_files(real)
            if files is not None:
                _remove_flat(real, files)
            elif not os.path.lexists(real):
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", real)
            elif not _removed_small_tree(real):
                await asyncio.to_thread(_remove, real)

    async def delete_each(self, paths: Sequence[str]) -> builtins.list[bool]:
        # One thread call for them all: each delete is a few system calls, too few to
        # pay a hand-off of its own, and the event loop meanwhile prepares the next batch.
        reals = [self._resolve(path, follow=False) for path in paths]
        found: list[bool] = []
        await self._settle(*reals)
        try:
            await asyncio.to_thread(_delete_each, reals, found)
        except OSError as error:
            raise _storage_error(paths[len(found)], error, ()) from error
        return found

    async def remove_empty(self, path: str) -> bool:
        real = self._resolve(path, follow=False)
        with _translated(path):
            await self._settle(real)
            # Most directories asked about are empty already (a link's, once the link has
            # gone): one rmdir, which the kernel refuses for any that holds an entry.
            if _removed_if_empty(real):
                return True
            if _cheap_to_change(real):
                return _remove_empty_tree(real)
            return await asyncio.to_thread(_remove_empty_tree, real)

    def walk(self, path: str) -> AsyncIterator[FileInfo]:
        check_path(path)
        return self._walk(path)

    async def _walk(self, path: str) -> AsyncIterator[FileInfo]:
        real = self._resolve(path)
        with _translated(path, _LISTING_MISSING):
            top = os.stat(real)
            if not S_ISDIR(top.st_mode):
                raise PathNotFoundError(path)
            entries = await asyncio.to_thread(_scan, real, self._inside)
        # Each level keeps the (device, inode) of the directories above it, so a symbolic
        # link back up the tree is reported but not descended into again.
        stack = [(path, real, iter(entries), frozenset({(top.st_dev, top.st_ino)}))]
        while stack:
            base, base_real, remaining, ancestors = stack[-1]
            entry = next(remaining, None)
            if entry is None:
                stack.pop()
                continue
            name, status = entry
            child = f"{base}/{name}"
            info = _info(child, status)
            yield info
            key = (status.st_dev, status.st_ino)
            if not info.is_dir or key in ancestors:
                continue
            child_real = os.path.join(base_real, name)
            try:
                children = await asyncio.to_thread(_scan, child_real, self._inside)
            except (FileNotFoundError, NotADirectoryError):
                # Removed since its parent was listed: nothing below it to report.
                continue
            except OSError as error:
                raise _storage_error(child, error, ()) from error
            stack.append((child, child_real, iter(children), ancestors | {key}))

    def local_path(self, path: str) -> str | None:
        return self._resolve(path)

    async def close(self) -> None:
        # Settled on the way out: a store left by a clean stop needs no replay, and
        # another registry reading it finds every file in place.
        with _translated("/"):
            await asyncio.to_thread(self._journal.close)
        self._syncs.close()
