"""Small pieces of the mirror that need no server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dockyard.proxy import _within
from dockyard.proxy.upstream import parse_challenge

DATA = bytes(range(256)) * 4


async def _pieces(size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(DATA), size):
        yield DATA[offset : offset + size]


def _collect(size: int, start: int, end: int | None) -> bytes:
    async def run() -> bytes:
        return b"".join([piece async for piece in _within(_pieces(size), start, end)])

    return asyncio.run(run())


@pytest.mark.parametrize("size", [1, 7, 100, 256, 1024, 5000])
@pytest.mark.parametrize(
    ("start", "end"), [(0, None), (0, 0), (5, 5), (99, 100), (100, 1023), (0, 1023), (1023, None)]
)
def test_within_cuts_exactly_the_range(size: int, start: int, end: int | None) -> None:
    assert _collect(size, start, end) == DATA[start : None if end is None else end + 1]


def test_bearer_challenge() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:library/alpine:pull"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:library/alpine:pull",
    }
    basic = parse_challenge('Basic realm="registry"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("") is None
