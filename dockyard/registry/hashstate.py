"""A SHA-256 whose running state can be saved, so any process can finish an upload.

CPython's ``hashlib`` cannot export a hash's state, so an upload continued by another
worker (or replica, or after a restart) had to hash all its data again when it finished.
Distribution saves the state after every chunk, in Go's ``crypto/sha256`` binary
encoding: ``"sha\\x03"``, the eight state words (big-endian), the 64-byte block with the
bytes not hashed yet (zero-padded), and the length hashed so far (big-endian, 64 bits).
This module hashes with OpenSSL's own SHA-256 (the library ``hashlib`` uses), through
its ``SHA256_Init``/``SHA256_Update``/``SHA256_Final`` functions on a context it owns, and
converts that context to and from the same encoding; states are exchangeable with
Distribution's.

When the library or those functions are missing, or the context does not behave as
expected (checked once, against ``hashlib``), :func:`sha256_states` returns None and
callers hash with ``hashlib`` as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

MAGIC = b"sha\x03"
BLOCK = 64
STATE_SIZE = len(MAGIC) + 8 * 4 + BLOCK + 8


class _Context(ctypes.Structure):
    # SHA256_CTX from <openssl/sha.h>: unchanged since OpenSSL 0.9.8. ``data`` holds the
    # bytes not hashed yet, in order, ``num`` of them; Nh:Nl is the length in bits.
    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * BLOCK),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    )


@dataclass(frozen=True, slots=True)
class _Library:
    init: ctypes._NamedFuncPointer
    update: ctypes._NamedFuncPointer
    final: ctypes._NamedFuncPointer


class ResumableSha256:
    """``hashlib.sha256``'s interface (update, digest, hexdigest) plus :meth:`state`.

    Updates release the GIL (ctypes does for every foreign call), as ``hashlib`` does
    for large inputs, so a hash can run on its own thread while the event loop reads.
    """

    name = "sha256"
    digest_size = 32
    block_size = BLOCK

    def __init__(self, library: _Library) -> None:
        self._library = library
        self._context = _Context()
        library.init(ctypes.byref(self._context))

    @property
    def length(self) -> int:
        """How many bytes have been hashed."""
        bits: int = (self._context.Nh << 32) | self._context.Nl
        return bits // 8

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)
        self._library.update(ctypes.byref(self._context), data, len(data))

    def digest(self) -> bytes:
        # Finishing consumes a context: finish a copy, so the hash can go on.
        context = _Context.from_buffer_copy(self._context)
        out = ctypes.create_string_buffer(self.digest_size)
        self._library.final(out, ctypes.byref(context))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def state(self) -> bytes:
        """The running state in Go's encoding (what Distribution stores in hashstates)."""
        context = self._context
        pending = bytes(context.data)[: context.num]
        return b"".join(
            (
                MAGIC,
                struct.pack(">8I", *context.h),
                pending.ljust(BLOCK, b"\0"),
                struct.pack(">Q", self.length),
            )
        )

    @classmethod
    def restore(cls, library: _Library, state: bytes) -> Self | None:
        """The hash a :meth:`state` describes; None if ``state`` is not a valid one."""
        if len(state) != STATE_SIZE or not state.startswith(MAGIC):
            return None
        words = struct.unpack_from(">8I", state, len(MAGIC))
        block = state[len(MAGIC) + 32 : len(MAGIC) + 32 + BLOCK]
        (length,) = struct.unpack_from(">Q", state, STATE_SIZE - 8)
        pending = length % BLOCK
        if length >= 1 << 61 or any(block[pending:]):
            return None  # Go writes zeros past the pending bytes; anything else is damage
        restored = cls(library)
        context = restored._context
        context.h[:] = words
        bits = length * 8
        context.Nl, context.Nh = bits & 0xFFFFFFFF, bits >> 32
        context.data[:pending] = block[:pending]
        context.num = pending
        return restored


class Sha256States:
    """Makes resumable SHA-256 hashes and restores them from saved states."""

    def __init__(self, library: _Library) -> None:
        self._library = library

    def new(self) -> ResumableSha256:
        return ResumableSha256(self._library)

    def restore(self, state: bytes, length: int) -> ResumableSha256 | None:
        """The hash of the first ``length`` bytes a saved state describes, or None when
        the state is damaged or is of another length."""
        restored = ResumableSha256.restore(self._library, state)
        if restored is None or restored.length != length:
            return None
        return restored


def _candidates() -> Iterator[str]:
    # First the libcrypto hashlib itself links: symbols resolve through the extension
    # module's handle, with no search (and no ldconfig run) needed.
    try:
        import _hashlib

        yield _hashlib.__file__
    except (ImportError, AttributeError):
        pass
    found = ctypes.util.find_library("crypto")
    if found is not None:
        yield found


def _load() -> _Library | None:
    for name in _candidates():
        try:
            crypto = ctypes.CDLL(name)
            library = _Library(crypto.SHA256_Init, crypto.SHA256_Update, crypto.SHA256_Final)
        except (OSError, AttributeError):
            continue
        break
    else:
        return None
    library.init.argtypes = (ctypes.c_void_p,)
    library.update.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
    library.final.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    for function in (library.init, library.update, library.final):
        function.restype = ctypes.c_int
    return library if _behaves(library) else None


def _behaves(library: _Library) -> bool:
    # A context laid out otherwise than expected must not go unnoticed: compare with
    # hashlib across a saved and restored state, at lengths on and off block boundaries.
    data = bytes(range(256)) * 5
    for cut in (0, 1, 63, 64, 65, 1000, len(data)):
        first = ResumableSha256(library)
        first.update(data[:cut])
        second = ResumableSha256.restore(library, first.state())
        if second is None or second.length != cut:
            return False
        second.update(data[cut:])
        if second.hexdigest() != hashlib.sha256(data).hexdigest():
            return False
        if first.hexdigest() != hashlib.sha256(data[:cut]).hexdigest():
            return False
    return True


@functools.cache
def sha256_states() -> Sha256States | None:
    """Resumable SHA-256 from this process's OpenSSL, or None where it cannot be had.

    Cached: the library is loaded and checked once per process, like an import.
    """
    library = _load()
    return Sha256States(library) if library is not None else None
