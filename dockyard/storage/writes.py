"""Writing a file's bytes in system calls of at most 32 KiB.

Since Linux 6.16, ext4 (xfs before it) backs a file with page-cache folios as large as
each ``write(2)`` asks for: one call of 1 MiB takes folios of up to 1 MiB. Allocations
above order 3 (32 KiB, the kernel's "costly" order) are taken from the buddy
allocator's large free blocks, and on a virtual machine with a memory balloon those
appear to be the blocks the host has taken back, to be faulted in again page by page.
On such a 2-core VM (virtio balloon, kernel 6.18), writing 128 MiB to new files ran at
150–170 MB/s in calls of 64 KiB or 1 MiB, at 6 ms of CPU per MB, and at 4,300 MB/s in
calls of 32 KiB, at 0.23 ms/MB; into memory just freed, 1 MiB calls took 0.15 ms/MB
against 0.22. Once a page cache grown over gigabytes of new files has used up the memory
that is quick to hand out, every new page costs that much whatever the call's size (6.8
ms/MB in calls of 32 KiB, 5.7 in calls of 1 MiB, on the same VM); small calls lose little
then and gain twentyfold before. Go's ``io.Copy``, which Distribution writes its blobs
with, writes at most 32 KiB at a time; so does this.
"""

from __future__ import annotations

import os

# Eight 4 KiB pages: a call of this size never asks for a folio above order 3.
WRITE_CALL = 32 << 10


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at the file's position."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_CALL]) :]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, leaving the file's position alone."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view[:WRITE_CALL], offset)
        view = view[written:]
        offset += written
