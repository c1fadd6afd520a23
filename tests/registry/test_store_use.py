"""Who uses a store: servers and other writers share it, a collection may have it alone."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from dockyard.registry import store_use
from dockyard.registry.store_use import IN_USE, store_alone, using_store
from dockyard.storage import FilesystemDriver, MemoryDriver


async def test_a_collection_is_alone_only_while_nobody_uses_the_store(tmp_path: Path) -> None:
    driver = FilesystemDriver(str(tmp_path))
    async with store_alone(driver) as alone:
        assert alone
    assert (tmp_path / IN_USE.lstrip("/")).is_file()
    async with AsyncExitStack() as users:
        # Two servers' workers at once: shared holds do not exclude each other.
        await users.enter_async_context(using_store(driver))
        await asyncio.wait_for(users.enter_async_context(using_store(driver)), 5)
        async with store_alone(driver) as alone:
            assert not alone
    async with store_alone(driver) as alone:
        assert alone


async def test_a_server_waits_while_a_collection_has_the_store_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_use, "RETRY_INTERVAL", 0.02)
    driver = FilesystemDriver(str(tmp_path))
    entered = asyncio.Event()

    async def serve() -> None:
        async with using_store(driver):
            entered.set()

    async with store_alone(driver) as alone:
        assert alone
        server = asyncio.create_task(serve())
        # Many retries go by, and none gets in while the collection runs.
        await asyncio.sleep(0.3)
        assert not entered.is_set()
    await asyncio.wait_for(server, 5)
    assert entered.is_set()


async def test_a_waiting_server_stops_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_use, "RETRY_INTERVAL", 0.02)
    driver = FilesystemDriver(str(tmp_path))

    async def serve() -> None:
        async with using_store(driver):
            raise AssertionError("entered while the collection had the store alone")

    async with store_alone(driver) as alone:
        assert alone
        server = asyncio.create_task(serve())
        await asyncio.sleep(0.1)
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        # Its descriptor is closed: nothing of it keeps the store held.
    async with store_alone(driver) as alone:
        assert alone


async def test_object_storage_never_counts_as_alone() -> None:
    driver = MemoryDriver()
    async with using_store(driver):
        pass
    async with store_alone(driver) as alone:
        assert not alone
