"""A counting reverse proxy in front of an upstream registry, on loopback.

It forwards every request unchanged (the Host header too, so a token service that
names its realm from the address it was reached at sends clients back through it) and
records each one, so a test can tell exactly what reached the upstream. It can also
go down (refuse and drop connections), hold back the end of one blob's body until the
test lets it go, and corrupt one blob's body.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.servers import free_port

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
}
HOLD_BACK = 1 << 20


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.requests: list[tuple[str, str]] = []
        # The requests among them that asked for a range (a mirror's spool fetching
        # again what a disk slower than the network could not keep).
        self.ranged: list[tuple[str, str]] = []
        self.down = False
        # Bodies whose path ends with ``gate_path``: all but the last MiB is sent, the
        # rest once ``gate`` is set.
        self.gate_path: str | None = None
        self.gate = threading.Event()
        # Bodies whose path ends with ``corrupt_path`` have their first byte changed.
        self.corrupt_path: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._start())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    def count(self, method: str | None = None, contains: str = "", whole: bool = False) -> int:
        """Requests seen; with ``whole``, only those that did not ask for a range."""
        return sum(
            1
            for seen_method, path in list(self.requests)
            if (method is None or seen_method == method) and contains in path
        ) - (self.count_ranged(method, contains) if whole else 0)

    def count_ranged(self, method: str | None = None, contains: str = "") -> int:
        return sum(
            1
            for seen_method, path in list(self.ranged)
            if (method is None or seen_method == method) and contains in path
        )

    def go_down(self) -> None:
        self.down = True
        self._run(self._site.stop())

    def come_back(self) -> None:
        self.down = False
        self._run(self._listen())

    def close(self) -> None:
        self.gate.set()

        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            # A connection kept alive from before the outage: drop it unanswered.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        self.requests.append((request.method, request.path))
        if "Range" in request.headers:
            self.ranged.append((request.method, request.path))
        body = await request.read()
        headers = {
            name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP
        }
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            if request.method != "HEAD":
                await self._copy(request.path, upstream, response)
            await response.write_eof()
            return response

    async def _copy(
        self, path: str, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> None:
        gated = self.gate_path is not None and path.endswith(self.gate_path)
        corrupt = self.corrupt_path is not None and path.endswith(self.corrupt_path)
        total = upstream.content_length or 0
        sent = 0
        async for chunk in upstream.content.iter_chunked(256 * 1024):
            if corrupt and sent == 0:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            if gated and sent + len(chunk) > total - HOLD_BACK and not self.gate.is_set():
                await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 120)
            await response.write(chunk)
            sent += len(chunk)
