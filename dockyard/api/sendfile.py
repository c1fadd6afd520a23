"""Sending a file's bytes with ``sendfile(2)`` on whichever event loop serves.

asyncio's ``loop.sendfile`` is what aiohttp's ``FileResponse`` uses, and uvloop (a
worker's loop with ``dockyard.eventloop: uvloop``, see ``dockyard.server``) does not
implement it: aiohttp would fall back to reading the file into memory and writing it,
piece by piece. This sends from the page cache to the socket directly on either loop.

The transport owns the socket's descriptor, and neither loop lets another reader or
writer register it. So the bytes go through a duplicate of it: the same socket, a
descriptor of its own to wait on for room to write, which also keeps the socket open
if the transport closes it meanwhile. The transport's own buffer must be empty (the
headers sent), and nothing else writes to it until this returns: the handler that
called this is the only writer of its response.
"""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any


def can_send_directly(transport: asyncio.WriteTransport) -> bool:
    """Whether ``send`` can write to this transport's socket now: a plain socket (TLS
    encrypts in the transport, so its bytes must pass through it) with nothing left in
    the transport's buffer to go before them (a client slow to take the headers)."""
    if transport.is_closing() or transport.get_write_buffer_size():
        return False
    if transport.get_extra_info("sslcontext") is not None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and hasattr(sock, "fileno")


async def send(
    transport: asyncio.WriteTransport, file: IO[Any], offset: int, count: int
) -> None:
    """Send ``count`` bytes of ``file`` from ``offset`` on a transport that
    ``can_send_directly``. Raises ``ConnectionResetError`` if the client goes away."""
    loop = asyncio.get_running_loop()
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    try:
        file_fd = file.fileno()
        while count > 0:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, count)
            except BlockingIOError:
                await _writable(loop, sock_fd)
                continue
            except (BrokenPipeError, ConnectionResetError) as error:
                raise ConnectionResetError(str(error)) from None
            if sent == 0:
                raise OSError(f"file ended {count} bytes before the length sent")
            offset += sent
            count -= sent
    finally:
        os.close(sock_fd)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, _settle, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
