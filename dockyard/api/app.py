"""Build the aiohttp application from a config: stores, routes, headers, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from dockyard import metrics as metrics_module
from dockyard.api import extensions, health, observe, routes
from dockyard.api.background import start_jobs
from dockyard.api.context import CATALOG_MAX_ENTRIES, HEAP_TRIMMER, REGISTRY, URLS
from dockyard.api.errors import error_middleware, error_response
from dockyard.api.urls import UrlBuilder
from dockyard.auth.http import install as install_auth
from dockyard.config import Config
from dockyard.errors import Unavailable
from dockyard.memory import HeapTrimmer, heap_trim_function
from dockyard.notifications import install as install_notifications
from dockyard.proxy import install as install_proxy
from dockyard.registry import Registry, assembly
from dockyard.registry.cache import DigestCache
from dockyard.registry.gc import GcOptions
from dockyard.registry.store_use import using_store
from dockyard.storage.driver import StorageDriver

API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")


def build_registry(config: Config) -> Registry:
    """The configured registry, its storage timed and counted when metrics are on."""
    metrics = metrics_module.active()
    if metrics is None:
        return assembly.build_registry(config)
    active = metrics

    def instrument(driver: StorageDriver) -> StorageDriver:
        # Storage operations are timed and their failures counted from outside the driver.
        return metrics_module.InstrumentedDriver(driver, active)

    return assembly.build_registry(config, instrument)


def _header_adder(
    config: Config,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    configured = [(name, ", ".join(values)) for name, values in config.http.headers.items()]

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
        for name, value in configured:
            response.headers.setdefault(name, value)

    return add_headers


def create_app(
    config: Config, registry: Registry | None = None, background: bool = True
) -> web.Application:
    """The application; ``background`` runs the periodic maintenance jobs in it."""
    registry = registry or build_registry(config)
    middlewares: list[Middleware] = [error_middleware]
    checker: health.StorageHealth | None = None
    if config.health.storagedriver.enabled:
        checker = health.StorageHealth(
            registry.driver,
            config.health.storagedriver.interval,
            config.health.storagedriver.threshold,
        )
        middlewares.insert(0, _health_gate(checker))
    # Outermost: every request gets its id, route and repository before anything can
    # answer it, for the access log line and the metrics.
    activity = observe.Activity()
    # The C heap's free pages go back to the system once a burst of uploads is over.
    heap = HeapTrimmer(heap_trim_function())
    registry.deferred.when_each_ends(heap.work_done)
    middlewares.insert(
        0, observe.middleware(_prefix(config), metrics_module.active(), activity, heap)
    )
    # A larger read buffer lets the socket keep filling while an upload piece is hashed.
    app = web.Application(
        middlewares=middlewares, client_max_size=0, handler_args={"read_bufsize": 1 << 20}
    )
    app[REGISTRY] = registry
    app[observe.ACTIVITY] = activity
    app[HEAP_TRIMMER] = heap
    app[URLS] = UrlBuilder(config.http.prefix, config.http.host, config.http.relativeurls)
    app[CATALOG_MAX_ENTRIES] = config.catalog.maxentries
    gc = config.dockyard.gc
    app[extensions.COLLECTOR] = extensions.CollectorState(
        GcOptions(
            delete_untagged=gc.deleteuntagged,
            delay=gc.delay.total_seconds(),
            settle=gc.settle.total_seconds(),
        )
    )
    app[extensions.SUMMARIES] = DigestCache(8 << 20)
    if checker is not None:
        app[health.STORAGE_HEALTH] = checker
    app.on_response_prepare.append(_header_adder(config))
    # First in, so last out: what is installed below (a mirror storing the blobs its
    # clients already took, notifications still to send) ends while the store is open
    # and held against an offline collection.
    app.cleanup_ctx.append(_lifecycle(config, registry, checker, background))

    prefix = _prefix(config)
    # aiohttp tries the routes under one prefix in the order they were added: nearly
    # every request is for the catch-all, so it comes first.
    app.router.add_route("*", f"{prefix}/v2/{{tail:.*}}", routes.dispatch)
    app.router.add_route("*", f"{prefix}/v2", routes.dispatch)
    app.router.add_get("/debug/health", health.health)
    # Access control (auth.*, dockyard.auth): a middleware innermost, inside the error
    # middleware, and the built-in token service's endpoint when it is enabled.
    install_auth(app, config)
    install_notifications(app, config)  # notifications.endpoints: events, innermost
    # A pull-through cache when the configuration names an upstream (proxy sections).
    install_proxy(app, config, registry, background, heap.received)
    if config.dockyard.ui.enabled:
        # The web UI under /ui (and / redirecting there); it reaches this server's API
        # over loopback HTTP like any client, so auth applies to it unchanged.
        from dockyard.web import mount_in_server

        mount_in_server(app, config)
    return app


def _prefix(config: Config) -> str:
    return "/" + config.http.prefix.strip("/") if config.http.prefix.strip("/") else ""


def _lifecycle(
    config: Config,
    registry: Registry,
    checker: health.StorageHealth | None,
    background: bool,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Held while this process serves: a collection from the command line then knows
        # it is not alone, and one that is makes this wait before serving.
        async with using_store(registry.driver):
            if checker is not None:
                await checker.check_once()
                checker.start()
            jobs = start_jobs(config, registry, app[extensions.COLLECTOR]) if background else []
            jobs.append(asyncio.create_task(app[HEAP_TRIMMER].run()))
            yield
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            if checker is not None:
                await checker.stop()
            await registry.close()

    return lifecycle


def _health_gate(checker: health.StorageHealth) -> Middleware:
    @web.middleware
    async def gate(request: web.Request, handler: routes.Endpoint) -> web.StreamResponse:
        # Like Distribution: while storage is unhealthy every API request is refused,
        # so a load balancer moves clients elsewhere; the health page itself still answers.
        if not checker.healthy and request.path != "/debug/health":
            return error_response(Unavailable(detail=checker.problems()), request)
        return await handler(request)

    return gate
