"""What each request leaves behind: an access log line and its metrics.

A middleware (outermost) gives every request a record, with an id made when first
asked for, and counts it in flight; when the response has been sent in full, aiohttp
calls the access logger, which writes the line (unless ``log.accesslog.disabled``) and
counts the request, its route and repository, its status, duration and bytes. Only
then is the size of a response sent with ``sendfile`` known, which is why the counting
happens there and not in the middleware.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web import BaseRequest, StreamResponse

from dockyard import logs
from dockyard.api.context import REGISTRY
from dockyard.api.extensions import SUMMARIES
from dockyard.api.routes import PATHS_REMEMBERED, REMEMBERED_PATH_LENGTH
from dockyard.auth.http import identity_of
from dockyard.auth.service import TOKEN_PATH
from dockyard.memory import HeapTrimmer
from dockyard.metrics import Metrics

ACCESS_LOGGER = "dockyard.access"

# As in the router, each pattern with a literal every path it matches contains.
_API_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("", re.compile(r"^/?$"), "base"),
    ("_catalog", re.compile(r"^_catalog$"), "catalog"),
    ("_dockyard/repositories/", re.compile(r"^_dockyard/repositories/(?P<name>.+)$"), "extension"),
    ("_dockyard/", re.compile(r"^_dockyard/"), "extension"),
    ("/tags/list", re.compile(r"^(?P<name>.+)/tags/list$"), "tags"),
    ("/manifests/", re.compile(r"^(?P<name>.+)/manifests/[^/]+$"), "manifest"),
    ("/blobs/uploads", re.compile(r"^(?P<name>.+)/blobs/uploads(?:/[^/]*)?$"), "blob_upload"),
    ("/blobs/", re.compile(r"^(?P<name>.+)/blobs/[^/]+$"), "blob"),
    ("/referrers/", re.compile(r"^(?P<name>.+)/referrers/[^/]+$"), "referrers"),
)
_UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})


def classify(path: str, prefix: str = "") -> tuple[str, str | None]:
    """The route name (one of :data:`dockyard.metrics.ROUTES`) and repository of a path.

    The patterns are the API router's, tried in the same order, so a repository whose
    name ends in ``blobs`` or ``manifests`` is told apart the same way. Short paths are
    answered from the ones classified last (see :mod:`dockyard.api.routes`).
    """
    if len(path) <= REMEMBERED_PATH_LENGTH:
        return _remembered_classification(path, prefix)
    return _classify(path, prefix)


def _classify(path: str, prefix: str) -> tuple[str, str | None]:
    if prefix and path.startswith(prefix):
        path = path[len(prefix) :] or "/"
    if path == "/v2" or path.startswith("/v2/"):
        tail = path[3:].lstrip("/")
        for literal, pattern, route in _API_ROUTES:
            if literal not in tail:
                continue
            match = pattern.match(tail)
            if match is not None:
                return route, match.groupdict().get("name")
        return "other", None
    if path == "/ui" or path.startswith("/ui/") or path == "/":
        return "ui", None
    if path == TOKEN_PATH:
        return "auth", None
    if path == "/debug/health":
        return "health", None
    return "other", None


_remembered_classification = functools.lru_cache(maxsize=PATHS_REMEMBERED)(_classify)


# The UUID variant digit (binary 10xx) for each random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_request_id() -> str:
    """A random (version 4) UUID, as Distribution gives each request, in a tenth of the
    time ``str(uuid.uuid4())`` takes: it is made for every request."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class RequestInfo:
    """A request's record: its id, made the first time a logged line, an event or the
    access line asks for it (with no access line, most requests ask for none, and a
    random id cost more than the rest of the record), and whether it is counted in
    :class:`Activity`, which it is until its response has been sent."""

    __slots__ = ("_id", "active")

    def __init__(self) -> None:
        self._id: str | None = None
        self.active = False

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = new_request_id()
        return self._id

    def __str__(self) -> str:
        # What a line logged while handling the request shows (logs.request_id).
        return self.id


class Activity:
    """Requests between their start and the end of their response, for draining.

    aiohttp's own shutdown stops reading from a connection at once, which would starve
    an upload whose body is still arriving; the server waits on this instead, after it
    has stopped accepting connections.
    """

    def __init__(self) -> None:
        self.count = 0

    def begin(self, info: RequestInfo) -> None:
        if not info.active:
            info.active = True
            self.count += 1

    def end(self, info: RequestInfo) -> None:
        if info.active:
            info.active = False
            self.count -= 1

    async def wait_idle(self, timeout: float) -> bool:
        """Whether every request finished within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


ACTIVITY = web.AppKey("activity", Activity)


REQUEST_INFO = web.RequestKey("dockyard.request", RequestInfo)


def request_info(request: BaseRequest) -> RequestInfo:
    """The request's record (made here for requests no middleware saw)."""
    try:
        return request[REQUEST_INFO]
    except KeyError:
        return _new_request_info(request)


def _new_request_info(request: BaseRequest) -> RequestInfo:
    info = RequestInfo()
    request[REQUEST_INFO] = info
    return info


def middleware(
    prefix: str, metrics: Metrics | None, activity: Activity, heap: HeapTrimmer | None = None
) -> Middleware:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Outermost: nothing has seen the request before.
        info = _new_request_info(request)
        activity.begin(info)
        logs.request_id.set(info)
        try:
            if metrics is None:
                return await handler(request)
            return await _measured(request, handler, classify(request.path, prefix)[0], metrics)
        except asyncio.CancelledError:
            # The access logger, which ends the others, never hears of this one.
            activity.end(info)
            raise
        finally:
            if heap is not None and request.body_exists:
                heap.received(_received(request))

    return observe


async def _measured(
    request: web.Request, handler: Handler, route: str, metrics: Metrics
) -> web.StreamResponse:
    uploading = route == "blob_upload" and request.method in _UPLOAD_METHODS
    in_flight = metrics.in_flight.labels(route)
    in_flight.inc()
    if uploading:
        metrics.uploads_in_flight.inc()
    try:
        return await handler(request)
    finally:
        in_flight.dec()
        if uploading:
            metrics.uploads_in_flight.dec()
        registry = request.app.get(REGISTRY)
        if registry is not None:
            cache = registry.manifest_cache
            metrics.observe_cache("manifests", cache.hits, cache.misses)
            descriptors = registry.coordination.descriptors
            metrics.observe_cache("blobdescriptors", descriptors.hits, descriptors.misses)
        summaries = request.app.get(SUMMARIES)
        if summaries is not None:
            metrics.observe_cache("summaries", summaries.hits, summaries.misses)


def _received(request: BaseRequest) -> int:
    # What was read of the body, so streamed (chunked) uploads count too.
    content: Any = request.content
    total = getattr(content, "total_bytes", 0)
    return total if isinstance(total, int) else 0


def _sent(request: BaseRequest, response: StreamResponse) -> int:
    if request.method == "HEAD" or response.status in (204, 304) or response.status < 200:
        return 0
    if response.content_length is not None and not response.chunked:
        # FileResponse sends with sendfile, past aiohttp's byte count; the length it
        # announced is what went out (a client that hung up early ends the request
        # before this is called).
        return response.content_length
    return response.body_length


def request_logger(
    prefix: str, emit: bool, metrics: Metrics | None, activity: Activity | None = None
) -> type[AbstractAccessLogger]:
    """aiohttp's access-logger class for this server: called when a response has been
    sent, it writes the line (``emit``), counts the request and ends its activity."""
    records = logs.RecordsFromTemplate(access_logger(), logging.INFO)
    # Made in the worker that serves: its pid for every line it writes.
    pid = os.getpid()

    class RequestLogger(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return True

        def log(self, request: BaseRequest, response: StreamResponse, time_: float) -> None:
            info = request_info(request)
            if activity is not None:
                activity.end(info)
            if metrics is None and not emit:
                return
            route, repository = classify(request.path, prefix)
            received = _received(request)
            sent = _sent(request, response)
            if metrics is not None:
                metrics.record_request(
                    route, request.method, response.status, time_, received, sent
                )
            if emit:
                self._line(request, response, time_, info, route, repository, received, sent)

        def _line(
            self,
            request: BaseRequest,
            response: StreamResponse,
            seconds: float,
            info: RequestInfo,
            route: str,
            repository: str | None,
            received: int,
            sent: int,
        ) -> None:
            identity = identity_of(request) if isinstance(request, web.Request) else None
            fields: dict[str, Any] = {
                "http.request.id": info.id,
                "http.request.remoteaddr": request.remote,
                "http.request.method": request.method,
                "http.request.uri": request.path_qs,
                "http.request.host": request.host,
                "http.request.useragent": request.headers.get("User-Agent", ""),
                "http.request.contentlength": received,
                "http.response.status": response.status,
                "http.response.written": sent,
                "http.response.duration": f"{seconds:.6f}s",
                "http.route": route,
            }
            if identity is not None and identity.user is not None:
                fields["auth.user.name"] = identity.user
            if repository is not None:
                fields["vars.name"] = repository
            # Which worker process answered: requests of one client spread over all.
            fields["pid"] = pid
            records.log("%s %s %s", (request.method, request.path_qs, response.status), fields)

    return RequestLogger


def access_logger() -> logging.Logger:
    """The logger access lines go to: at info whatever ``log.level`` says, as
    Distribution's access log is independent of its level (``log.accesslog.disabled``
    turns it off)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    return logger
