"""The registry as the UI sees it: its HTTP API and nothing else.

One :class:`RegistryClient` per UI process holds the connection pool and the bearer
tokens it has fetched. Each page view gets a :class:`RegistrySession` bound to the
credentials that view uses (the configured ones, or those the browser sent) and to a
:class:`RequestStats` that counts every HTTP request made for that view, token fetches
included, so a page can say what it cost and tests can bound it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from dockyard.web.settings import Credentials, UISettings

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, f"{DOCKER_SCHEMA1};q=0.5"]
)

# Manifests are at most 4 MiB (Distribution and Dockyard refuse larger); an image
# config far larger than this is no config a person reads in a browser.
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
MAX_JSON_BYTES = 64 << 20

_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


class RegistryFailure(Exception):
    """The registry could not be used for this request; the message is for a person."""

    status: int = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(RegistryFailure):
    status = 502


class AuthRequired(RegistryFailure):
    """401 from the registry: the UI has no credentials, or they were refused."""

    status = 401

    def __init__(self, message: str, had_credentials: bool) -> None:
        super().__init__(message)
        self.had_credentials = had_credentials


class RegistryHTTPError(RegistryFailure):
    """Any other error answer, with the spec's error code when the body has one."""

    def __init__(self, status: int, code: str | None, message: str, url: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.url = url

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def unsupported(self) -> bool:
        return self.status == 405 or self.code == "UNSUPPORTED"

    @property
    def denied(self) -> bool:
        return self.status == 403 or self.code == "DENIED"


@dataclass(slots=True)
class RequestStats:
    """Registry requests made for one page view, and the time spent waiting on them."""

    requests: int = 0
    seconds: float = 0.0
    methods: dict[str, int] = field(default_factory=dict)

    def add(self, method: str, seconds: float) -> None:
        self.requests += 1
        self.seconds += seconds
        self.methods[method] = self.methods.get(method, 0) + 1


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def digest(self) -> str | None:
        return self.headers.get("Docker-Content-Digest")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a paged list, and the ``last`` value that continues it."""

    items: list[str]
    next_last: str | None


def _error_from(response: Response) -> RegistryHTTPError:
    code: str | None = None
    message = f"the registry answered {response.status}"
    try:
        errors = json.loads(response.body).get("errors") or []
        if errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code") or "") or None
            text = str(errors[0].get("message") or "")
            message = f"{code}: {text}" if code and text else (text or code or message)
    except (ValueError, AttributeError):
        text = response.body[:200].decode("utf-8", "replace").strip()
        if text:
            message = f"the registry answered {response.status}: {text}"
    return RegistryHTTPError(response.status, code, message, response.url)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` → ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def next_last(link_header: str | None, items: list[str]) -> str | None:
    """The ``last`` to ask for next, from a ``Link: <...?last=x>; rel="next"`` header."""
    if not link_header:
        return None
    match = _LINK_NEXT.search(link_header)
    if match is None:
        return None
    from urllib.parse import parse_qs

    query = parse_qs(urlsplit(match.group(1)).query)
    values = query.get("last")
    if values:
        return values[0]
    return items[-1] if items else None


def _scope_for(method: str, path: str) -> str | None:
    """The token scope a request will need, guessed up front to save a 401 round trip.

    A wrong guess costs nothing but that round trip: the registry's challenge names the
    scope it wants and the request is retried with a token for it.
    """
    tail = path.split("/v2/", 1)[-1]
    if tail.startswith("_catalog"):
        return "registry:catalog:*"
    if tail.startswith("_"):
        return None
    for marker in ("/manifests/", "/blobs/", "/tags/list", "/referrers/"):
        if marker in tail:
            name = tail.split(marker, 1)[0]
            action = "delete" if method == "DELETE" else "pull"
            return f"repository:{name}:{action}"
    return None


class RegistryClient:
    """The connection pool and token cache for one registry, shared by page views."""

    def __init__(self, settings: UISettings) -> None:
        self.settings = settings
        self.base = settings.registry_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        # (credentials fingerprint, scope) -> (token, expiry on the monotonic clock)
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._token_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def start(self) -> None:
        connector: aiohttp.BaseConnector
        ssl_option: ssl.SSLContext | bool = True
        if self.settings.trust_any_ssl:
            ssl_option = False
        if self.settings.unix_socket:
            connector = aiohttp.UnixConnector(path=self.settings.unix_socket, limit=64)
        else:
            connector = aiohttp.TCPConnector(limit=64, ssl=ssl_option)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            # Cookies from the registry are no business of the UI's.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "dockyard-ui"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient.start() was not awaited")
        return self._session

    def session(
        self, credentials: Credentials | None, stats: RequestStats | None = None
    ) -> RegistrySession:
        return RegistrySession(self, credentials, stats or RequestStats())

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    # --- tokens ----------------------------------------------------------------------

    def cached_token(self, who: str, scope: str) -> str | None:
        entry = self._tokens.get((who, scope))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    async def fetch_token(
        self,
        params: Mapping[str, str],
        credentials: Credentials | None,
        who: str,
        stats: RequestStats,
    ) -> str:
        """A bearer token from the realm the registry named (Docker token spec)."""
        scope = params.get("scope", "")
        key = (who, scope)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self.cached_token(who, scope)
            if cached is not None:
                return cached
            realm = params.get("realm")
            if not realm:
                raise AuthRequired("the registry asked for a token but named no realm", False)
            query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
            url = realm + ("&" if "?" in realm else "?") + urlencode(query)
            headers = {"Authorization": credentials.basic()} if credentials else {}
            started = time.monotonic()
            try:
                async with self.http.get(url, headers=headers) as response:
                    body = await _read_limited(response, 1 << 20, url)
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as error:
                raise Unreachable(f"cannot reach the token service {realm}: {error}") from None
            finally:
                stats.add("TOKEN", time.monotonic() - started)
            if status == 401 or status == 403:
                raise AuthRequired(
                    "the token service refused the credentials", credentials is not None
                )
            if status != 200:
                raise Unreachable(f"the token service {realm} answered {status}")
            try:
                document = json.loads(body)
                token = str(document.get("token") or document.get("access_token"))
                lifetime = float(document.get("expires_in") or 60)
            except (ValueError, AttributeError):
                raise Unreachable(f"the token service {realm} sent no token") from None
            # Renew a little early so a token never expires between check and use.
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 10, 5))
            return token


class RegistrySession:
    """The registry API for one page view, with that view's credentials."""

    def __init__(
        self, client: RegistryClient, credentials: Credentials | None, stats: RequestStats
    ) -> None:
        self.client = client
        self.credentials = credentials
        self.stats = stats
        self.who = (
            hashlib.sha256(f"{credentials.username}\0{credentials.password}".encode()).hexdigest()
            if credentials
            else "-"
        )

    # --- plumbing ----------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        limit: int,
    ) -> Response:
        started = time.monotonic()
        try:
            async with self.client.http.request(method, url, headers=headers) as response:
                body = b""
                if method != "HEAD":
                    body = await _read_limited(response, limit, url)
                return Response(response.status, response.headers, body, str(response.url))
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise Unreachable(
                f"cannot reach the registry at {self.client.settings.display_url}: {error}"
            ) from None
        finally:
            self.stats.add(method, time.monotonic() - started)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        accept: str | None = None,
        limit: int = MAX_JSON_BYTES,
        ok: tuple[int, ...] = (200,),
    ) -> Response:
        """Send one API request, answering an auth challenge once; errors raise."""
        url = self.client.url(path)
        if params:
            url += "?" + urlencode(params)
        headers: dict[str, str] = {}
        if accept:
            headers["Accept"] = accept
        scope = _scope_for(method, path)
        token = self.client.cached_token(self.who, scope) if scope else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif self.credentials:
            headers["Authorization"] = self.credentials.basic()
        response = await self._send(method, url, headers, limit)
        if response.status == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            scheme, challenge_params = parse_challenge(challenge)
            if scheme == "bearer":
                token = await self.client.fetch_token(
                    challenge_params, self.credentials, self.who, self.stats
                )
                headers["Authorization"] = f"Bearer {token}"
                response = await self._send(method, url, headers, limit)
            if response.status == 401:
                raise AuthRequired(
                    "the registry refused these credentials"
                    if self.credentials
                    else "the registry needs a user name and password",
                    self.credentials is not None,
                )
        if response.status not in ok:
            raise _error_from(response)
        return response

    # --- the API -----------------------------------------------------------------------

    async def check(self) -> None:
        """``GET /v2/``: reachable, speaks v2, and these credentials are accepted."""
        await self.request("GET", "/v2/")

    async def catalog(self, n: int, last: str | None = None) -> Page:
        params = {"n": str(n)}
        if last:
            params["last"] = last
        response = await self.request("GET", "/v2/_catalog", params=params)
        items = [str(name) for name in (response.json().get("repositories") or [])]
        return Page(items, next_last(response.headers.get("Link"), items))

    async def tags(self, name: str) -> list[str]:
        """Every tag of a repository, following ``Link`` pages where the registry pages."""
        found: list[str] = []
        last: str | None = None
        while True:
            params = {"last": last} if last else None
            response = await self.request("GET", f"/v2/{_path(name)}/tags/list", params=params)
            page = [str(tag) for tag in (response.json().get("tags") or [])]
            found.extend(page)
            following = next_last(response.headers.get("Link"), page)
            if not following or not page or following == last:
                return found
            last = following

    async def head_manifest(self, name: str, reference: str) -> Response:
        return await self.request(
            "HEAD", f"/v2/{_path(name)}/manifests/{_ref(reference)}", accept=MANIFEST_ACCEPT
        )

    async def get_manifest(self, name: str, reference: str) -> Response:
        return await self.request(
            "GET",
            f"/v2/{_path(name)}/manifests/{_ref(reference)}",
            accept=MANIFEST_ACCEPT,
            limit=MAX_MANIFEST_BYTES,
        )

    async def get_blob(self, name: str, digest: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
        response = await self.request("GET", f"/v2/{_path(name)}/blobs/{_ref(digest)}", limit=limit)
        return response.body

    async def referrers(self, name: str, digest: str) -> Response:
        return await self.request(
            "GET", f"/v2/{_path(name)}/referrers/{_ref(digest)}", accept=OCI_INDEX
        )

    async def delete_manifest(self, name: str, reference: str) -> None:
        await self.request(
            "DELETE", f"/v2/{_path(name)}/manifests/{_ref(reference)}", ok=(200, 202, 204)
        )

    # --- Dockyard's extensions ---------------------------------------------------------

    async def dockyard_gc_status(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v2/_dockyard/gc"))

    async def dockyard_usage(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v2/_dockyard/usage"))

    async def dockyard_repository(self, name: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/v2/_dockyard/repositories/{_path(name)}"))

    async def dockyard_collect(self, dry_run: bool, delete_untagged: bool) -> dict[str, Any]:
        params = {"dryRun": str(dry_run).lower(), "deleteUntagged": str(delete_untagged).lower()}
        response = await self.request("POST", "/v2/_dockyard/gc", params=params)
        return dict(response.json())

    async def dockyard_delete_repository(self, name: str) -> None:
        await self.request(
            "DELETE", f"/v2/_dockyard/repositories/{_path(name)}", ok=(200, 202, 204)
        )

    async def _json(self, method: str, path: str) -> Any:
        response = await self.request(method, path)
        try:
            return response.json()
        except ValueError:
            raise RegistryHTTPError(
                502, None, f"{path} did not answer JSON", response.url
            ) from None


async def _read_limited(response: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """The whole body, refusing one over ``limit`` before it is all in memory."""
    if response.content_length is not None and response.content_length > limit:
        raise RegistryHTTPError(502, None, f"the answer is larger than {limit} bytes", url)
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise RegistryHTTPError(502, None, f"the answer is larger than {limit} bytes", url)
    return bytes(body)


def _path(name: str) -> str:
    return quote(name, safe="/")


def _ref(reference: str) -> str:
    return quote(reference, safe=":")


def absolute(base: str, location: str) -> str:
    return urljoin(base, location)
