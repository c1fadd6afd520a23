"""Prometheus metrics, served on Distribution's debug address (``http.debug``).

Enabled by ``http.debug.addr`` with ``http.debug.prometheus.enabled: true``; the
metrics are then served at ``http.debug.prometheus.path`` (default ``/metrics``) on
that address, a listener of its own so that it can stay on 127.0.0.1 while the
registry listens everywhere.

With several worker processes the counters live in memory-mapped files under a
directory the supervisor makes (``prometheus_client``'s multiprocess mode); a small
process of its own serves the sum over every worker, including workers that have
since been replaced, so a counter never goes backwards when a worker dies. With one
worker the metrics stay in that process and it serves them itself.

Names follow Distribution's (``registry_http_*``, ``registry_storage_action_seconds``)
where it has the same figure, so a dashboard made for ``registry:2`` finds them.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from dockyard.config import Config
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    PreparedWrites,
    StorageDriver,
    StorageError,
)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The route names of the ``handler`` label: a small fixed set, whatever clients send.
ROUTES = (
    "base",
    "blob",
    "blob_upload",
    "manifest",
    "tags",
    "catalog",
    "referrers",
    "extension",
    "ui",
    "auth",
    "health",
    "other",
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Seconds: from a HEAD answered from cache to a multi-gigabyte layer.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
STORAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

T = TypeVar("T")


def enabled(config: Config) -> bool:
    debug = config.http.debug
    return bool(debug.addr) and debug.prometheus.enabled


def metrics_path(config: Config) -> str:
    path = config.http.debug.prometheus.path or "/metrics"
    return path if path.startswith("/") else "/" + path


def _use_multiprocess_dir(directory: str | None) -> None:
    """Point ``prometheus_client`` at ``directory`` (None: this process's memory).

    The library picks its value store from the environment when it is imported, so a
    forked worker that inherited the module re-reads it here, before any metric exists.
    """
    if directory is None:
        os.environ.pop(MULTIPROCESS_ENV, None)
    else:
        os.environ[MULTIPROCESS_ENV] = directory
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class Metrics:
    """This process's metrics; with ``registry`` None they are only written to files."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        _use_multiprocess_dir(multiprocess_dir)
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = multiprocess_dir is not None
        registry = CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.requests = Counter(
            "registry_http_requests",
            "HTTP requests answered, by route (handler), method and status code.",
            ["handler", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "registry_http_request_duration_seconds",
            "Time from a request's start to the end of its response, by route and method.",
            ["handler", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.received = Counter(
            "registry_http_request_size_bytes",
            "Request body bytes received, by route.",
            ["handler"],
            registry=registry,
        )
        self.sent = Counter(
            "registry_http_response_size_bytes",
            "Response body bytes sent, by route.",
            ["handler"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "registry_http_in_flight_requests",
            "Requests being handled now, by route.",
            ["handler"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.uploads_in_flight = Gauge(
            "registry_blob_uploads_in_flight",
            "Blob upload requests (POST, PATCH, PUT) receiving data now.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.storage_seconds = Histogram(
            "registry_storage_action_seconds",
            "Storage driver operations and their time, by driver and action.",
            ["driver", "action"],
            buckets=STORAGE_BUCKETS,
            registry=registry,
        )
        self.storage_errors = Counter(
            "registry_storage_errors",
            "Storage driver operations that raised, by driver, action and kind of error "
            "(not_found is also how a registry learns that something does not exist).",
            ["driver", "action", "error"],
            registry=registry,
        )
        self.cache = Counter(
            "registry_cache_requests",
            "Lookups in the per-process content caches, by cache and result (hit, miss).",
            ["cache", "result"],
            registry=registry,
        )
        self.gc_runs = Counter(
            "registry_gc_runs",
            "Garbage collections run in the server, by outcome (deleted, dry_run, failed).",
            ["outcome"],
            registry=registry,
        )
        self.gc_bytes_freed = Counter(
            "registry_gc_freed_bytes",
            "Bytes of blobs garbage collections deleted.",
            registry=registry,
        )
        self.gc_blobs_deleted = Counter(
            "registry_gc_deleted_blobs",
            "Blobs garbage collections deleted.",
            registry=registry,
        )
        self.gc_manifests_deleted = Counter(
            "registry_gc_deleted_manifests",
            "Manifests (untagged, with deleteUntagged) garbage collections deleted.",
            registry=registry,
        )
        self._cache_seen: dict[tuple[str, str], int] = {}

    def observe_cache(self, name: str, hits: int, misses: int) -> None:
        """Bring the counters of a cache that counts its own hits and misses up to date."""
        for result, total in (("hit", hits), ("miss", misses)):
            key = (name, result)
            seen = self._cache_seen.get(key, 0)
            if total > seen:
                self.cache.labels(name, result).inc(total - seen)
                self._cache_seen[key] = total

    def record_request(
        self, route: str, method: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(route, method.lower(), str(status)).inc()
        self.duration.labels(route, method.lower()).observe(seconds)
        if received:
            self.received.labels(route).inc(received)
        if sent:
            self.sent.labels(route).inc(sent)

    def record_collection(self, report: Mapping[str, Any] | None, dry_run: bool) -> None:
        """A finished collection's report (``GcReport.to_json``'s shape), None for a failed one."""
        if report is None:
            self.gc_runs.labels("failed").inc()
            return
        if dry_run:
            self.gc_runs.labels("dry_run").inc()
            return
        self.gc_runs.labels("deleted").inc()
        freed = report.get("bytesFreed")
        if isinstance(freed, int) and freed > 0:
            self.gc_bytes_freed.inc(freed)
        blobs = report.get("blobsDeleted")
        if isinstance(blobs, list) and blobs:
            self.gc_blobs_deleted.inc(len(blobs))
        manifests = report.get("manifestsDeleted")
        if isinstance(manifests, list) and manifests:
            self.gc_manifests_deleted.inc(len(manifests))


_active: Metrics | None = None


def activate(multiprocess_dir: str | None = None) -> Metrics:
    """Turn metrics on in this process (once: a second call returns the first)."""
    global _active
    if _active is None:
        _active = Metrics(multiprocess_dir)
    return _active


def active() -> Metrics | None:
    """This process's metrics, None when they are off."""
    return _active


def record_collection(report: Mapping[str, Any] | None, dry_run: bool) -> None:
    """Count a garbage collection in this process's metrics, if they are on."""
    if _active is not None:
        _active.record_collection(report, dry_run)


# --- storage ------------------------------------------------------------------------------


def _error_kind(error: Exception) -> str:
    if isinstance(error, PathNotFoundError):
        return "not_found"
    if isinstance(error, InvalidPathError):
        return "invalid_path"
    if isinstance(error, InvalidOffsetError):
        return "invalid_offset"
    if isinstance(error, StorageError):
        return "storage"
    return "other"


class _Timer:
    def __init__(self, metrics: Metrics, driver: str, action: str) -> None:
        self.metrics = metrics
        self.driver = driver
        self.action = action
        self.start = 0.0

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.metrics.storage_seconds.labels(self.driver, self.action).observe(
            time.perf_counter() - self.start
        )
        if isinstance(error, Exception):
            self.metrics.storage_errors.labels(self.driver, self.action, _error_kind(error)).inc()


class InstrumentedWriter(FileWriter):
    def __init__(self, inner: FileWriter, metrics: Metrics, driver: str) -> None:
        self.inner = inner
        self.metrics = metrics
        self.driver = driver

    @property
    def size(self) -> int:
        return self.inner.size

    async def write(self, data: bytes) -> None:
        with _Timer(self.metrics, self.driver, "writer_write"):
            await self.inner.write(data)

    def blocking_append(self) -> Callable[[bytes], None] | None:
        append = self.inner.blocking_append()
        if append is None:
            return None

        def timed(data: bytes) -> None:
            # From the caller's thread: the client library's metrics are thread-safe.
            with _Timer(self.metrics, self.driver, "writer_write"):
                append(data)

        return timed

    async def commit(self) -> None:
        with _Timer(self.metrics, self.driver, "writer_commit"):
            await self.inner.commit()

    async def seal(self) -> None:
        with _Timer(self.metrics, self.driver, "writer_seal"):
            await self.inner.seal()

    async def cancel(self) -> None:
        with _Timer(self.metrics, self.driver, "writer_cancel"):
            await self.inner.cancel()

    async def close(self) -> None:
        await self.inner.close()


class InstrumentedPreparedWrites(PreparedWrites):
    def __init__(self, inner: PreparedWrites, metrics: Metrics, driver: str) -> None:
        self.inner = inner
        self.metrics = metrics
        self.driver = driver

    async def publish(self, paths: Iterable[str]) -> None:
        with _Timer(self.metrics, self.driver, "publish"):
            await self.inner.publish(paths)

    async def publish_in_order(
        self, stages: Sequence[Iterable[str]], between: Callable[[int], None] | None = None
    ) -> None:
        with _Timer(self.metrics, self.driver, "publish"):
            await self.inner.publish_in_order(stages, between)

    async def remove_stale(self) -> None:
        await self.inner.remove_stale()

    async def discard(self) -> None:
        await self.inner.discard()


class InstrumentedDriver(DelegatingDriver):
    """Any driver, with the time and failures of each of its operations counted.

    Wraps the driver the configuration made; the driver itself knows nothing of it.
    """

    def __init__(self, inner: StorageDriver, metrics: Metrics) -> None:
        super().__init__(inner)
        self.metrics = metrics

    def _timer(self, action: str) -> _Timer:
        return _Timer(self.metrics, self.name, action)

    async def read(self, path: str) -> bytes:
        with self._timer("read"):
            return await self.inner.read(path)

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        with self._timer("write"):
            await self.inner.write(path, data, durable)

    def stream(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self._iterate("stream", self.inner.stream(path, offset, length))

    def walk(self, path: str) -> AsyncIterator[FileInfo]:
        return self._iterate("walk", self.inner.walk(path))

    async def _iterate(self, action: str, source: AsyncIterator[T]) -> AsyncIterator[T]:
        # Only the time spent in the driver counts, not the consumer's between items
        # (a slow client reading a blob is not slow storage).
        spent = 0.0
        failure: Exception | None = None
        try:
            while True:
                start = time.perf_counter()
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    spent += time.perf_counter() - start
                    break
                except Exception as error:
                    spent += time.perf_counter() - start
                    failure = error
                    raise
                spent += time.perf_counter() - start
                yield item
        finally:
            self.metrics.storage_seconds.labels(self.name, action).observe(spent)
            if failure is not None:
                self.metrics.storage_errors.labels(self.name, action, _error_kind(failure)).inc()
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()

    async def writer(self, path: str, resume_at: int | None = None) -> FileWriter:
        with self._timer("writer"):
            inner = await self.inner.writer(path, resume_at)
        return InstrumentedWriter(inner, self.metrics, self.name)

    async def writer_at_end(self, path: str) -> FileWriter:
        with self._timer("writer"):
            inner = await self.inner.writer_at_end(path)
        return InstrumentedWriter(inner, self.metrics, self.name)

    async def staged_writer(self, path: str) -> FileWriter | None:
        with self._timer("writer"):
            inner = await self.inner.staged_writer(path)
        return None if inner is None else InstrumentedWriter(inner, self.metrics, self.name)

    async def prepare_writes(
        self,
        files: Mapping[str, bytes],
        replayable: bool = False,
        removals: Sequence[str] = (),
        copies: Mapping[str, str] | None = None,
    ) -> PreparedWrites:
        with self._timer("prepare_writes"):
            inner = await self.inner.prepare_writes(files, replayable, removals, copies)
        return InstrumentedPreparedWrites(inner, self.metrics, self.name)

    async def stat(self, path: str) -> FileInfo:
        with self._timer("stat"):
            return await self.inner.stat(path)

    async def touch(self, path: str, mtime: float | None = None) -> None:
        with self._timer("touch"):
            await self.inner.touch(path, mtime)

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        with self._timer("move_unless_touched"):
            return await self.inner.move_unless_touched(source, dest, since)

    async def list(self, path: str) -> list[str]:
        with self._timer("list"):
            return await self.inner.list(path)

    async def move(self, source: str, dest: str) -> None:
        with self._timer("move"):
            await self.inner.move(source, dest)

    async def delete(self, path: str) -> None:
        with self._timer("delete"):
            await self.inner.delete(path)

    async def delete_each(self, paths: Sequence[str]) -> builtins.list[bool]:
        with self._timer("delete_each"):
            return await self.inner.delete_each(paths)

    async def remove_empty(self, path: str) -> bool:
        with self._timer("remove_empty"):
            return await self.inner.remove_empty(path)


# --- the debug listener -----------------------------------------------------------------


def debug_app(path: str, collect: Callable[[], bytes]) -> web.Application:
    """The debug address's application: the metrics at ``path``, 404 elsewhere."""
    from prometheus_client import CONTENT_TYPE_LATEST

    async def metrics(request: web.Request) -> web.StreamResponse:
        # Reading every worker's files is blocking I/O: off the event loop.
        body = await asyncio.get_running_loop().run_in_executor(None, collect)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get(path, metrics)
    return app


def collector_for(metrics: Metrics) -> Callable[[], bytes]:
    from prometheus_client import generate_latest

    return lambda: generate_latest(metrics.registry)


def multiprocess_collector(directory: str) -> Callable[[], bytes]:
    """The sum over every worker's files in ``directory``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return lambda: generate_latest(registry)


def forget_process(directory: str, pid: int) -> None:
    """A worker has exited: its share of the live gauges goes (its counters stay)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def metric_samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    """The samples of an exposition (for the command line and tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)
