"""Work a registry finishes after answering: its listeners hear of every end."""

from __future__ import annotations

import asyncio

from dockyard.registry.deferred import DeferredWork


async def test_listeners_hear_of_each_task_however_it_ends() -> None:
    deferred = DeferredWork()
    heard: list[str] = []
    deferred.when_each_ends(lambda: heard.append("first"))
    deferred.when_each_ends(lambda: heard.append("second"))
    held = asyncio.Event()

    async def finishes() -> None:
        await asyncio.sleep(0)

    async def fails() -> None:
        raise RuntimeError("the build failed")

    async def waits() -> None:
        await held.wait()

    deferred.start(finishes(), "finishes")
    deferred.start(fails(), "fails")
    await asyncio.sleep(0.05)
    assert heard == ["first", "second"] * 2
    deferred.start(waits(), "waits")
    await asyncio.sleep(0.05)
    assert len(heard) == 4
    await deferred.close(wait=0.01)
    assert heard == ["first", "second"] * 3
