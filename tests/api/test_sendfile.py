"""Blob files sent with sendfile(2) on both event loops a worker can run.

Each test runs an aiohttp server and client on a loop of the kind under test (asyncio's,
uvloop's). The response class refuses aiohttp's fallback (reading the file into memory
and writing it), so a GET that succeeds went through ``dockyard.api.sendfile``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import IO, Any, cast

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from dockyard.api import sendfile
from dockyard.api.blobs import BlobFileResponse
from dockyard.certs import create_certificates

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class DirectOnly(BlobFileResponse):
    async def _sendfile_fallback(
        self, writer: AbstractStreamWriter, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        raise AssertionError("the file went through aiohttp's read-and-write fallback")


def _run(loop_kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_kind]) as runner:
        runner.run(main())


async def _serve(path: Path, response: type[BlobFileResponse]) -> tuple[web.AppRunner, str]:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return response(path)

    app = web.Application()
    app.router.add_get("/blob", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/blob"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def blob_file(tmp_path: Path) -> tuple[Path, bytes]:
    # Larger than loopback's socket buffers, so sendfile fills them and waits for room.
    data = os.urandom(24 * 1024 * 1024 + 13)
    path = tmp_path / "data"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_a_whole_file_and_ranges_are_sent_directly(
    loop_kind: str, blob_file: tuple[Path, bytes]
) -> None:
    path, data = blob_file

    async def main() -> None:
        runner, url = await _serve(path, DirectOnly)
        try:
            async with aiohttp.ClientSession() as client:
                # Two in a row on one connection: the transport is usable after a send.
                for _ in range(2):
                    async with client.get(url) as response:
                        assert response.status == 200
                        body = await response.read()
                    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
                for first, last in ((0, 0), (5, 70_000), (len(data) - 9, len(data) - 1)):
                    headers = {"Range": f"bytes={first}-{last}"}
                    async with client.get(url, headers=headers) as response:
                        assert response.status == 206
                        assert await response.read() == data[first : last + 1]
        finally:
            await runner.cleanup()

    _run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_a_slow_reader_gets_every_byte(loop_kind: str, blob_file: tuple[Path, bytes]) -> None:
    path, data = blob_file

    async def main() -> None:
        runner, url = await _serve(path, DirectOnly)
        try:
            async with aiohttp.ClientSession() as client, client.get(url) as response:
                digest = hashlib.sha256()
                while chunk := await response.content.read(1024 * 1024):
                    digest.update(chunk)
                    await asyncio.sleep(0.005)
            assert digest.digest() == hashlib.sha256(data).digest()
        finally:
            await runner.cleanup()

    _run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_a_client_gone_mid_file_leaves_no_descriptor_and_the_server_serving(
    loop_kind: str, blob_file: tuple[Path, bytes]
) -> None:
    path, data = blob_file

    async def main() -> None:
        runner, url = await _serve(path, DirectOnly)
        host, port = url.removeprefix("http://").split("/")[0].split(":")
        try:
            before = _open_descriptors()
            for _ in range(3):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(f"GET /blob HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                await reader.readexactly(64 * 1024)
                # A reset rather than a close: the server's next sendfile fails.
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                writer.close()
            for _ in range(100):
                if _open_descriptors() <= before:
                    break
                await asyncio.sleep(0.05)
            assert _open_descriptors() <= before
            async with aiohttp.ClientSession() as client, client.get(url) as response:
                body = await response.read()
            assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        finally:
            await runner.cleanup()

    _run(loop_kind, main)


async def _accepted_transport(
    ssl_server: ssl.SSLContext | None = None, ssl_client: ssl.SSLContext | None = None
) -> tuple[asyncio.WriteTransport, Callable[[], Awaitable[None]]]:
    """The server's side of a new loopback connection, and how to close both sides."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.WriteTransport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports do not derive from asyncio's classes.
            accepted.set_result(cast(asyncio.WriteTransport, transport))

    server = await loop.create_server(Accept, "127.0.0.1", 0, ssl=ssl_server)
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl_client, server_hostname="127.0.0.1" if ssl_client else None
    )
    transport = await asyncio.wait_for(accepted, 10)

    async def close() -> None:
        transport.close()
        writer.close()
        server.close()
        await server.wait_closed()

    return transport, close


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_a_full_buffer_or_a_closing_transport_is_not_sent_to_directly(loop_kind: str) -> None:
    async def main() -> None:
        transport, close = await _accepted_transport()
        try:
            assert sendfile.can_send_directly(transport)
            # The peer reads nothing: what the socket cannot take stays in the buffer.
            for _ in range(256):
                transport.write(b"x" * 1024 * 1024)
                if transport.get_write_buffer_size():
                    break
            assert transport.get_write_buffer_size()
            assert not sendfile.can_send_directly(transport)
            transport.abort()
            assert not sendfile.can_send_directly(transport)
        finally:
            await close()

    _run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", list(LOOPS))
def test_tls_is_not_sent_to_directly(loop_kind: str, tmp_path: Path) -> None:
    certificates = create_certificates(tmp_path, ["127.0.0.1"], [])
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificates.server_cert, certificates.server_key)
    client_context = ssl.create_default_context(cafile=str(certificates.ca_cert))

    async def main() -> None:
        transport, close = await _accepted_transport(server_context, client_context)
        try:
            assert transport.get_extra_info("sslcontext") is not None
            assert not sendfile.can_send_directly(transport)
        finally:
            await close()

    _run(loop_kind, main)
