"""Periodic maintenance inside ``dockyard serve``: upload purging and garbage collection.

With several worker processes only the first runs these, so each job runs once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from dockyard.api.extensions import CollectorState, run_collection
from dockyard.config import Config
from dockyard.errors import Unsupported
from dockyard.registry import Registry
from dockyard.registry.gc import GcOptions
from dockyard.registry.maintenance import purge_uploads

log = logging.getLogger("dockyard.background")


async def _every(interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            # One failed run must not stop the schedule; the next one tries again.
            log.exception("%s failed", name)


def start_jobs(
    config: Config, registry: Registry, collector: CollectorState
) -> list[asyncio.Task[None]]:
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    purging = config.storage.maintenance.uploadpurging
    if purging.enabled and not registry.options.read_only:

        async def purge() -> None:
            await purge_uploads(registry.driver, purging.age.total_seconds(), purging.dryrun)

        tasks.append(
            loop.create_task(_every(purging.interval.total_seconds(), purge, "upload purging"))
        )
    gc = config.dockyard.gc
    if gc.enabled and config.storage.delete.enabled and not registry.options.read_only:

        async def collect() -> None:
            options = GcOptions(
                delete_untagged=gc.deleteuntagged,
                delay=gc.delay.total_seconds(),
                settle=gc.settle.total_seconds(),
            )
            try:
                report = await run_collection(collector, registry, options)
            except Unsupported as busy:
                log.info("scheduled garbage collection skipped: %s", busy.message)
                return
            log.info("scheduled garbage collection: %s", report["summary"])

        tasks.append(
            loop.create_task(_every(gc.interval.total_seconds(), collect, "garbage collection"))
        )
    return tasks
