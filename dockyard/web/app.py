"""The UI as an aiohttp application: mounted in ``dockyard serve`` or run standalone."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dockyard.config import Config
from dockyard.web import security
from dockyard.web.browse import Browser, Catalogue
from dockyard.web.client import RegistryClient, RequestStats
from dockyard.web.render import STATIC, Urls, make_environment, static_version
from dockyard.web.settings import Credentials, UISettings, settings_for_server

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger("dockyard.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class UIState:
    settings: UISettings
    client: RegistryClient
    catalogue: Catalogue
    urls: Urls
    base: str
    # Collections started from the page; held here so that a browser going away does
    # not cancel a run the registry is in the middle of.
    runs: set[asyncio.Task[Any]] = field(default_factory=set)
    _templates: jinja2.Environment | None = None

    @property
    def templates(self) -> jinja2.Environment:
        """Made when the first page is rendered: a registry whose page nobody opens
        never loads Jinja2 (about 2 MiB in every worker)."""
        if self._templates is None:
            self._templates = make_environment()
        return self._templates


UI = web.AppKey("dockyard_ui", UIState)
STATS_KEY = "dockyard_ui.stats"
STARTED_KEY = "dockyard_ui.started"


def state_of(request: web.Request) -> UIState:
    return request.app[UI]


def stats_of(request: web.Request) -> RequestStats:
    stats = request.get(STATS_KEY)
    if not isinstance(stats, RequestStats):
        stats = RequestStats()
        request[STATS_KEY] = stats
    return stats


def credentials_for(request: web.Request) -> Credentials | None:
    """The configured credentials, else those the browser sent (Basic), else none.

    The browser's credentials are passed through to the registry for this one request
    and never stored: each person sees what the registry lets them see.
    """
    configured = state_of(request).settings.credentials
    if configured is not None:
        return configured
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return Credentials(username, password) if colon else None


def browser_for(request: web.Request) -> Browser:
    state = state_of(request)
    session = state.client.session(credentials_for(request), stats_of(request))
    return Browser(state.catalogue, session)


def create_ui_app(settings: UISettings, base: str = "/ui") -> web.Application:
    """The UI, to be mounted at ``base`` (its links are built for that path)."""
    from dockyard.web import views

    app = web.Application(middlewares=[views.error_pages])
    client = RegistryClient(settings)
    version = static_version()
    app[UI] = UIState(
        settings=settings,
        client=client,
        catalogue=Catalogue(client),
        urls=Urls(base, version),
        base=base,
    )
    views.add_routes(app)
    app.router.add_static("/static", STATIC, name="static")
    app.on_response_prepare.append(_on_prepare)
    app.cleanup_ctx.append(_client_lifecycle)
    return app


async def _client_lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[UI]
    await state.client.start()
    yield
    for task in list(state.runs):
        task.cancel()
    await asyncio.gather(*state.runs, return_exceptions=True)
    await state.client.close()


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    state = request.app.get(UI)
    if state is None:
        return
    security.add_headers(request, response, state.base + "/")
    if request.path.startswith(f"{state.base}/static/"):
        # Asset URLs carry a hash of the assets, so a cached copy is never stale.
        if request.query.get("v") == state.urls.version:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return
    # Pages show the registry's current state, and may show what only this user can see.
    response.headers.setdefault("Cache-Control", "no-store")
    stats = request.get(STATS_KEY)
    started = request.get(STARTED_KEY)
    if isinstance(stats, RequestStats) and isinstance(started, float):
        total = (time.monotonic() - started) * 1000
        response.headers["X-Registry-Requests"] = str(stats.requests)
        response.headers["Server-Timing"] = (
            f'registry;dur={stats.seconds * 1000:.1f};desc="{stats.requests} requests", '
            f"total;dur={total:.1f}"
        )


def mount_in_server(app: web.Application, config: Config) -> None:
    """Mount the UI in ``dockyard serve``'s application, with ``/`` leading to it."""
    prefix = "/" + config.http.prefix.strip("/") if config.http.prefix.strip("/") else ""
    base = f"{prefix}/ui"
    app.add_subapp(base, create_ui_app(settings_for_server(config), base))
    _add_redirects(app, base, prefix)


def _add_redirects(app: web.Application, base: str, prefix: str = "") -> None:
    async def to_ui(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{base}/")

    app.router.add_get(base, to_ui)
    app.router.add_get(f"{prefix}/", to_ui)
    if prefix:
        app.router.add_get(prefix, to_ui)


def standalone_app(settings: UISettings) -> web.Application:
    """``dockyard ui``: the UI alone at ``/ui``, with ``/`` leading to it."""
    root = web.Application()
    root.add_subapp("/ui", create_ui_app(settings, "/ui"))
    _add_redirects(root, "/ui")
    return root


def run_standalone(settings: UISettings, listen: str) -> None:
    from dockyard.server import parse_addr

    host, port = parse_addr(listen)
    log.info(
        "web UI for %s on %s (%s)",
        settings.display_url,
        listen,
        "read-only" if settings.read_only else "deleting allowed",
    )
    web.run_app(
        standalone_app(settings),
        host=host,
        port=port,
        print=None,
        access_log=logging.getLogger("dockyard.access"),
        shutdown_timeout=5.0,
    )
