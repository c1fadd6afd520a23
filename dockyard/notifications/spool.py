"""Pending events on disk, so that neither an endpoint that is down nor a restart
loses any.

Each server process claims a *slot*: a numbered directory it holds an exclusive
``flock`` on for as long as it runs, so no two processes ever write or send the same
events; a restarted server's processes claim the same numbers again and find what was
left. Inside a slot, one :class:`Spool` per endpoint: an append-only series of segment
files, one event per line, and a ``cursor`` file naming the first event not yet
delivered. An event is appended (one ``write``, no ``fsync``: what a process wrote
survives its death, only a machine crash can lose it) before the response that caused
it is sent; the cursor moves past it once the endpoint accepted it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass

log = logging.getLogger("dockyard.notifications")

SEGMENT_BYTES = 4 << 20
MAX_SLOTS = 4096
_SUFFIX = ".events"

Position = tuple[int, int]


@dataclass(slots=True)
class Slot:
    number: int
    directory: str
    lock_fd: int

    def release(self) -> None:
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            os.close(self.lock_fd)
            self.lock_fd = -1


def try_claim(root: str, number: int) -> Slot | None:
    """Slot ``number`` under ``root`` if no other process (or open slot) holds it."""
    directory = os.path.join(root, str(number))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Slot(number, directory, fd)


def claim(root: str) -> Slot:
    """The lowest-numbered slot nobody holds, so restarted processes reclaim theirs."""
    for number in range(MAX_SLOTS):
        slot = try_claim(root, number)
        if slot is not None:
            return slot
    raise OSError(f"no free notification slot under {root}")


def slot_numbers(root: str) -> list[int]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


class Spool:
    """One endpoint's queue in one slot; only the slot's holder touches it."""

    def __init__(self, directory: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        os.makedirs(directory, exist_ok=True)
        segments = self._segments()
        self._tail = segments[-1] if segments else 1
        self._fd = os.open(self._path(self._tail), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = self._repair()
        self.cursor = self._read_cursor(segments[0] if segments else self._tail)

    # --- files ---

    def _path(self, segment: int) -> str:
        return os.path.join(self.directory, f"{segment:012d}{_SUFFIX}")

    def _segments(self) -> list[int]:
        return sorted(
            int(name[: -len(_SUFFIX)])
            for name in os.listdir(self.directory)
            if name.endswith(_SUFFIX) and name[: -len(_SUFFIX)].isdigit()
        )

    def _repair(self) -> int:
        """Cut a line a dying process left half-written, so the next one starts clean."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        keep = size
        with open(self._path(self._tail), "rb") as file:
            while keep > 0:
                start = max(keep - 65536, 0)
                file.seek(start)
                block = file.read(keep - start)
                if keep == size and block.endswith(b"\n"):
                    return size
                cut = block.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                keep = start
        log.warning("dropping a partly written event at the end of %s", self.directory)
        os.truncate(self._path(self._tail), keep)
        return keep

    def _read_cursor(self, first: int) -> Position:
        try:
            with open(os.path.join(self.directory, "cursor"), encoding="ascii") as file:
                segment_text, offset_text = file.read().split()
            segment, offset = int(segment_text), int(offset_text)
        except (OSError, ValueError):
            return (first, 0)
        if segment < first:
            return (first, 0)
        return (segment, offset)

    def _write_cursor(self) -> None:
        path = os.path.join(self.directory, "cursor")
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="ascii") as file:
            file.write(f"{self.cursor[0]} {self.cursor[1]}\n")
        os.replace(temporary, path)

    # --- the queue ---

    def append(self, line: bytes) -> None:
        data = line + b"\n"
        if self._size > 0 and self._size + len(data) > self.segment_bytes:
            os.close(self._fd)
            self._tail += 1
            self._fd = os.open(
                self._path(self._tail), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
            self._size = 0
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def peek(self) -> tuple[Position, bytes] | None:
        """The first undelivered event and the position just past it, or None."""
        while True:
            segment, offset = self.cursor
            try:
                with open(self._path(segment), "rb") as file:
                    file.seek(offset)
                    line = file.readline()
            except FileNotFoundError:
                line = b""
            if line.endswith(b"\n"):
                return (segment, offset + len(line)), line[:-1]
            if segment >= self._tail:
                return None
            # A finished segment, all delivered: on to the next one.
            self.cursor = (segment + 1, 0)
            self._write_cursor()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(segment))

    def commit(self, position: Position) -> None:
        """The event before ``position`` was delivered."""
        self.cursor = position
        self._write_cursor()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
