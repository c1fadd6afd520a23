"""Helper processes that share a collection's scan with its own process.

A collection's scan is CPU work in one thread: listings parsed, paths resolved, links
read, blobs looked at. On a machine with several cores, helpers scan some repositories
and blob directories while the collection's process scans the others. Each helper
opens the store with a driver of its own, made from the same storage configuration; a
scan only reads, so what a helper reports is what the collection's process would have
found itself. A collection that has the store to itself (``store_use``) also hands
them part of its deletes (``trash.DirectRemoval``).

Helpers are forked, so that they start at once with everything imported (a new
interpreter would take about half a second, a quarter of a scan here), and forked
early: ``start`` runs before the collection starts its event loop, its threads or
takes any lock, none of which a child may inherit. Where ``fork`` does not exist they
are spawned.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.util
import signal
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from dockyard.registry.digest import Digest
from dockyard.registry.gc import GarbageCollector, GcOptions, RepositoryScan
from dockyard.storage import create_driver

# Drivers whose store other processes can open: an in-memory store lives in one process.
SHARED_KINDS = frozenset({"filesystem", "s3"})

_T = TypeVar("_T")


@dataclass(frozen=True)
class StorageSpec:
    """What a helper needs to open the store: a configuration's ``storage`` driver."""

    kind: str
    params: Mapping[str, object] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        return self.kind in SHARED_KINDS


class _HelperStore:
    """A helper's event loop and collector, opened on its first batch and kept for the
    next: opening both for each batch cost about 1.4 ms, as much as deleting some thirty
    candidates, and each new driver learned the store's directories all over again.

    Opened on first use rather than when the helper starts, so that a store the helper
    cannot open fails the batches sent to it, each with the driver's own error, and not
    the whole pool.
    """

    def __init__(self) -> None:
        self._runner: asyncio.Runner | None = None
        self._collector: GarbageCollector | None = None

    def run(
        self, spec: StorageSpec, work: Callable[[GarbageCollector], Coroutine[Any, Any, _T]]
    ) -> _T:
        if self._runner is None:
            self._runner = asyncio.Runner()
        if self._collector is None:
            self._collector = self._runner.run(self._open(spec))
        return self._runner.run(work(self._collector))

    @staticmethod
    async def _open(spec: StorageSpec) -> GarbageCollector:
        return GarbageCollector(create_driver(spec.kind, dict(spec.params)), GcOptions())

    def close(self) -> None:
        if self._runner is None:
            return
        try:
            if self._collector is not None:
                self._runner.run(self._collector.driver.close())
        finally:
            self._runner.close()
            self._runner = self._collector = None


# The one store of a helper process (a pool serves one store): module state because a
# pool's worker keeps nothing else from one task to the next. Left unused in the
# collection's own process.
_HELPER_STORE = _HelperStore()


def _in_this_process(
    spec: StorageSpec, work: Callable[[GarbageCollector], Coroutine[Any, Any, _T]]
) -> _T:
    """Run a helper's batch of work on its own driver."""
    return _HELPER_STORE.run(spec, work)


def scan_repositories(
    spec: StorageSpec, names: list[str], young_after: float
) -> list[RepositoryScan]:
    """Scan ``names`` in this process (a helper's work), in order."""

    async def scan(collector: GarbageCollector) -> list[RepositoryScan]:
        return [await collector.scan_repository(name, young_after) for name in names]

    return _in_this_process(spec, scan)


def unmarked_blobs(
    spec: StorageSpec, prefixes: list[tuple[str, str]], marked: set[Digest], held: float
) -> list[dict[Digest, int]]:
    """The unmarked blobs of each (algorithm, prefix), in order (a helper's work)."""

    async def scan(collector: GarbageCollector) -> list[dict[Digest, int]]:
        return [
            await collector.unmarked_blobs(algorithm, prefix, marked, held)
            for algorithm, prefix in prefixes
        ]

    return _in_this_process(spec, scan)


def delete_each(spec: StorageSpec, paths: list[str]) -> list[bool]:
    """Delete each path, whether it was there (a helper's work)."""

    async def delete(collector: GarbageCollector) -> list[bool]:
        return await collector.driver.delete_each(paths)

    return _in_this_process(spec, delete)


def _start_helper() -> None:
    # Ctrl-C reaches every process of the terminal's group: the collection's process
    # stops its helpers itself, after the batch each is on (``close``).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A helper's store is closed as it exits (a filesystem store settles its journal).
    multiprocessing.util.Finalize(None, _HELPER_STORE.close, exitpriority=10)


def _ready() -> None:
    """A helper's first task: it has started."""


class ScanHelpers:
    """``processes`` helper processes: started by ``start`` (or on first use), stopped
    by ``close``."""

    def __init__(self, spec: StorageSpec, processes: int) -> None:
        if not spec.shared:
            raise ValueError(f"the {spec.kind} store cannot be opened by another process")
        if processes < 1:
            raise ValueError("helpers need at least one process")
        self.spec = spec
        self.processes = processes
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self._pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context(method),
            initializer=_start_helper,
        )

    def start(self) -> None:
        """Start every helper now; before this process has threads or holds locks."""
        # With ``fork`` the first task starts all of them, before the pool's own thread.
        self._pool.submit(_ready).result()

    async def scan(self, names: list[str], young_after: float) -> list[RepositoryScan]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, scan_repositories, self.spec, names, young_after
        )

    async def unmarked_blobs(
        self, prefixes: list[tuple[str, str]], marked: set[Digest], held: float
    ) -> list[dict[Digest, int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, unmarked_blobs, self.spec, prefixes, marked, held
        )

    async def delete_each(self, paths: list[str]) -> list[bool]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, delete_each, self.spec, paths)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
