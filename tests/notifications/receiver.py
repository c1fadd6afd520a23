"""A webhook endpoint on 127.0.0.1 that records what a registry notifies it of.

It runs its own event loop in a thread, so tests can drive blocking clients (skopeo,
httpx) meanwhile. It can answer 500 (``failing``), stop listening and listen again on
the same port, as an endpoint that goes down and comes back would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aiohttp import web

from tests.support.servers import free_port


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.failing = False
        self.failures = 0
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(30)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            if self.failing:
                self.failures += 1
                return web.Response(status=500, text="down for maintenance")
            envelope = json.loads(body)
            self.requests.append(
                {
                    "headers": dict(request.headers),
                    "x-registry": request.headers.getall("X-Registry", []),
                    "count": len(envelope["events"]),
                }
            )
            self.events.extend(envelope["events"])
        return web.Response(status=200)

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def listen(self) -> None:
        self._run(self._listen())

    def close(self) -> None:
        self._run(self._close())

    def shutdown(self) -> None:
        self.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def wait_for(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """The events once ``done`` holds for them; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.snapshot()
            if done(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"events never became complete: {summary(events)}")
            time.sleep(0.05)


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(action, repository, digest or tag) per event, to compare sequences."""
    return [
        (
            event["action"],
            event["target"].get("repository", ""),
            event["target"].get("digest") or event["target"].get("tag", ""),
        )
        for event in events
    ]
