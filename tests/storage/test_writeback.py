"""Large appends start their disk writes at once instead of leaving them all to the fsync.

The page cache says so itself: Linux's ``cachestat`` counts a file's cached pages that
are still dirty (not yet sent to the disk). Pages written with plain ``write`` stay
dirty for up to half a minute; after ``start_writeback`` they are being written or
already clean.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.storage.filesystem import FilesystemDriver
from dockyard.storage.writeback import WRITEBACK_FROM, start_writeback

CACHESTAT = 451  # x86_64 and aarch64 share the number of this newer system call
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


@dataclass
class PageCache:
    cached: int
    dirty: int


def page_cache(path: Path) -> PageCache:
    """How many of the file's pages are cached and how many of those are dirty."""
    libc = ctypes.CDLL(None, use_errno=True)
    stat = _Stat()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(stat), 0):
            number = ctypes.get_errno()
            if number == errno.ENOSYS:
                pytest.skip("this kernel has no cachestat (Linux 6.5 and later have)")
            raise OSError(number, os.strerror(number))
    finally:
        os.close(fd)
    return PageCache(cached=stat.nr_cache, dirty=stat.nr_dirty)


def written(path: Path, size: int, writeback: bool) -> PageCache:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, os.urandom(size))
        if writeback:
            assert start_writeback(fd, 0, size)
        return page_cache(path)
    finally:
        os.close(fd)


def test_started_writeback_leaves_no_page_dirty(tmp_path: Path) -> None:
    plain = written(tmp_path / "plain", 4 * MIB, writeback=False)
    # The control: nothing has sent these pages to the disk yet (the file system keeps
    # dirty pages; a tmpfs would not do for this test).
    assert plain.dirty >= plain.cached // 2 > 0
    started = written(tmp_path / "started", 4 * MIB, writeback=True)
    assert started.cached == plain.cached
    assert started.dirty == 0


def test_small_ranges_are_left_to_the_fsync(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "small", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"x" * (WRITEBACK_FROM - 1))
        assert not start_writeback(fd, 0, WRITEBACK_FROM - 1)
    finally:
        os.close(fd)
    assert page_cache(tmp_path / "small").dirty > 0


def test_a_writer_starts_writing_each_large_piece_before_the_commit(tmp_path: Path) -> None:
    async def main() -> PageCache:
        driver = FilesystemDriver(str(tmp_path))
        try:
            # As an upload resumed after a first chunk: the pieces land after its bytes.
            first = await driver.writer("/uploads/data")
            await first.write(b"a" * 1000)
            await first.commit()
            await first.close()
            writer = await driver.writer("/uploads/data", resume_at=1000)
            try:
                for _ in range(8):
                    await writer.write(os.urandom(MIB))
                state = page_cache(tmp_path / "uploads" / "data")
                await writer.commit()
            finally:
                await writer.close()
            return state
        finally:
            await driver.close()

    state = asyncio.run(main())
    assert state.cached >= 8 * MIB // PAGE
    # At most the page the first chunk ended in, written again by the next piece, and
    # the last page of each piece before the next one completes it.
    assert state.dirty <= 10
