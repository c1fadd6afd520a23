"""Work a registry finishes after answering the request that started it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("dockyard.deferred")

# How long closing waits for unfinished work before it cancels it.
CLOSE_WAIT = 10.0


class DeferredWork:
    """Tasks started by requests that do not wait for them (the rest of a repository's
    first tag index). Each is kept here until it ends, so that closing the registry
    waits for them, and cancels what has not ended in time: cancelled, a task leaves
    what it had not finished to be done again."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[Callable[[], None]] = []

    def when_each_ends(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a task ends, however it ends."""
        self._listeners.append(listener)

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())
        for listener in self._listeners:
            listener()

    async def finished(self) -> None:
        """Once every task started so far (and any they start) has ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self, wait: float = CLOSE_WAIT) -> None:
        tasks = list(self._tasks)
        if not tasks:
            return
        _, unfinished = await asyncio.wait(tasks, timeout=wait)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
