from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.registry import layout
from dockyard.registry.catalog import LISTINGS_PER_TURN, Catalog, path_order_key
from dockyard.storage import MemoryDriver
from dockyard.storage.filesystem import FilesystemDriver

COMPONENTS = ["a", "b", "a-b", "a.b", "ab", "c0", "z"]


async def make(names: list[str]) -> Catalog:
    driver = MemoryDriver()
    for name in names:
        await driver.write(f"{layout.manifests(name)}/tags/x/current/link", b"x")
    # Data directories of a repository are never repositories themselves.
    await driver.write(f"{layout.REPOSITORIES}/q/_layers/sha256/aa/link", b"x")
    return Catalog(driver)


names_strategy = st.lists(
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map("/".join),
    max_size=25,
    unique=True,
)


@settings(max_examples=120, deadline=None)
@given(names=names_strategy, n=st.integers(1, 6), seed=st.integers(0, 1000))
async def test_pages_walk_the_whole_catalog_in_path_order(
    names: list[str], n: int, seed: int
) -> None:
    catalog = await make(names)
    expected = sorted(names, key=path_order_key)
    assert await catalog.repositories() == expected
    walked: list[str] = []
    last = None
    while True:
        page, more = await catalog.page(n, last)
        walked += page
        assert len(page) <= n
        if not more:
            break
        assert len(page) == n
        last = page[-1]
    assert walked == expected
    # A page may start after any name, present or not.
    probe = random.Random(seed).choice(COMPONENTS + names) if names else "a"
    page, _ = await catalog.page(n, probe)
    assert page == [name for name in expected if path_order_key(name) > path_order_key(probe)][:n]


async def test_a_long_walk_lets_other_requests_run(tmp_path: Path) -> None:
    # Small directories are listed without awaiting anything, so a walk over thousands of
    # repositories would otherwise hold the event loop from start to end. (Every
    # directory here is small: a large one is listed in a thread, which yields anyway.)
    driver = FilesystemDriver(str(tmp_path))
    names = [f"n{a}/s{b}/r{c:02d}" for a in range(8) for b in range(8) for c in range(12)]
    assert len(names) > 2 * LISTINGS_PER_TURN
    for name in names:
        os.makedirs(tmp_path / layout.manifests(name).lstrip("/"))
    turns = 0
    walking = True

    async def other_request() -> None:
        nonlocal turns
        while walking:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    turns = 0
    try:
        assert await Catalog(driver).repositories() == names
    finally:
        walking = False
        await other
    assert turns >= 2
