"""The collection status kept in storage: one collection at a time across processes, and
a collection whose process died is not running any more."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.errors import Unsupported
from dockyard.registry.gc_status import TOKEN, CollectionStatus, this_host
from dockyard.storage.filesystem import FilesystemDriver


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_second_collection_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    first = CollectionStatus(FilesystemDriver(str(tmp_path)))
    second = CollectionStatus(FilesystemDriver(str(tmp_path)))
    assert await first.running() is None
    async with first.collecting():
        running = await second.running()
        assert running is not None and running["pid"] == os.getpid()
        with pytest.raises(Unsupported) as refused:
            async with second.collecting():
                pass
        assert refused.value.detail == running
        await first.record({"bytesFreed": 1})
    assert await second.running() is None
    assert await second.last() == {"bytesFreed": 1}
    async with second.collecting():  # given back: the next one may run
        assert await first.running() is not None


async def test_a_collection_whose_process_died_is_not_running(tmp_path: Path) -> None:
    driver = FilesystemDriver(str(tmp_path))
    started = int(time.time() * 1000)
    await driver.write(f"{TOKEN}/held-7-{dead_pid()}-{started}-{this_host()}", b"")
    status = CollectionStatus(driver)
    assert await status.running() is None
    async with status.collecting():
        running = await status.running()
        assert running is not None and running["pid"] == os.getpid()
        assert [name for name in await driver.list(TOKEN) if name.startswith("held-8-")]


CLAIMANTS = 6


def _claim(
    root: str, start: float, attempted: Any, results: multiprocessing.Queue[bool]
) -> None:
    def count_attempt() -> None:
        with attempted.get_lock():
            attempted.value += 1

    async def claim() -> bool:
        status = CollectionStatus(FilesystemDriver(root))
        await asyncio.sleep(max(start - time.time(), 0))
        try:
            async with status.collecting():
                count_attempt()
                # Held until every claimant has tried, however late a slow machine
                # started it: a token given back earlier could rightly be taken again.
                deadline = time.monotonic() + 60
                while attempted.value < CLAIMANTS and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        except Unsupported:
            count_attempt()
            return False
        return True

    results.put(asyncio.run(claim()))


@pytest.mark.parametrize("existing", [False, True], ids=["fresh-store", "used-store"])
async def test_of_processes_claiming_together_one_collects(tmp_path: Path, existing: bool) -> None:
    if existing:
        async with CollectionStatus(FilesystemDriver(str(tmp_path))).collecting():
            pass
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[bool] = context.Queue()
    attempted = context.Value("i", 0)
    start = time.time() + 2
    workers = [
        context.Process(target=_claim, args=(str(tmp_path), start, attempted, results))
        for _ in range(CLAIMANTS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        await asyncio.to_thread(worker.join, 90)
    assert sorted(results.get(timeout=5) for _ in workers) == [False] * (CLAIMANTS - 1) + [True]


def test_the_command_line_collection_takes_the_same_token(tmp_path: Path) -> None:
    """`dockyard garbage-collect` beside a server: refused while one runs, then recorded."""
    root = tmp_path / "data"
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\n"
    )
    command = [sys.executable, "-m", "dockyard", "garbage-collect", str(config), "--settle", "0"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *extra], check=False, capture_output=True, text=True, timeout=120
        )

    status = CollectionStatus(FilesystemDriver(str(root)))

    async def while_collecting() -> None:
        async with status.collecting():
            refused = await asyncio.to_thread(run)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "already running" in refused.stderr
            # A dry run reads only: it may run beside a collection, as in the server.
            dry = await asyncio.to_thread(run, "--dry-run")
            assert dry.returncode == 0, dry.stderr

    asyncio.run(while_collecting())
    assert asyncio.run(status.last()) is None
    done = run()
    assert done.returncode == 0, done.stderr
    last = asyncio.run(status.last())
    assert last is not None and last["dryRun"] is False and "finishedAt" in last
    assert asyncio.run(status.running()) is None
