"""Webhook notifications as Distribution sends them (``notifications`` section).

Push, pull, mount and delete events go to every configured endpoint in Distribution's
envelope format; they wait on disk until the endpoint accepts them, so an endpoint
that is down, or a restart, loses none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from dockyard.config import Config
from dockyard.notifications.endpoint import Endpoint
from dockyard.notifications.events import EVENTS_MEDIA_TYPE
from dockyard.notifications.hook import middleware
from dockyard.notifications.notifier import Notifier

NOTIFIER = web.AppKey("notifier", Notifier)

__all__ = ["EVENTS_MEDIA_TYPE", "NOTIFIER", "Endpoint", "Notifier", "install"]


def install(app: web.Application, config: Config) -> None:
    """Send the API's events to the configured endpoints (nothing when there are none).

    Must run before the application starts; the middleware goes innermost, so it sees
    the handlers' answers and errors before anything turns them into responses.
    """
    notifier = Notifier(config)
    if not notifier.endpoints:
        return
    app[NOTIFIER] = notifier
    prefix = config.http.prefix.strip("/")
    app.middlewares.append(middleware(notifier, f"/{prefix}" if prefix else ""))

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await notifier.start()
        yield
        await notifier.stop()

    app.cleanup_ctx.append(lifecycle)
