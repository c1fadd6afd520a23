"""How the C allocator of a serving process behaves, and when it gives memory back.

glibc gives each thread that allocates under contention an arena of its own, up to eight
per core, and memory freed into an arena stays with it. A worker's executor threads
hash and write request bodies (buffers of up to a few MiB), so every burst of concurrent
uploads (a client pushing six layers at once) left each worker holding several arenas
of freed buffers for good: about 15 MiB per worker after one `skopeo copy`. Two arenas
per process keep that in check; the allocations that matter happen with the GIL held,
so the threads hardly contend for them anyway.

Freed buffers still stay in the arenas: glibc raises its mmap threshold to the largest
block freed so far, so after the first large upload the MiB-sized pieces of every later
one come from the heap, and what is freed below the top of the heap is kept. A worker
that has taken a few large pushes holds several MiB it no longer uses, all the time
it serves pulls. :class:`HeapTrimmer` gives those pages back (``malloc_trim``) once a
burst of large request bodies has been quiet for a moment; trimming during one would
only make the next pieces fault their pages in again.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable

log = logging.getLogger("dockyard")

# glibc's mallopt parameter for the arena limit (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
# Arenas per process: the main one and one for all the executor threads.
ARENAS = 2
# The environment variable glibc reads for the same limit; a value set there wins.
ARENA_ENV = "MALLOC_ARENA_MAX"


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap this process's (and its future children's) malloc arenas at ``arenas``.
    Returns whether the limit was set: not when ``MALLOC_ARENA_MAX`` is in the
    environment (the operator's choice stands) or the C library is not glibc."""
    if ARENA_ENV in os.environ:
        return False
    try:
        # The running interpreter's own symbols, which include its C library's.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success and 0 for a parameter this allocator does not know
    # (musl has no mallopt at all: the AttributeError above).
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.debug("the C library ignored M_ARENA_MAX")
        return False
    return True


def heap_trim_function() -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)``, which returns every free page of every arena to the
    system; None where the C library has none (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release


# Bodies from this size on are read in pieces of a MiB (uploads); smaller ones (a
# manifest) leave nothing worth trimming. How many bytes of such bodies since the last
# trim make one worth it, and how long none may have ended before it runs.
LARGE_BODY = 256 << 10
TRIM_AFTER_BYTES = 32 << 20
TRIM_WHEN_QUIET = 0.5
# A catalog or tag list of so many names or more is worth a trim by itself: answering
# 10,000 names builds their strings, the JSON and the walk behind it, and leaves about
# 2 MiB of freed heap behind in a worker (the directory listings it keeps stay). So is
# a registry's deferred work (a repository's first tag index: 5–10 MiB freed for
# 10,000 tags).
LARGE_LISTING = 1000


class HeapTrimmer:
    """Trims the C heap once ``after_bytes`` of request bodies have been received since
    the last trim, or a large listing has been answered or deferred work has ended, and
    none of these has happened for ``quiet`` seconds; ``run`` is its task."""

    def __init__(
        self,
        trim: Callable[[], None] | None,
        after_bytes: int = TRIM_AFTER_BYTES,
        quiet: float = TRIM_WHEN_QUIET,
    ) -> None:
        self._trim = trim
        self.after_bytes = after_bytes
        self.quiet = quiet
        self.pending = 0
        self.trims = 0
        self._last_large = 0.0
        self._due = asyncio.Event()

    def received(self, size: int) -> None:
        """A request body of ``size`` bytes has been read in full."""
        if self._trim is None or size < LARGE_BODY:
            return
        self.pending += size
        self._last_large = asyncio.get_running_loop().time()
        if self.pending >= self.after_bytes:
            self._due.set()

    def listed(self, names: int) -> None:
        """A catalog or tag list of ``names`` names has been answered."""
        if names >= LARGE_LISTING:
            self.work_done()

    def work_done(self) -> None:
        """Work that freed much of what it allocated has ended."""
        if self._trim is None:
            return
        self._last_large = asyncio.get_running_loop().time()
        self._due.set()

    async def run(self) -> None:
        if self._trim is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            await self._due.wait()
            # Wait until the burst is over: no large body or listing ended for ``quiet``
            # seconds.
            while (left := self._last_large + self.quiet - loop.time()) > 0:
                await asyncio.sleep(left)
            self._due.clear()
            self.pending = 0
            await asyncio.to_thread(self._trim)
            self.trims += 1
