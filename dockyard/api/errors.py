"""Turn exceptions into the spec's JSON error responses, in one place."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dockyard.errors import NameInvalid, RegistryError, UnknownError
from dockyard.storage.driver import InvalidPathError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("dockyard.api")


def error_response(error: RegistryError, request: web.Request) -> web.Response:
    headers = dict(error.headers)
    if request.method == "HEAD":
        # A HEAD answer has no body; its status and headers carry the error.
        return web.Response(status=error.status, headers=headers)
    body = json.dumps({"errors": [error.to_json()]})
    return web.Response(
        status=error.status, text=body, content_type="application/json", headers=headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as error:
        return error_response(error, request)
    except InvalidPathError:
        # Names, tags, digests and upload ids are validated before they reach storage;
        # this is the storage driver's second line of defence saying the same thing.
        return error_response(NameInvalid(), request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(UnknownError(), request)
