"""Auth on the HTTP API: the middleware, what each endpoint needs, the token endpoint.

Every request under ``/v2`` is resolved with the API's own router, so the grant it needs
is decided by the endpoint that will actually serve it; an endpoint missing from the
table below needs the admin grant, so a new endpoint is closed until someone decides
otherwise. Failures become the spec's errors: 401 ``UNAUTHORIZED`` with a challenge that
tells the client how to authenticate (Basic, or Bearer with the realm, service and
scope of the token to fetch), 403 ``DENIED`` for a signed-in user the rules refuse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from dockyard.api import blobs, extensions, listing, manifests, referrers, routes, uploads
from dockyard.api.context import CATALOG_MAX_ENTRIES, registry_of, urls_of
from dockyard.auth.grants import Identity
from dockyard.auth.scopes import ADMIN, CATALOG, Access, repository
from dockyard.auth.service import (
    TOKEN_PATH,
    AuthenticationFailed,
    AuthService,
    build_auth,
    parse_basic,
)
from dockyard.config.model import Config
from dockyard.errors import Denied, PaginationNumberInvalid, RegistryError, Unauthorized
from dockyard.registry.catalog import path_order_key

log = logging.getLogger("dockyard.auth")

AUTH = web.AppKey("dockyard_auth", AuthService)
# Where the middleware leaves the caller's identity for handlers (and the UI).
IDENTITY = "dockyard.identity"


@dataclass(frozen=True, slots=True)
class Need:
    """What serving one request requires of the caller."""

    accesses: tuple[Access, ...] = ()
    signed_in: bool = False
    listing: str | None = None  # "catalog" or "usage": filtered per caller
    # Cross-repository mount source: asked for in the challenge, never required. A
    # caller who may not pull it gets a plain upload session instead of the blob.
    mount_from: str | None = None
    challenge: tuple[Access, ...] = field(default=())

    @property
    def challenge_accesses(self) -> tuple[Access, ...]:
        return self.accesses + self.challenge


Rule = Callable[[Mapping[str, str], web.Request], Need]


def _pull(params: Mapping[str, str], request: web.Request) -> Need:
    return Need((repository(params["name"], "pull"),))


def _push(params: Mapping[str, str], request: web.Request) -> Need:
    # As Distribution: writing needs pull too (clients check what exists first).
    name = params["name"]
    return Need((repository(name, "pull"), repository(name, "push")))


def _delete(params: Mapping[str, str], request: web.Request) -> Need:
    return Need((repository(params["name"], "delete"),))


def _start_upload(params: Mapping[str, str], request: web.Request) -> Need:
    need = _push(params, request)
    source = request.query.get("from")
    if "mount" in request.query and source:
        return Need(
            need.accesses, mount_from=source, challenge=(repository(source, "pull"),)
        )
    return need


_TABLE: dict[object, Rule] = {
    routes.base: lambda params, request: Need(signed_in=True),
    listing.list_catalog: lambda params, request: Need((CATALOG,), listing="catalog"),
    extensions.usage: lambda params, request: Need((CATALOG,), listing="usage"),
    extensions.collection_status: lambda params, request: Need((ADMIN,)),
    extensions.collect: lambda params, request: Need((ADMIN,)),
    extensions.delete_repository: _delete,
    listing.list_tags: _pull,
    manifests.get_manifest: _pull,
    manifests.put_manifest: _push,
    manifests.delete_manifest: _delete,
    uploads.start_upload: _start_upload,
    # Every step of an upload is part of pushing, cancelling included (Distribution
    # maps GET to pull and DELETE to delete here, which lets a reader probe sessions
    # and a writer without delete rights not clean up after itself).
    uploads.upload_status: _push,
    uploads.patch_upload: _push,
    uploads.finish_upload: _push,
    uploads.cancel_upload: _push,
    blobs.get_blob: _pull,
    blobs.delete_blob: _delete,
    referrers.list_referrers: _pull,
}


# Endpoints other work adds to ``extensions``, named so this module does not depend on
# their arrival: each is listed with the grant it needs once it exists.
for _name, _rule in (("repository_details", _pull),):
    _endpoint = getattr(extensions, _name, None)
    if _endpoint is not None:
        _TABLE[_endpoint] = _rule


def requirement(request: web.Request) -> Need:
    try:
        endpoint, params = routes.resolve(routes.raw_tail(request), request.method)
    except RegistryError:
        # No such endpoint or method: the handler answers 404/405, but only to a caller
        # who has authenticated, so probing the API teaches an outsider nothing.
        return Need(signed_in=True)
    rule = _TABLE.get(endpoint)
    if rule is None:
        return Need((ADMIN,))
    # The parameters the dispatcher passes on, so the name checked is the name served.
    return rule(params, request)


def _guarded(request: web.Request) -> bool:
    base = urls_of(request).prefix + "/v2"
    path = request.path
    return (
        request.match_info.handler is routes.dispatch
        or path == base
        or path.startswith(base + "/")
    )


def _source(request: web.Request) -> str:
    return request.remote or "unknown"


def _base_url(request: web.Request) -> str:
    urls = urls_of(request)
    if urls.host:
        return urls.host + urls.prefix
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{proto}://{host}{urls.prefix}"


def _realm(service: AuthService, request: web.Request) -> str:
    proto = request.headers.get("X-Forwarded-Proto", "https").split(",")[0].strip()
    return service.realm_for(proto, request.host, _base_url(request))


def unauthorized(
    service: AuthService,
    request: web.Request,
    accesses: tuple[Access, ...],
    error: str | None = None,
    message: str | None = None,
) -> Unauthorized:
    challenge = service.challenge(_realm(service, request), accesses, error)
    detail = [access.to_json() for access in accesses] or None
    return Unauthorized(message, detail=detail, headers={"WWW-Authenticate": challenge})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _guarded(request):
        return await handler(request)
    service = request.app[AUTH]
    need = requirement(request)
    try:
        identity = await service.identify(request.headers.get("Authorization"), _source(request))
    except AuthenticationFailed as failure:
        raise unauthorized(
            service,
            request,
            need.challenge_accesses,
            "invalid_token" if failure.invalid_token else None,
            "invalid username or password" if not failure.invalid_token else None,
        ) from None
    if need.signed_in and identity.anonymous and service.mode != "none":
        raise unauthorized(service, request, ())
    if not all(identity.allows(access) for access in need.accesses):
        detail = [a.to_json() for a in need.accesses]
        if identity.method == "basic":
            # A known user the rules refuse: asking again with the same credentials
            # cannot help, so 403 rather than a challenge.
            raise Denied(detail=detail)
        if identity.method == "token" and identity.user is not None:
            # A signed-in user's token lacks the scope. RFC 6750 answers that with 403
            # and a challenge naming the scope: clients that reuse one token across
            # requests (oras-py) fetch a new one for it, and clients that ask for the
            # right scope up front (Docker, containers/image) were refused it by the
            # token service, so "denied" is the truth. Distribution says 401 here; an
            # anonymous token still gets 401, which tells the client to sign in.
            challenge = service.challenge(
                _realm(service, request), need.challenge_accesses, "insufficient_scope"
            )
            raise Denied(detail=detail, headers={"WWW-Authenticate": challenge})
        raise unauthorized(
            service,
            request,
            need.challenge_accesses,
            "insufficient_scope" if identity.method == "token" else None,
        )
    request[IDENTITY] = identity
    if need.mount_from is not None and not identity.allows(repository(need.mount_from, "pull")):
        # Mounting would hand over a blob the caller may not read; the protocol's
        # answer to a mount that cannot be done is an ordinary upload session.
        query = request.rel_url.query.copy()
        query.popall("mount", None)
        query.popall("from", None)
        request = request.clone(rel_url=request.rel_url.with_query(query))
        request[IDENTITY] = identity
    if need.listing == "catalog" and not identity.grants.sees_everything:
        return await filtered_catalog(request, identity)
    response = await handler(request)
    if need.listing == "usage" and not identity.grants.sees_everything:
        return filtered_usage(response, identity)
    return response


def _page_size(request: web.Request, maximum: int) -> int | None:
    text = request.query.get("n")
    if text is None or text == "":
        return None
    try:
        n = int(text)
    except ValueError:
        raise PaginationNumberInvalid(detail={"n": text[:50]}) from None
    if n < 0 or n > maximum:
        raise PaginationNumberInvalid(detail={"n": n, "max": maximum})
    return n


async def filtered_catalog(request: web.Request, identity: Identity) -> web.StreamResponse:
    """The catalog as this caller may see it, paged over what they see.

    Paging over the visible names (rather than filtering the full catalog's pages)
    keeps the ``Link`` cursor a name the caller may know.
    """
    maximum = request.app[CATALOG_MAX_ENTRIES]
    n = _page_size(request, maximum)
    size = maximum if n is None else n
    names = sorted(
        (name for name in await registry_of(request).catalog.repositories() if identity.grants.can_see(name)),
        key=path_order_key,
    )
    last = request.query.get("last")
    if last:
        key = path_order_key(last)
        names = [name for name in names if path_order_key(name) > key]
    page, more = names[:size], len(names) > size
    headers = {}
    if more and page:
        link = urls_of(request).v2_path("_catalog", {"n": str(size), "last": page[-1]})
        headers["Link"] = f'<{link}>; rel="next"'
    return web.json_response({"repositories": page}, headers=headers)


def filtered_usage(response: web.StreamResponse, identity: Identity) -> web.StreamResponse:
    """Usage limited to the repositories the caller may see; the store-wide figures,
    which sum over everyone's repositories, are withheld (null)."""
    if not isinstance(response, web.Response) or response.status != 200:
        return response
    body = response.body
    if not isinstance(body, bytes | bytearray):
        return response
    data = json.loads(body)
    if not isinstance(data, dict):
        return response
    repositories = data.get("repositories") or []
    filtered: dict[str, object] = {key: None for key in data if key != "repositories"}
    filtered["repositories"] = [
        entry
        for entry in repositories
        if isinstance(entry, dict) and identity.grants.can_see(str(entry.get("name", "")))
    ]
    return web.json_response(filtered)


# --- the token endpoint ----------------------------------------------------------------


def _token_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


async def token_endpoint(request: web.Request) -> web.StreamResponse:
    """``GET /auth/token?service=...&scope=...`` (Basic credentials, or none for an
    anonymous token) and the OAuth 2 ``POST`` form with ``grant_type=password``."""
    service = request.app[AUTH]
    source = _source(request)
    user: str | None = None
    if request.method == "POST":
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        if grant_type != "password":
            # Refresh tokens are not issued, so there is nothing to refresh.
            return _token_error(400, "unsupported_grant_type", "only grant_type=password is supported")
        audience = str(form.get("service", "")) or None
        scopes = [str(form.get("scope", ""))]
        identity = await service.sign_in(str(form.get("username", "")), str(form.get("password", "")), source)
        if identity is None:
            raise _sign_in_failed(service)
        user = identity.user
    else:
        audience = request.query.get("service") or None
        scopes = request.query.getall("scope", [])
        header = request.headers.get("Authorization")
        if header:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() != "basic":
                raise _sign_in_failed(service)
            try:
                name, password = parse_basic(value)
            except AuthenticationFailed:
                raise _sign_in_failed(service) from None
            identity = await service.sign_in(name, password, source)
            if identity is None:
                raise _sign_in_failed(service)
            user = identity.user
            account = request.query.get("account")
            if account and account != user:
                return _token_error(400, "invalid_request", "account does not match the credentials")
    try:
        issued = service.mint_token(user, scopes, audience)
    except ValueError as error:
        return _token_error(400, "invalid_request", str(error))
    return web.json_response(
        issued.to_json(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )


def _sign_in_failed(service: AuthService) -> Unauthorized:
    realm = service.realm if service.mode == "htpasswd" and service.realm else "Dockyard"
    return Unauthorized(
        "invalid username or password", headers={"WWW-Authenticate": f'Basic realm="{realm}"'}
    )


def install(app: web.Application, config: Config) -> AuthService | None:
    """Put the configured auth in front of the API and serve the token endpoint.

    Must run before the application starts: the middleware goes innermost, inside the
    error middleware that turns its exceptions into responses.
    """
    service = build_auth(config)
    if service is None:
        return None
    app[AUTH] = service
    if service.mode != "none":
        app.middlewares.append(auth_middleware)
    if service.token_service is not None:
        prefix = urls_prefix(config)
        app.router.add_route("GET", f"{prefix}{TOKEN_PATH}", token_endpoint)
        app.router.add_route("POST", f"{prefix}{TOKEN_PATH}", token_endpoint)
    return service


def urls_prefix(config: Config) -> str:
    prefix = config.http.prefix.strip("/")
    return "/" + prefix if prefix else ""


def auth_of(request: web.Request) -> AuthService | None:
    """The application's auth (None: an open registry), for the UI and handlers."""
    return request.app.get(AUTH)


def identity_of(request: web.Request) -> Identity | None:
    value = request.get(IDENTITY)
    return value if isinstance(value, Identity) else None
