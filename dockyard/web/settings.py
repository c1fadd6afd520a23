"""What the UI needs to know: which registry, how to reach it, what it may do.

Standalone (``dockyard ui``) it is configured like hyper/docker-registry-web, by
``REGISTRY_URL``, ``REGISTRY_NAME``, ``REGISTRY_BASIC_AUTH``, ``REGISTRY_TRUST_ANY_SSL``
and ``REGISTRY_READONLY``; inside ``dockyard serve`` it is derived from the server's own
config so that it talks to that server over loopback.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from dockyard.config import Config

DEFAULT_REGISTRY_URL = "http://localhost:5000/v2"
DEFAULT_LISTEN = ":8080"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password for the registry; never sent to the browser."""

    username: str
    password: str

    def basic(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def __repr__(self) -> str:
        # Settings get logged and shown in tracebacks; the password must not be.
        return f"Credentials(username={self.username!r}, password='***')"


@dataclass(frozen=True, slots=True)
class UISettings:
    # The registry's base URL without ``/v2`` (``http://host:5000``); for a Unix socket
    # the URL's host is ignored and ``unix_socket`` names the socket.
    registry_url: str
    # host[:port] shown in ``docker pull`` commands; None: the host the browser used.
    registry_name: str | None = None
    credentials: Credentials | None = None
    trust_any_ssl: bool = False
    read_only: bool = False
    unix_socket: str | None = None
    page_size: int = 50
    # Shown in the header so a person can tell several registries' UIs apart.
    title: str = "Dockyard"

    @property
    def display_url(self) -> str:
        return f"unix:{self.unix_socket}" if self.unix_socket else self.registry_url


def parse_bool(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(f"{name}={value!r} is not a boolean (use true or false)")


def parse_basic_auth(value: str) -> Credentials:
    """``REGISTRY_BASIC_AUTH`` as docker-registry-web takes it: base64 of ``user:pass``."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise SettingsError("REGISTRY_BASIC_AUTH is not base64 of user:password") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise SettingsError("REGISTRY_BASIC_AUTH is not base64 of user:password")
    return Credentials(username, password)


def base_url(registry_url: str) -> str:
    """``http://host:5000/v2`` or ``http://host:5000/`` → ``http://host:5000``."""
    parts = urlsplit(registry_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"REGISTRY_URL {registry_url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v2")
    return f"{parts.scheme}://{parts.netloc}{path}"


def settings_from_env(
    env: Mapping[str, str] | None = None,
    *,
    registry_url: str | None = None,
    registry_name: str | None = None,
    read_only: bool | None = None,
    trust_any_ssl: bool | None = None,
) -> UISettings:
    """Standalone settings: command-line values win over the environment.

    Read-only is the default, as in docker-registry-web: a UI holding
    ``REGISTRY_BASIC_AUTH`` would otherwise let anyone who reaches it delete with
    those credentials; ``REGISTRY_READONLY=false`` turns deleting on.
    """
    env = os.environ if env is None else env
    url = base_url(registry_url or env.get("REGISTRY_URL") or DEFAULT_REGISTRY_URL)
    name = registry_name or env.get("REGISTRY_NAME") or urlsplit(url).netloc
    auth = env.get("REGISTRY_BASIC_AUTH")
    return UISettings(
        registry_url=url,
        registry_name=name,
        credentials=parse_basic_auth(auth) if auth else None,
        trust_any_ssl=trust_any_ssl
        if trust_any_ssl is not None
        else parse_bool("REGISTRY_TRUST_ANY_SSL", env.get("REGISTRY_TRUST_ANY_SSL"), False),
        read_only=read_only
        if read_only is not None
        else parse_bool("REGISTRY_READONLY", env.get("REGISTRY_READONLY"), True),
    )


def _loopback_host(host: str | None) -> str:
    if host in (None, "", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def settings_for_server(config: Config) -> UISettings:
    """The UI inside ``dockyard serve``: loopback HTTP to the server it runs in.

    TLS on loopback is not verified: the certificate names the public host, and the
    peer is this very process group.
    """
    # Imported here: dockyard.server pulls in aiohttp's runner, not needed standalone.
    from dockyard.server import parse_addr

    ui = config.dockyard.ui
    prefix = "/" + config.http.prefix.strip("/") if config.http.prefix.strip("/") else ""
    scheme = "https" if config.http.tls.certificate else "http"
    unix_socket = None
    if config.http.net == "unix":
        unix_socket = config.http.addr
        url = f"http://localhost{prefix}"
    else:
        host, port = parse_addr(config.http.addr)
        url = f"{scheme}://{_loopback_host(host)}:{port}{prefix}"
    name = ui.name
    if name is None and config.http.host:
        name = urlsplit(config.http.host).netloc or None
    return UISettings(
        registry_url=url,
        registry_name=name,
        trust_any_ssl=True,
        read_only=ui.readonly,
        unix_socket=unix_socket,
        page_size=ui.pagesize,
    )
