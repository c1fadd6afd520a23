"""Garbage collection time: both collectors on identical copies of one store.

The store is written once through the on-disk layout (bench/layout.py): repositories
with several manifests each, every other manifest deleted the way the API deletes one
(its revision link and tag removed, its blobs and layer links left behind). Each run
gets a fresh ``cp -a`` copy, so both collectors start from the same bytes and mtimes.
A run counts only if it removed exactly the unreferenced blobs.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.layout import Store, push_image
from bench.servers import (
    DISTRIBUTION,
    DISTRIBUTION_BINARY,
    BenchError,
    registry_config,
    write_config,
)
from bench.source import DockyardSource


@dataclass(frozen=True)
class GcStore:
    root: Path
    blobs_before: int
    blobs_kept: int
    manifests: int
    deleted: int


def build_store(root: Path, repositories: int, per_repository: int) -> GcStore:
    store = Store(root)
    shared_base = os.urandom(1024)
    manifests = deleted = 0
    for index in range(repositories):
        repo = f"gc/repo-{index:04d}"
        for number in range(per_repository):
            config = (
                f'{{"architecture":"amd64","os":"linux","bench":"{index}-{number}",'
                '"rootfs":{"type":"layers","diff_ids":[]}}'
            ).encode()
            layers = [shared_base, os.urandom(512), os.urandom(512)]
            digest = push_image(store, repo, config, layers)
            manifests += 1
            if manifests % 2 == 0:
                # Deleted through the API: the revision link goes, the blobs stay.
                hex_ = digest.split(":", 1)[1]
                shutil.rmtree(
                    store.v2 / "repositories" / repo / "_manifests" / "revisions" / "sha256" / hex_
                )
                deleted += 1
            else:
                store.tag(repo, f"v{number}", digest)
    kept = manifests - deleted
    # Each kept manifest keeps itself, its config and its two own layers; plus the shared base.
    return GcStore(root, store.blob_count(), kept * 4 + 1, manifests, deleted)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def command(kind: str, config: Path) -> list[str]:
    if kind == DISTRIBUTION:
        return [DISTRIBUTION_BINARY, "garbage-collect", str(config)]
    return [
        sys.executable,
        "-m",
        "dockyard",
        "garbage-collect",
        str(config),
        "--delay",
        "0",
        "--settle",
        "1",
    ]


def collect(
    kind: str, master: GcStore, scratch: Path, timeout: float, source: DockyardSource
) -> tuple[float, float]:
    """(seconds, CPU seconds) of one collection on a fresh copy of ``master``."""
    copy = scratch / f"gc-{kind}"
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-a", str(master.root), str(copy)], check=True)
    config = scratch / f"gc-{kind}.yml"
    write_config(config, registry_config(copy, "127.0.0.1:0"))
    # The copy's pages are in the cache for both collectors alike.
    before_cpu = _children_cpu()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command(kind, config),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"{kind} garbage-collect did not finish within {timeout:.0f}s") from error
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - before_cpu
    if done.returncode != 0:
        raise BenchError(f"{kind} garbage-collect failed:\n{(done.stdout + done.stderr)[-2000:]}")
    left = Store(copy).blob_count()
    shutil.rmtree(copy, ignore_errors=True)
    if left != master.blobs_kept:
        raise BenchError(
            f"{kind} garbage-collect left {left} blobs, expected {master.blobs_kept} "
            f"(of {master.blobs_before})"
        )
    return elapsed, cpu
