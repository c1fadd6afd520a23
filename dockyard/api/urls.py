"""The URLs the registry hands back in ``Location`` and ``Link`` headers."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from aiohttp import web


class UrlBuilder:
    """Absolute URLs from ``http.host`` or the request, or relative ones when configured."""

    def __init__(self, prefix: str = "", host: str | None = None, relative: bool = False) -> None:
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.host = host.rstrip("/") if host else None
        self.relative = relative

    def _base(self, request: web.Request) -> str:
        if self.relative:
            return ""
        if self.host:
            return self.host
        # Behind a proxy the client knows the registry by the forwarded name.
        proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
        return f"{proto}://{host}"

    def v2(self, request: web.Request, path: str, query: dict[str, str] | None = None) -> str:
        url = f"{self._base(request)}{self.prefix}/v2/{quote(path, safe='/:@')}"
        return f"{url}?{urlencode(query)}" if query else url

    def v2_path(self, path: str, query: dict[str, str] | None = None) -> str:
        """Path and query only, as ``Link`` headers carry them."""
        url = f"{self.prefix}/v2/{quote(path, safe='/:@')}"
        return f"{url}?{urlencode(query)}" if query else url
