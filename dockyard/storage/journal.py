"""A journal that makes a batch of small files durable with one fsync.

Published the plain way, a batch whose files must appear in order (a manifest's
content, then its revision, then its tag) costs one durability barrier per stage, each
a dozen fsyncs on a new tag's directories. Through the journal, the whole batch is
appended as one record and made durable with one ``fdatasync``; its files are then
renamed into place, in stage order, without any fsync. What a crash of the machine can
lose is only what the page cache held: on the next start :meth:`PublishJournal.recover`
writes every recorded file again, durably and in the order recorded.

Every so often (and before anything else changes a recorded path) the journal is
*settled*: every file it records is made durable in place and the journal is emptied.

Why a replay never undoes a later change: a recorded path changes afterwards only
through later records (the caller's promise when it asks for a replayable batch), and
every other change the driver makes (writes, moves, deletes) to a recorded path, or to a
directory above one, settles the journal first. So the records left at a crash are newer
than anything else that touched their paths; a replay touches no other path.

One journal file per store, shared by every process using it, under an exclusive
``flock`` (and a thread lock within a process): a record is appended and its files
published under the lock, so settling never sees a record whose files are not in place
yet. Records are checksummed: one torn by a crash while it was appended was never
acknowledged, and is dropped with anything after it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

# Where the journal is, relative to the store's root: beside the registry's own state,
# so that nothing appears in the root outside the layout Distribution reads. '~' can
# never occur in a driver path, so it is neither listed nor reachable through the driver.
JOURNAL_PATH = "docker/registry/v2/_dockyard/publish~journal"
_MAGIC = b"DYJ1"
# Magic, payload length, CRC-32 of the payload.
_HEADER = struct.Struct(">4sII")
# Path length, data length; each entry's path and data follow. A removal has no data.
_ENTRY = struct.Struct(">HI")
_REMOVAL = 0xFFFFFFFF
_NONCE = 8
# A record's header and nonce: unlike any other record's (see encode), so the same bytes
# found where they were read before mean the journal has only grown since.
_RECORD_HEAD = _HEADER.size + _NONCE
# How long records may wait before a background settle, in seconds: long enough to
# settle many batches at once, short enough that other changes seldom wait for one.
SETTLE_AFTER = 0.1
# Settling syncs the whole file system (two ``syncfs``) while the system has less than
# this dirty in its page cache; beyond it, only the recorded files and their directories.
SYNCFS_DIRTY_LIMIT = 64 << 20

# A file's path (relative to the store's root) and content; None for a removal.
Entry = tuple[str, bytes | None]


def encode(entries: Sequence[Entry]) -> bytes:
    """One record: the files written and removed, in publishing order.

    Each begins with random bytes of its own, so that no two records are equal: a
    settle tells the records it synced from any written after an emptying.
    """
    parts = [os.urandom(_NONCE)]
    for path, data in entries:
        name = path.encode("utf-8")
        if data is None:
            parts += [_ENTRY.pack(len(name), _REMOVAL), name]
        else:
            parts += [_ENTRY.pack(len(name), len(data)), name, data]
    payload = b"".join(parts)
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode(journal: bytes) -> list[list[Entry]]:
    """The records in a journal's content, up to the first that is torn or damaged."""
    return _decode(journal)[0]


def _decode(journal: bytes) -> tuple[list[list[Entry]], list[int], int]:
    """The records, where each starts, and where the last ends."""
    records: list[list[Entry]] = []
    starts: list[int] = []
    offset = 0
    while offset + _HEADER.size <= len(journal):
        magic, length, checksum = _HEADER.unpack_from(journal, offset)
        start = offset + _HEADER.size
        payload = journal[start : start + length]
        if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != checksum:
            break
        records.append(list(_entries(payload)))
        starts.append(offset)
        offset = start + length
    return records, starts, offset


def _entries(payload: bytes) -> Iterator[Entry]:
    offset = _NONCE
    while offset < len(payload):
        name_length, data_length = _ENTRY.unpack_from(payload, offset)
        offset += _ENTRY.size
        name = payload[offset : offset + name_length].decode("utf-8")
        offset += name_length
        if data_length == _REMOVAL:
            yield name, None
            continue
        yield name, payload[offset : offset + data_length]
        offset += data_length


def _dirty_bytes() -> int | None:
    """What the system's page cache holds that is not on disk yet (dirty or being
    written back), or None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            lines = meminfo.read().splitlines()
    except OSError:
        return None
    total = 0
    found = 0
    for line in lines:
        name, _, value = line.partition(b":")
        if name in (b"Dirty", b"Writeback"):
            total += int(value.split()[0]) * 1024
            found += 1
    return total if found == 2 else None


class _Syncfs:
    """``syncfs(2)``, which Python's os module lacks, through the C library."""

    def __init__(self) -> None:
        self._call: Callable[[int], int] | None = None
        try:
            self._call = ctypes.CDLL(None, use_errno=True).syncfs
        except (OSError, AttributeError):
            self._call = None

    @property
    def available(self) -> bool:
        return self._call is not None

    def __call__(self, fd: int) -> None:
        assert self._call is not None
        if self._call(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))


class PublishJournal:
    """The journal of one store's root.

    ``make_dirs(directory)`` makes a directory and its parents durably (the journal's
    own); ``write_durably(real, data)`` replaces a file durably, ``remove(real)`` removes
    one if it is there (replay); ``sync_paths(files, directories)`` fsyncs files and
    directories that exist (settle).
    """

    def __init__(
        self,
        root: str,
        make_dirs: Callable[[str], object],
        write_durably: Callable[[str, bytes], None],
        remove: Callable[[str], None],
        sync_paths: Callable[[Iterable[str], Iterable[str]], None],
        settle_after: float | None = None,
    ) -> None:
        self.root = root.rstrip(os.sep) or os.sep
        # What every recorded (real) path begins with.
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self.path = os.path.join(self.root, JOURNAL_PATH)
        self._make_dirs = make_dirs
        self._write_durably = write_durably
        self._remove = remove
        self._sync_paths = sync_paths
        self._settle_after = SETTLE_AFTER if settle_after is None else settle_after
        self._fd: int | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # Batches waiting for the thread that holds the lock to record them.
        self._queue: list[_Pending] = []
        self._queue_guard = threading.Lock()
        self._syncfs = _Syncfs()
        self._recorded = threading.Event()
        self._stopping = threading.Event()
        self._closing = False
        self._settler: threading.Thread | None = None
        # What this process has read of the journal, to tell whether a change may go on
        # without a settle (see touches).
        self._read = _RecordedPaths()
        self._read_guard = threading.Lock()

    # --- the file and its lock -------------------------------------------------------

    def _descriptor(self, create: bool) -> int | None:
        if self._fd is not None and self._pid != os.getpid():
            # Inherited through a fork: its lock would be shared with the parent's.
            self._fd = None
        if self._fd is None:
            flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
            directory = os.path.dirname(self.path)
            if create:
                self._make_dirs(directory)
            try:
                self._fd = os.open(self.path, flags | (os.O_CREAT if create else 0), 0o644)
            except (FileNotFoundError, NotADirectoryError):
                if create:
                    raise
                return None
            except OSError as error:
                # A store mounted read-only has nothing to settle or replay into.
                if create or error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                return None
            self._pid = os.getpid()
            if create:
                # The journal's own entry must survive a crash.
                parent = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(parent)
                finally:
                    os.close(parent)
        return self._fd

    @contextmanager
    def _locked(self, create: bool = False) -> Iterator[int | None]:
        with self._lock:
            fd = self._descriptor(create)
            if fd is None:
                yield None
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _existing(self) -> int | None:
        """The journal's descriptor, None where there is no journal (nothing recorded)."""
        fd = self._fd
        if fd is None:
            with self._lock:
                fd = self._descriptor(create=False)
        return fd

    def pending(self) -> bool:
        """Whether any process has recorded files that are not settled yet."""
        fd = self._existing()
        return fd is not None and os.fstat(fd).st_size > 0

    def touches(self, reals: Iterable[str]) -> bool:
        """Whether a record not settled yet writes or removes one of ``reals`` (real
        paths) or a path below one.

        A change elsewhere needs no settle before it: a replay rewrites only recorded
        paths and the directories above them. Read without the lock, from where this
        process stopped last time: a record appended meanwhile is published after this
        check, as one recorded right after a settle would be.
        """
        fd = self._existing()
        if fd is None:
            return False
        prefix = self._prefix
        with self._read_guard:
            recorded = self._recorded_paths(fd)
            return recorded is None or any(
                not real.startswith(prefix) or real[len(prefix) :] in recorded for real in reals
            )

    def _recorded_paths(self, fd: int) -> set[str] | None:
        """Every path the journal records, with the directories above them; None where
        its content cannot be told apart from a record still being appended."""
        size = os.fstat(fd).st_size
        read = self._read
        if read.end and not (
            read.end <= size
            and os.pread(fd, _RECORD_HEAD, 0) == read.first
            and os.pread(fd, _RECORD_HEAD, read.last_at) == read.last
        ):
            # Emptied since (and maybe written again), or a failed append cut back.
            read = self._read = _RecordedPaths()
        if size == 0:
            return set()
        tail = _read_range(fd, read.end, size)
        records, starts, end = _decode(tail)
        first = read.first or tail[:_RECORD_HEAD]
        if end < len(tail) or os.pread(fd, _RECORD_HEAD, 0) != first:
            return None
        if records:
            read.first = first
            read.last_at = read.end + starts[-1]
            read.last = tail[starts[-1] : starts[-1] + _RECORD_HEAD]
            read.end += end
            for record in records:
                for path, _ in record:
                    # Up to the first directory already there: those above it are too.
                    while path and path not in read.paths:
                        read.paths.add(path)
                        path = os.path.dirname(path)
        return read.paths

    # --- recording -------------------------------------------------------------------

    def record(self, entries: Sequence[Entry], publish: Callable[[], None]) -> None:
        """Append ``entries`` (real paths and contents, None for a removal, in publishing
        order) as one durable record, then ``publish`` them (rename into place, remove)
        under the same lock.

        On return the files are visible, and durable through the journal. Batches that
        arrive from other threads while one is being written go in together, with one
        ``fdatasync`` for all (a group commit).
        """
        pending = _Pending(
            encode([(self._relative(real), data) for real, data in entries]), publish
        )
        with self._queue_guard:
            self._queue.append(pending)
        with self._lock:
            if not pending.done:
                # This thread's batch is still queued: it records every batch queued.
                with self._queue_guard:
                    batch, self._queue = self._queue, []
                try:
                    fd = self._descriptor(create=True)
                    assert fd is not None
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    try:
                        _commit(fd, batch)
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                except BaseException as error:  # noqa: BLE001 - each batch's thread raises it
                    for item in batch:
                        if not item.done:
                            item.error, item.done = error, True
        if pending.error is not None:
            raise pending.error
        self._wake_settler()

    def _relative(self, real: str) -> str:
        if not real.startswith(self._prefix):
            raise ValueError(f"{real} is not below {self.root}")
        return real[len(self._prefix) :]

    def _real(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    # --- settling --------------------------------------------------------------------

    def settle(self) -> None:
        """Make every recorded file durable in place, then empty the journal.

        Most of the work is done without the lock, so that batches go on being recorded
        meanwhile: the records there at the start (each published, since publishing
        happens under the lock) are made durable first; then, under the lock, only
        those recorded since, before the journal is emptied.
        """
        with self._locked() as fd:
            if fd is None:
                return
            settled = _read_all(fd)
        if not settled:
            return
        self._make_durable(decode(settled))
        with self._locked() as fd:
            assert fd is not None
            journal = _read_all(fd)
            if not journal:
                return  # emptied meanwhile by another settle
            # Records are all different (see encode): unless another settle emptied the
            # journal meanwhile, it still begins with those synced above.
            fresh = journal.removeprefix(settled)
            if fresh:
                self._make_durable(decode(fresh))
            self._empty(fd)

    def _make_durable(self, records: list[list[Entry]]) -> None:
        dirty = _dirty_bytes()
        if self._syncfs.available and dirty is not None and dirty < SYNCFS_DIRTY_LIMIT:
            # Everything the page cache holds, cheaply while it is little. Twice: without
            # a file-system journal, ext4's syncfs flushes the disk's cache before it
            # writes the metadata blocks; the second call's flush covers them.
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._syncfs(root)
                self._syncfs(root)
                return
            except OSError:
                # It reports any file's write-back error meanwhile, maybe not one of
                # these: they are synced one by one below, which says.
                pass
            finally:
                os.close(root)
        files: set[str] = set()
        directories: set[str] = set()
        for record in records:
            for relative, data in record:
                if data is None:
                    continue  # a removal, which need not be durable (as no delete is)
                real = self._real(relative)
                files.add(real)
                # Every directory up to the root: which ones the batch made is not
                # recorded, and each new one's entry is in its parent.
                parent = os.path.dirname(real)
                while parent not in directories and len(parent) >= len(self.root):
                    directories.add(parent)
                    if parent == self.root:
                        break
                    parent = os.path.dirname(parent)
        self._sync_paths(files, directories)

    @staticmethod
    def _empty(fd: int) -> None:
        os.ftruncate(fd, 0)
        # Durable before anything else changes the tree: a journal that came back after
        # a crash would replay records over newer changes.
        os.fdatasync(fd)

    # --- recovery --------------------------------------------------------------------

    def recover(self) -> int:
        """Write every recorded file again, durably and in order, then empty the
        journal; how many files were written. Run before the store is used."""
        if not self.pending():
            return 0
        written = 0
        with self._locked() as fd:
            if fd is None:
                return 0
            for record in decode(_read_all(fd)):
                for relative, data in record:
                    if data is None:
                        self._remove(self._real(relative))
                    else:
                        self._write_durably(self._real(relative), data)
                    written += 1
            self._empty(fd)
        return written

    # --- the background settler ------------------------------------------------------

    def _wake_settler(self) -> None:
        self._recorded.set()
        with self._queue_guard:
            if self._settler is None and not self._closing:
                self._settler = threading.Thread(
                    target=self._settle_in_background, name="dockyard-journal", daemon=True
                )
                self._settler.start()

    def _settle_in_background(self) -> None:
        while True:
            self._recorded.wait()
            if self._closing:
                return
            # Records that arrive meanwhile are settled with these.
            if self._stopping.wait(self._settle_after):
                return
            self._recorded.clear()
            with suppress(OSError):
                # A failure leaves the records in the journal: the next settle, or the
                # next start's recovery, makes them durable.
                self.settle()

    def close(self) -> None:
        """Stop settling in the background, settle what is left, close the file."""
        if self._closing:
            return
        self._closing = True
        self._stopping.set()
        self._recorded.set()
        if self._settler is not None:
            self._settler.join()
            self._settler = None
        self.settle()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(slots=True)
class _RecordedPaths:
    """The journal as one process has read it: the first and the last record's head
    (each with where it is), where reading stopped, and the paths recorded up to there
    with every directory above them."""

    first: bytes = b""
    last_at: int = 0
    last: bytes = b""
    end: int = 0
    paths: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Pending:
    """A batch waiting to be recorded, and what became of it."""

    record: bytes
    publish: Callable[[], None]
    done: bool = False
    error: BaseException | None = None


def _commit(fd: int, batch: list[_Pending]) -> None:
    """Append the batches' records, make them durable at once, then publish each."""
    end = os.fstat(fd).st_size
    records = b"".join(pending.record for pending in batch)
    try:
        written = os.write(fd, records)
        if written != len(records):
            raise OSError(f"journal: short write ({written} of {len(records)} bytes)")
        os.fdatasync(fd)
    except BaseException as error:  # noqa: BLE001 - each batch's thread raises it
        # Nothing half-written may stay in front of the next record.
        with suppress(OSError):
            os.ftruncate(fd, end)
        for pending in batch:
            pending.error, pending.done = error, True
        return
    for pending in batch:
        try:
            pending.publish()
        except BaseException as error:  # noqa: BLE001 - raised in the thread that asked
            pending.error = error
        pending.done = True


def _read_all(fd: int) -> bytes:
    return _read_range(fd, 0, os.fstat(fd).st_size)


def _read_range(fd: int, offset: int, size: int) -> bytes:
    chunks = []
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
