"""``/debug/health`` and the periodic storage-driver check (``health.storagedriver``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from aiohttp import web

from dockyard.storage.driver import PathNotFoundError, StorageDriver

log = logging.getLogger("dockyard.health")


class StorageHealth:
    """Unhealthy after ``threshold`` failed checks in a row, healthy on the next success."""

    def __init__(self, driver: StorageDriver, interval: timedelta, threshold: int) -> None:
        self.driver = driver
        self.interval = max(interval.total_seconds(), 0.1)
        self.threshold = max(threshold, 1)
        self.failures = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    async def check_once(self) -> None:
        try:
            # The root may not exist yet in a fresh store; that is healthy.
            await self.driver.list("/docker")
        except PathNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - any failure of the backend is "unhealthy"
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            log.warning("storage driver health check failed: %s", self.last_error)
            return
        self.failures = 0
        self.last_error = None

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def problems(self) -> dict[str, str]:
        if self.healthy:
            return {}
        return {f"storagedriver_{self.driver.name}": self.last_error or "unhealthy"}


STORAGE_HEALTH = web.AppKey("storage_health", StorageHealth)


async def health(request: web.Request) -> web.StreamResponse:
    checker = request.app.get(STORAGE_HEALTH)
    problems = checker.problems() if checker else {}
    return web.json_response(problems, status=503 if problems else 200)
