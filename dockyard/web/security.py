"""CSRF protection and the security headers every UI response carries.

CSRF uses a per-session token in a ``SameSite=Strict``, ``HttpOnly`` cookie that every
form repeats in a hidden field (double submit); a POST whose field does not match the
cookie, or whose ``Origin`` names another site, changes nothing. No server-side session
store is needed, so it works the same with several worker processes.
"""

from __future__ import annotations

import hmac
import re
import secrets
from http.cookies import Morsel
from urllib.parse import urlsplit

from aiohttp import web

CSRF_COOKIE = "dockyard_ui_csrf"
CSRF_FIELD = "csrf"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
# Where this request's token is kept for templates, and whether the cookie is new.
_TOKEN_KEY = "dockyard_ui.csrf"
_NEW_KEY = "dockyard_ui.csrf_new"

# Every asset is served by the UI itself: no CDN, no inline script or style, so an
# injected <script> or style attribute would not run even if escaping ever failed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class CsrfFailure(Exception):
    pass


def csrf_token(request: web.Request) -> str:
    """This session's token, creating it (and the cookie) on first use."""
    token = request.get(_TOKEN_KEY)
    if isinstance(token, str):
        return token
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if _TOKEN.match(cookie):
        token = cookie
    else:
        token = secrets.token_urlsafe(32)
        request[_NEW_KEY] = True
    request[_TOKEN_KEY] = token
    return token


async def check_post(request: web.Request) -> None:
    """Refuse a POST that another site could have made on this user's behalf."""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        host = urlsplit(origin).netloc
        allowed = {request.host, request.headers.get("X-Forwarded-Host", "")}
        if host not in allowed:
            raise CsrfFailure(f"the form was sent from {origin}, not from this site")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    if not _TOKEN.match(cookie) or not isinstance(sent, str):
        raise CsrfFailure("the form's security token is missing; reload the page and retry")
    if not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfFailure("the form's security token does not match; reload the page and retry")


def add_headers(request: web.Request, response: web.StreamResponse, cookie_path: str) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    if request.get(_NEW_KEY):
        # Written as a header: aiohttp turns response.set_cookie() into headers before
        # the prepare signal runs, so a cookie set from here would be dropped.
        morsel: Morsel[str] = Morsel()
        morsel.set(CSRF_COOKIE, request[_TOKEN_KEY], request[_TOKEN_KEY])
        morsel["path"] = cookie_path or "/"
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"
        morsel["secure"] = request.secure
        headers.add("Set-Cookie", morsel.OutputString())
