"""HTTP to one upstream registry: TLS, Basic credentials and the Docker token flow.

A request that the upstream answers with 401 and a ``WWW-Authenticate`` challenge is
sent again with credentials: Basic as they are, or for ``Bearer realm=...,service=...``
a token fetched from the realm (with the Basic credentials, or anonymously) for the
repository's pull scope. Tokens are reused per scope until shortly before they expire.
"""

from __future__ import annotations

import base64
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger("dockyard.proxy")

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
# A token the realm gave no lifetime for lasts 60 s (the token spec's default).
DEFAULT_TOKEN_SECONDS = 60.0
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


# What the upstream answers for content it does not have, or will not admit to having
# with the mirror's credentials (Docker Hub answers 401 for a repository that does not
# exist): the client is told the content is unknown, as it would be by the upstream.
UPSTREAM_UNKNOWN = (401, 403, 404)


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or did not answer usefully."""


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {
        match.group(1).lower(): match.group(2) if match.group(2) is not None else match.group(3)
        for match in _CHALLENGE_PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


class UpstreamClient:
    """One upstream registry, at ``remoteurl``; one connection pool per process."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.basic: str | None = None
        if username:
            pair = f"{username}:{password or ''}".encode()
            self.basic = "Basic " + base64.b64encode(pair).decode("ascii")
        self.ssl: ssl.SSLContext | bool = True
        if insecure:
            self.ssl = False
        elif cafile:
            self.ssl = ssl.create_default_context(cafile=cafile)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._basic_wanted = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
                connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64),
                auto_decompress=False,
                # Blob bodies arrive in pieces up to this size: fewer, larger reads cost
                # less Python per megabyte than the 64 KiB default.
                read_bufsize=1 << 20,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _authorization(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._basic_wanted and self.basic is not None:
            return {"Authorization": self.basic}
        return {}

    async def request(
        self, method: str, repository: str, path: str, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """``/v2/<repository>/<path>``; the caller reads and releases the response."""
        url = f"{self.url}/v2/{repository}/{path}"
        scope = f"repository:{repository}:pull"
        try:
            response = await self._send(
                method, url, {**(headers or {}), **self._authorization(scope)}
            )
            if response.status != 401:
                return response
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.release()
            if challenge is None or not await self._answer(challenge, scope):
                return await self._send(method, url, headers or {})
            return await self._send(method, url, {**(headers or {}), **self._authorization(scope)})
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise UpstreamUnavailable(f"{self.url}: {error or type(error).__name__}") from error

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await self.session.request(method, url, headers=headers, allow_redirects=True)

    async def _answer(self, challenge: Challenge, scope: str) -> bool:
        """Get what the challenge asks for; False when there is nothing to try."""
        if challenge.scheme == "basic":
            if self.basic is None:
                return False
            self._basic_wanted = True
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        query: list[tuple[str, str]] = [("scope", scope)]
        if "service" in challenge.params:
            query.append(("service", challenge.params["service"]))
        credentials = {"Authorization": self.basic} if self.basic is not None else {}
        async with self.session.get(
            challenge.params["realm"], params=query, headers=credentials
        ) as answer:
            if answer.status != 200:
                log.warning(
                    "upstream token service %s refused %s: HTTP %d",
                    challenge.params["realm"],
                    scope,
                    answer.status,
                )
                return False
            body: Any = await answer.json(content_type=None)
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            return False
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else DEFAULT_TOKEN_SECONDS
        # Renew a little early so a token never expires between check and use.
        self._tokens[scope] = (token, time.monotonic() + max(seconds - 10.0, 1.0))
        return True

    async def ping(self) -> bool:
        """Whether the upstream answers ``/v2/`` at all (any HTTP status will do)."""
        try:
            async with self.session.get(f"{self.url}/v2/") as response:
                return response.status < 500
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
