"""Starting the disk writes of a file's new bytes while more are still arriving.

A blob is acknowledged only once its bytes are on disk, and the fsync that makes sure of
it waits for every byte still only in the page cache: left to the end, that is a whole
blob's worth of disk writes after its last byte has arrived. Linux's
``sync_file_range(..., SYNC_FILE_RANGE_WRITE)`` starts writing a range out without
waiting for it, so the disk works while the next pieces are received and the closing
fsync finds little left to do. It promises nothing about durability (the fsync still
does that), so where it is missing (not Linux, or a C library without it) only the
timing changes.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

# linux/fs.h: start write-out of dirty pages in the range, do not wait for it.
SYNC_FILE_RANGE_WRITE = 2
# Ranges smaller than this are left to the closing fsync: for a few pages the system
# call costs more than it saves.
WRITEBACK_FROM = 256 << 10


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        # The running interpreter's own symbols, which include its C library's.
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` to
    disk, without waiting; returns whether it was asked (False where the call is
    missing, the range too small to bother, or the file system refused)."""
    if length < WRITEBACK_FROM:
        return False
    function = _sync_file_range()
    # ctypes releases the GIL around the call; a refusal (a pipe, say) changes nothing
    # that the closing fsync does not do anyway.
    return function is not None and function(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
