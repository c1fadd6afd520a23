"""A per-process cache of content that never changes under its digest.

Only immutable facts are cached (a manifest's bytes and media type by digest); whether
a repository still has a manifest, and what a tag points at, is read from storage on
every request, so another worker's delete or tag move is seen at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from dockyard.registry.digest import Digest

T = TypeVar("T")


class DigestCache(Generic[T]):
    """Least recently used, bounded by the total size of what it holds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[Digest, tuple[T, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, digest: Digest) -> T | None:
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry[0]

    def put(self, digest: Digest, value: T, size: int) -> None:
        if size > self.max_bytes:
            return
        previous = self._entries.pop(digest, None)
        if previous is not None:
            self.size -= previous[1]
        self._entries[digest] = (value, size)
        self.size += size
        while self.size > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.size -= evicted
