"""The malloc arena limit of serving processes, counted by glibc itself, and the heap
trim that gives freed memory back after a burst of uploads or a large listing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from dockyard.api.app import create_app
from dockyard.api.context import HEAP_TRIMMER, REGISTRY
from dockyard.config.model import Config
from dockyard.memory import (
    ARENA_ENV,
    ARENAS,
    LARGE_BODY,
    LARGE_LISTING,
    TRIM_AFTER_BYTES,
    TRIM_WHEN_QUIET,
    HeapTrimmer,
)
from dockyard.registry import layout
from dockyard.schema import validate
from tests.support.api_helpers import push_image

# Eight threads that each allocate from the C heap while all eight are alive, then the
# arena count as glibc's malloc_info reports it (one <heap nr=...> per arena).
PROGRAM = textwrap.dedent(
    """
    import ctypes, sys, threading
    from dockyard.memory import limit_malloc_arenas

    print("limited" if limit_malloc_arenas() else "unlimited")
    THREADS = 8
    allocated = threading.Barrier(THREADS + 1)
    release = threading.Event()
    held = []

    def allocate():
        held.append([bytearray(4096) for _ in range(64)])
        allocated.wait()
        release.wait()

    threads = [threading.Thread(target=allocate) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    allocated.wait()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    stream = libc.fopen(sys.argv[1].encode(), b"w")
    assert libc.malloc_info(0, stream) == 0
    libc.fclose(stream)
    release.set()
    for thread in threads:
        thread.join()
    """
)


def count_arenas(tmp_path: Path, env: dict[str, str]) -> tuple[str, int]:
    report = tmp_path / "malloc-info.xml"
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip(), len(re.findall(r'<heap nr="\d+"', report.read_text()))


@pytest.fixture
def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != ARENA_ENV}


def test_limit_caps_the_arenas_threads_get(tmp_path: Path, clean_env: dict[str, str]) -> None:
    outcome, arenas = count_arenas(tmp_path, clean_env)
    assert outcome == "limited"
    assert 1 <= arenas <= ARENAS


def test_without_the_limit_each_thread_gets_an_arena(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    # The same program with the operator's own (higher) limit: what the cap prevents.
    outcome, arenas = count_arenas(tmp_path, {**clean_env, ARENA_ENV: "16"})
    assert outcome == "unlimited"
    assert arenas > ARENAS


def test_the_operators_setting_wins(tmp_path: Path, clean_env: dict[str, str]) -> None:
    outcome, arenas = count_arenas(tmp_path, {**clean_env, ARENA_ENV: "1"})
    assert outcome == "unlimited"
    assert arenas == 1


# --- giving freed heap memory back ----------------------------------------------------

# Many heap blocks (below glibc's mmap threshold), one kept past them so that the heap's
# top cannot simply shrink, the rest freed: resident until trimmed.
TRIM_PROGRAM = textwrap.dedent(
    """
    import os
    from dockyard.memory import heap_trim_function

    def resident():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytearray(100 << 10) for _ in range(640)]
    pinned = bytearray(1000)
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])
    before = resident()
    del blocks
    freed = resident()
    heap_trim_function()()
    print(before, freed, resident())
    """
)


def test_trimming_gives_freed_heap_pages_back(clean_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", TRIM_PROGRAM],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, freed, trimmed = map(int, result.stdout.split())
    MiB = 1 << 20
    # 64 MiB written, freed, still resident; the trim returns nearly all of it.
    assert freed > before - 8 * MiB
    assert trimmed < freed - 48 * MiB


class RecordedTrims:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@asynccontextmanager
async def running(trimmer: HeapTrimmer) -> AsyncIterator[None]:
    task = asyncio.create_task(trimmer.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def serving(root: Path, **storage: Any) -> AsyncIterator[tuple[web.Application, TestServer]]:
    """The app on a filesystem store at ``root`` (with ``storage``'s other sections),
    served on a free loopback port."""
    sections = {"filesystem": {"rootdirectory": str(root)}, **storage}
    app = create_app(validate(Config, {"version": "0.1", "storage": sections}), background=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield app, server
    finally:
        await server.close()


async def one_trim(heap: HeapTrimmer) -> None:
    for _ in range(100):
        if heap.trims:
            break
        await asyncio.sleep(0.05)
    assert heap.trims == 1


async def test_the_heap_is_trimmed_once_a_burst_of_large_bodies_is_over() -> None:
    trims = RecordedTrims()
    trimmer = HeapTrimmer(trims, after_bytes=4 * LARGE_BODY, quiet=0.1)
    async with running(trimmer):
        # Small bodies (manifests) never count, however many.
        for _ in range(100):
            trimmer.received(LARGE_BODY - 1)
        await asyncio.sleep(0.3)
        assert trims.count == 0
        # Large ones do; while they keep ending, the trim waits.
        for _ in range(6):
            trimmer.received(LARGE_BODY)
            await asyncio.sleep(0.05)
        assert trims.count == 0
        await asyncio.sleep(0.3)
        assert trims.count == 1
        # Nothing more received: no second trim.
        await asyncio.sleep(0.3)
        assert trims.count == 1
        trimmer.received(4 * LARGE_BODY)
        await asyncio.sleep(0.3)
        assert trims.count == 2


async def test_a_large_listing_is_worth_a_trim_by_itself() -> None:
    trims = RecordedTrims()
    trimmer = HeapTrimmer(trims, quiet=0.1)
    async with running(trimmer):
        # Pages of a walk do not count, however many.
        for _ in range(100):
            trimmer.listed(LARGE_LISTING - 1)
        await asyncio.sleep(0.3)
        assert trims.count == 0
        trimmer.listed(LARGE_LISTING)
        await asyncio.sleep(0.3)
        assert trims.count == 1


async def test_deferred_work_is_worth_a_trim_by_itself() -> None:
    trims = RecordedTrims()
    trimmer = HeapTrimmer(trims, quiet=0.1)
    async with running(trimmer):
        await asyncio.sleep(0.3)
        assert trims.count == 0
        trimmer.work_done()
        await asyncio.sleep(0.05)
        trimmer.work_done()
        await asyncio.sleep(0.3)
        assert trims.count == 1


async def test_a_worker_trims_after_a_repositorys_first_tag_index(tmp_path: Path) -> None:
    # A repository's first DELETE of a manifest builds its tag index as deferred work:
    # thousands of links read and entries written, then freed.
    async with serving(tmp_path, delete={"enabled": True}) as (app, server):
        heap = app[HEAP_TRIMMER]
        with httpx.Client(base_url=str(server.make_url("")), timeout=30) as client:
            image = await asyncio.to_thread(push_image, client, "lib/app", "v1")
        await asyncio.sleep(TRIM_WHEN_QUIET + 0.3)
        assert heap.trims == 0
        async with aiohttp.ClientSession() as http:
            url = server.make_url(f"/v2/lib/app/manifests/{image.manifest.digest}")
            async with http.delete(url) as deleted:
                assert deleted.status == 202
        await app[REGISTRY].deferred.finished()
        assert (tmp_path / layout.tags_indexed("lib/app").lstrip("/")).exists()
        await one_trim(heap)


async def test_a_worker_trims_after_a_large_tag_list(tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    for index in range(LARGE_LISTING):
        link = tmp_path / layout.tag_current_link("lib/app", f"t{index:04d}").lstrip("/")
        link.parent.mkdir(parents=True)
        link.write_text(digest)
    async with serving(tmp_path) as (app, server), aiohttp.ClientSession() as http:
        heap = app[HEAP_TRIMMER]
        url = server.make_url("/v2/lib/app/tags/list")
        async with http.get(url.with_query(n="100")) as page:
            assert len((await page.json())["tags"]) == 100
        await asyncio.sleep(TRIM_WHEN_QUIET + 0.3)
        assert heap.trims == 0
        async with http.get(url) as whole:
            assert len((await whole.json())["tags"]) == LARGE_LISTING
        await one_trim(heap)


async def test_a_worker_trims_after_a_large_push(tmp_path: Path) -> None:
    blob = os.urandom(TRIM_AFTER_BYTES + 1)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    async with serving(tmp_path) as (app, server), aiohttp.ClientSession() as http:
        started = await http.post(server.make_url("/v2/lib/app/blobs/uploads/"))
        assert started.status == 202
        location = started.headers["Location"]
        finished = await http.put(URL(location).with_query(digest=digest), data=blob)
        assert finished.status == 201
        await one_trim(app[HEAP_TRIMMER])
