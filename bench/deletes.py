"""Manifest DELETEs by digest in repositories of many tags.

A DELETE of a manifest by digest also removes every tag that points at it. Distribution
finds those tags by reading every tag of the repository, so its DELETE slows down as
the repository grows; Dockyard keeps a reverse index (which tags point at a manifest).
Each repository here holds ``tags`` tags on one kept manifest, and beside them the
manifests to delete, each under a tag of its own. The stores are written in
Distribution's layout before the servers start (bench/layout.py), so each server's first
DELETE in a repository meets a store it did not write: Dockyard indexes the
repository's tags then, and that first DELETE is timed on its own, once per repetition
in a repository of its own.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from bench.layout import Store, push_image
from bench.servers import BenchError

PREFIX = "bench-deletes"
_CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
_LAYER = b"bench deletes layer"


def repository(tags: int) -> str:
    return f"{PREFIX}/tags-{tags}"


def victim_tag(index: int) -> str:
    return f"victim-{index:04d}"


def first_repository(tags: int, rep: int) -> str:
    """Where repetition ``rep`` times a first DELETE: the repository the DELETEs in a row
    go on in (its victim 0) for the first, one of its own for each later one."""
    return repository(tags) if rep == 0 else f"{repository(tags)}-first-{rep}"


def populate(
    root: Path, sizes: tuple[int, ...], victims: int, reps: int
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """For each size, a repository of that many tags on one manifest, plus ``victims``
    manifests of their own, each tagged; and ``reps - 1`` more such repositories of one
    victim each, for the later repetitions' first DELETEs. Returns the victims' digests
    per size, and each repetition's first victim per size."""
    store = Store(root)
    digests: dict[int, list[str]] = {}
    firsts: dict[int, list[str]] = {}
    for tags in sizes:
        firsts[tags] = []
        for rep in range(reps):
            repo = first_repository(tags, rep)
            kept = push_image(store, repo, _CONFIG, [_LAYER])
            for index in range(tags):
                store.tag(repo, f"t{index:05d}", kept)
            made = []
            for index in range(victims if rep == 0 else 1):
                digest = push_image(store, repo, _CONFIG, [_LAYER], annotation=f"{repo} {index}")
                store.tag(repo, victim_tag(index), digest)
                made.append(digest)
            firsts[tags].append(made[0])
            if rep == 0:
                digests[tags] = made
    return digests, firsts


async def delete_each(
    http: aiohttp.ClientSession, base_url: str, repo: str, digests: list[str]
) -> float:
    """DELETE each manifest by digest, one after another on one connection; seconds."""
    started = time.perf_counter()
    for digest in digests:
        url = f"{base_url}/v2/{repo}/manifests/{digest}"
        async with http.delete(url) as response:
            body = await response.read()
            if response.status != 202:
                raise BenchError(f"DELETE {url}: {response.status} {body[:300]!r}")
    return time.perf_counter() - started


async def check_untagged(http: aiohttp.ClientSession, base_url: str, repo: str, tag: str) -> None:
    """A deleted manifest's tag is gone with it (not timed)."""
    url = f"{base_url}/v2/{repo}/manifests/{tag}"
    async with http.get(url) as response:
        await response.read()
        if response.status != 404:
            raise BenchError(f"GET {url} after its manifest's DELETE: {response.status}, not 404")
