"""How an HTTP client connection that carries a blob's body reads its socket."""

from __future__ import annotations

# What a connection carrying a blob's body reads per ``recv``; see ``widen_reads``.
SOCKET_READ = 1 << 20


def widen_reads(response: object) -> None:
    """Let the connection that carries an aiohttp client ``response`` read up to
    ``SOCKET_READ`` bytes per ``recv``.

    asyncio's selector transports read at most their ``max_size``, 256 KiB, at a time.
    A blob streamed through the registry then costs a turn of the event loop per 256 KiB
    (the ``recv``, the HTTP parser, the reader's wake-up, the read timeout rescheduled,
    the ``send`` to the client), and reading what has arrived up to 1 MiB makes a quarter
    of those turns. aiohttp has no setting for it: the response gives its connection's
    transport, whose attribute each ``recv`` reads. A TLS connection's transport has
    none and keeps its reads as they are. The connection stays widened when it goes back
    to the pool; a small response is still read in one receive, of what has arrived.
    The registry's own server connections keep 256 KiB: widened too, a worker taking
    pushed layers spent more CPU per MB, not less.
    """
    connection = getattr(response, "connection", None)
    transport = getattr(connection, "transport", None)
    if transport is not None and hasattr(transport, "max_size"):
        transport.max_size = SOCKET_READ
