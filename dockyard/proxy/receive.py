"""A blob's body from the upstream, received into buffers that are used again.

aiohttp's client hands on each receive as a new bytes object, copied out of the one the
socket's read made: every megabyte of a cold blob lands in fresh heap memory, about 120
pages faulted in per MB on a 2-core VM, where Distribution's Go client, reading into a
buffer it keeps, faults none. On a VM whose fresh pages are dear (see
``dockyard.storage.writes``), those faults, taken on the event loop, set the pace of a
cold GET.

So once aiohttp has read the response's head (after its redirects, its TLS and the
token flow), a body of known length that arrives as it is (no chunked transfer coding)
is taken off aiohttp's parser: the connection's transport is handed a buffered protocol
that receives straight into ``PIECE``-sized buffers of a pool the mirror keeps. Each
region received is a view of one buffer and holds it; a buffer goes back to the pool
when nothing holds it any more: its regions hashed and written to the spool or dropped,
no reader in the middle of one, and the receive moved on to another buffer. The pool
keeps what it was given back while fetches come, and lets it all go after a quiet
spell. The connection is closed at the end, not given back to aiohttp's pool.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from typing import Any

from dockyard.proxy.claims import PIECE
from dockyard.proxy.upstream import READ_TIMEOUT, UpstreamUnavailable

# A receive into less room than this takes a new buffer instead: the rest of the old
# one is left unused, at most this much of every PIECE.
SMALLEST_RECEIVE = 64 << 10
# Bytes received and not yet taken by the fetch before the socket is read no further.
QUEUE_LIMIT = 4 * PIECE
# Buffers kept for the next fetches, and how long after the last one was taken.
KEPT = 40
KEEP_SECONDS = 30.0


class ReceiveBuffer:
    """``PIECE`` bytes to receive into, and how many holders it has: the receive while it
    fills it, each region of it not yet released, each reader in the middle of one."""

    __slots__ = ("data", "holds", "_pool")

    def __init__(self, pool: BufferPool) -> None:
        self.data = bytearray(PIECE)
        self.holds = 0
        self._pool = pool

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0:
            self._pool.give(self)


class BufferPool:
    """Receive buffers of one process, kept for the fetches that come after."""

    def __init__(self, kept: int = KEPT, keep_seconds: float = KEEP_SECONDS) -> None:
        self.kept = kept
        self.keep_seconds = keep_seconds
        # Buffers made since the pool began (what the fetches cost in fresh memory), and
        # how many times one was taken.
        self.made = 0
        self.taken = 0
        self._free: list[ReceiveBuffer] = []
        self._last_taken = 0.0
        self._let_go: asyncio.TimerHandle | None = None

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self) -> ReceiveBuffer:
        """A buffer with one hold, the taker's."""
        self._last_taken = time.monotonic()
        self.taken += 1
        if self._free:
            buffer = self._free.pop()
        else:
            buffer = ReceiveBuffer(self)
            self.made += 1
        buffer.holds = 1
        return buffer

    def give(self, buffer: ReceiveBuffer) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a reader let go outside the loop, at exit: nothing more will come
        if len(self._free) < self.kept:
            self._free.append(buffer)
        if self._let_go is None:
            self._let_go = loop.call_later(self.keep_seconds, self._let_go_if_quiet)

    def _let_go_if_quiet(self) -> None:
        self._let_go = None
        quiet = time.monotonic() - self._last_taken
        if quiet >= self.keep_seconds:
            self._free.clear()
        elif self._free:
            self._let_go = asyncio.get_running_loop().call_later(
                self.keep_seconds - quiet, self._let_go_if_quiet
            )

    def close(self) -> None:
        if self._let_go is not None:
            self._let_go.cancel()
            self._let_go = None
        self._free.clear()


class PooledBody(asyncio.BufferedProtocol):
    """The rest of one response's body, ``remaining`` bytes, received into the pool."""

    def __init__(self, pool: BufferPool, remaining: int) -> None:
        self.remaining = remaining
        self.error: Exception | None = None
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._buffer: ReceiveBuffer | None = None
        self._filled = 0
        # Regions received and not yet taken, each holding its buffer.
        self._arrived: collections.deque[tuple[ReceiveBuffer, int, int]] = collections.deque()
        self._queued = 0
        self._paused = False
        self._woken = asyncio.Event()

    # --- the transport's side ----------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether it took the connection from aiohttp, which cannot have it back."""
        return self._transport is not None

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        transport.set_protocol(self)
        if self.remaining == 0:
            self._pause()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._buffer is None or PIECE - self._filled < SMALLEST_RECEIVE:
            if self._buffer is not None:
                self._buffer.release()
            self._buffer, self._filled = self._pool.take(), 0
        # Never past the body's end: what follows it is not the blob's.
        end = self._filled + min(PIECE - self._filled, max(self.remaining, 1))
        return memoryview(self._buffer.data)[self._filled : end]

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        assert buffer is not None
        start, self._filled = self._filled, self._filled + nbytes
        if nbytes > self.remaining:
            self.error = UpstreamUnavailable("the upstream sent more than the body's length")
            self._close()
            return
        self.remaining -= nbytes
        last = self._arrived[-1] if self._arrived else None
        if last is not None and last[0] is buffer and last[2] == start:
            # Joined to the region not yet taken that it follows: one piece, not two.
            self._arrived[-1] = (buffer, last[1], self._filled)
        else:
            buffer.hold()
            self._arrived.append((buffer, start, self._filled))
        self._queued += nbytes
        if self.remaining == 0 or self._queued >= QUEUE_LIMIT:
            self._pause()
        self._woken.set()

    def eof_received(self) -> bool | None:
        self._ended_early(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended_early(exc)

    def _ended_early(self, exc: Exception | None) -> None:
        if self.remaining > 0 and self.error is None:
            reason = f": {exc}" if exc is not None else ""
            self.error = UpstreamUnavailable(
                f"the upstream ended the body {self.remaining} bytes short{reason}"
            )
        self._woken.set()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._woken.set()

    # --- the fetch's side --------------------------------------------------------------

    async def regions(self) -> AsyncIterator[tuple[memoryview, ReceiveBuffer]]:
        """The body's bytes as they arrive, each a view of a buffer whose hold passes to
        the caller, to ``release`` once it no longer needs the bytes."""
        while True:
            while self._arrived:
                buffer, start, end = self._arrived.popleft()
                self._queued -= end - start
                if self._paused and self.remaining > 0 and self._queued < QUEUE_LIMIT:
                    self._paused = False
                    assert self._transport is not None
                    self._transport.resume_reading()
                yield memoryview(buffer.data)[start:end], buffer
            if self.error is not None:
                raise self.error
            if self.remaining == 0:
                return
            self._woken.clear()
            try:
                # Not ``wait_for``: on Python 3.11 it can swallow a cancellation that
                # comes as the event is set, and this loop would wait on.
                async with asyncio.timeout(READ_TIMEOUT):
                    await self._woken.wait()
            except TimeoutError:
                raise UpstreamUnavailable(
                    f"the upstream sent nothing for {READ_TIMEOUT:.0f} s"
                ) from None

    def close(self) -> None:
        """Let go of every buffer not handed on, and of the receive's own."""
        while self._arrived:
            self._arrived.popleft()[0].release()
        self._queued = 0
        if self._buffer is not None:
            self._buffer.release()
            self._buffer = None


def take_body(response: Any, pool: BufferPool) -> tuple[bytes, PooledBody] | None:
    """Take the rest of an aiohttp client ``response``'s body off aiohttp: the bytes it
    has already parsed, and the protocol that receives the rest into ``pool``. None when
    the body must be read through aiohttp: of unknown length, in chunks, or with a
    connection that cannot change hands. A body that came whole with the head leaves the
    connection with aiohttp; else the caller closes the response at the end."""
    length = response.content_length
    connection = response.connection
    if length is None or connection is None or "Transfer-Encoding" in response.headers:
        return None
    transport = connection.transport
    content = response.content
    if (
        transport is None
        or transport.is_closing()
        # aiohttp pauses the socket while its buffer is full, and its parser may then
        # hold bytes of the body that are in no buffer this can read.
        or not transport.is_reading()
        or content.exception() is not None
    ):
        return None
    # Nothing is received between these lines and the transport changing hands: the
    # event loop reads the socket only once this returns to it.
    early: bytes = content.read_nowait()
    body = PooledBody(pool, length - len(early))
    if content.is_eof():
        # The whole body came with the head.
        body.remaining = 0
        if len(early) != length:
            body.error = UpstreamUnavailable(
                f"the upstream sent {len(early)} bytes of a body of {length}"
            )
    else:
        body.attach(transport)
    return early, body
