"""Test data for blob figures: one random file, and a fresh digest for every push.

Pushing the same bytes twice would let a registry skip work it did the first time
(an existing blob is not moved again), so every push ends with a new 32-byte nonce.
The nonce goes at the end so the hash of the common prefix is computed once per size
and each push only copies that state and adds the nonce.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

NONCE_SIZE = 32
READ_SIZE = 1 << 20
MiB = 1 << 20


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            piece = min(left, 16 * MiB)
            out.write(os.urandom(piece))
            left -= piece


@dataclass(frozen=True)
class Blob:
    """``size - NONCE_SIZE`` bytes of the payload file, then the nonce."""

    path: Path
    size: int
    nonce: bytes
    digest: str

    @property
    def prefix(self) -> int:
        return self.size - len(self.nonce)

    def read_all(self) -> bytes:
        with open(self.path, "rb") as source:
            return source.read(self.prefix) + self.nonce

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) read with pread in READ_SIZE pieces (page cache, no thread)."""
        end = self.size if end is None else end
        fd = os.open(self.path, os.O_RDONLY)
        try:
            offset = start
            while offset < min(end, self.prefix):
                piece = os.pread(fd, min(READ_SIZE, min(end, self.prefix) - offset), offset)
                offset += len(piece)
                yield piece
        finally:
            os.close(fd)
        if end > self.prefix:
            yield self.nonce[max(start - self.prefix, 0) : end - self.prefix]


class Payload:
    """The random file and the SHA-256 state of each size's common prefix."""

    def __init__(self, path: Path, sizes: Iterable[int]) -> None:
        self.path = path
        self.sizes = sorted(set(sizes))
        largest = self.sizes[-1]
        if not path.exists() or path.stat().st_size < largest:
            write_random_file(path, largest)
        self._states: dict[int, hashlib._Hash] = {}
        state = hashlib.sha256()
        done = 0
        with open(path, "rb") as source:
            for size in self.sizes:
                prefix = size - NONCE_SIZE
                while done < prefix:
                    piece = source.read(min(16 * MiB, prefix - done))
                    state.update(piece)
                    done += len(piece)
                self._states[size] = state.copy()
        self._counter = 0

    def blob(self, size: int) -> Blob:
        self._counter += 1
        nonce = self._counter.to_bytes(8, "big") + os.urandom(NONCE_SIZE - 8)
        state = self._states[size].copy()
        state.update(nonce)
        return Blob(self.path, size, nonce, "sha256:" + state.hexdigest())
