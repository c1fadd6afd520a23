"""How the C allocator of a serving process behaves.

glibc gives each thread that allocates under contention an arena of its own, up to eight
per core, and memory freed into an arena stays with it. A worker's executor threads
hash and write request bodies (buffers of up to a few MiB), so every burst of concurrent
uploads (a client pushing six layers at once) left each worker holding several arenas
of freed buffers for good: about 15 MiB per worker after one `skopeo copy`. Two arenas
per process keep that in check; the allocations that matter happen with the GIL held,
so the threads hardly contend for them anyway.
"""

from __future__ import annotations

import ctypes
import logging
import os

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
