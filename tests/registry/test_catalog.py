from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.registry import layout
from dockyard.registry.catalog import Catalog, path_order_key
from dockyard.storage import MemoryDriver

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
