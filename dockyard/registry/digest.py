"""Content digests (``algorithm:hex``) as the OCI image spec defines them."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from dockyard.errors import DigestInvalid

# The general grammar from the image spec; registered algorithms tighten the encoding.
_DIGEST_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_ENCODINGS = {
    "sha256": re.compile(r"^[a-f0-9]{64}$"),
    "sha512": re.compile(r"^[a-f0-9]{128}$"),
}
SUPPORTED_ALGORITHMS = tuple(_ENCODINGS)


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    @staticmethod
    def parse(text: str) -> Digest:
        """Parse and validate; anything but a well-formed sha256/sha512 is ``DIGEST_INVALID``."""
        return _parse(text)

    @classmethod
    def listed(cls, algorithm: str, encoded: str) -> Digest | None:
        """The digest a storage directory's names spell, or None if they spell none
        (a name that is no digest is skipped, not an error, when walking storage)."""
        pattern = _ENCODINGS.get(algorithm)
        if pattern is None or not pattern.match(encoded):
            return None
        return cls(algorithm, encoded)

    @classmethod
    def is_valid(cls, text: str) -> bool:
        try:
            cls.parse(text)
        except DigestInvalid:
            return False
        return True

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def __reduce__(self) -> tuple[type[Digest], tuple[str, str]]:
        # A collection and its helpers pickle digests by the tens of thousands; a frozen
        # dataclass's own pickling looks up its fields for each one, three times slower.
        return (Digest, (self.algorithm, self.hex))


# The digests of the links and references a registry serves repeat all the time; a
# failed parse raises and is not remembered.
@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Digest:
    if not _DIGEST_GRAMMAR.match(text):
        raise DigestInvalid("invalid digest format", detail={"digest": text[:200]})
    algorithm, _, encoded = text.partition(":")
    pattern = _ENCODINGS.get(algorithm)
    if pattern is None:
        raise DigestInvalid(
            f"unsupported digest algorithm {algorithm!r}", detail={"digest": text[:200]}
        )
    if not pattern.match(encoded):
        raise DigestInvalid("invalid digest encoding", detail={"digest": text[:200]})
    return Digest(algorithm, encoded)


def new_hasher(algorithm: str = "sha256") -> hashlib._Hash:
    return hashlib.new(algorithm)
