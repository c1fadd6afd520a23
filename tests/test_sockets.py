"""A client connection widened for a blob's body reads up to a mebibyte per receive."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from dockyard.sockets import SOCKET_READ, widen_reads
from tests.support.servers import free_port

BODY = os.urandom(3 * SOCKET_READ)


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get("/blob", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/blob"
    await runner.cleanup()


async def test_a_widened_connection_reads_a_mebibyte_and_keeps_it_in_the_pool(
    server_url: str,
) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(server_url) as response:
            assert response.connection is not None
            transport = response.connection.transport
            assert transport is not None
            # asyncio's own size, which each receive asks for until widened.
            assert transport.max_size < SOCKET_READ  # type: ignore[attr-defined]
            widen_reads(response)
            assert transport.max_size == SOCKET_READ  # type: ignore[attr-defined]
            assert await response.read() == BODY
        # The one connection of the pool, reused, reads as widened.
        async with http.get(server_url) as again:
            assert again.connection is not None
            assert again.connection.transport is transport
            assert await again.read() == BODY
        assert transport.max_size == SOCKET_READ  # type: ignore[attr-defined]


def test_something_that_is_not_a_response_is_left_alone() -> None:
    widen_reads(None)
    widen_reads(object())
