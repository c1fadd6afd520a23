"""Shared pieces of the auth tests: users, configurations, a client that authenticates
the way registry clients do, and a generated CA."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx

# Low bcrypt cost keeps the many password checks of the matrix fast; the cost is a
# property of the file, not of the code under test.
TEST_COST = 4

PASSWORDS = {
    "reader": "reader-pw",
    "writer": "writer-pw",
    "deleter": "deleter-pw",
    "admin": "admin-pw",
}

RULES: dict[str, Any] = {
    "admins": ["admin"],
    "access": [
        {"repositories": ["proj/**"], "users": ["reader"], "actions": ["pull"]},
        {"repositories": ["proj/**"], "users": ["writer"], "actions": ["push"]},
        {"repositories": ["proj/**"], "users": ["deleter"], "actions": ["delete"]},
        {"repositories": ["public/**"], "anonymous": True, "actions": ["pull"]},
    ],
    # The matrix sends many wrong passwords on purpose; the throttle has its own test.
    "backoff": {"free": 100000},
}

SERVICE = "dockyard-test"
ISSUER = "dockyard-test-issuer"


def write_htpasswd(path: Path, users: Mapping[str, str] = PASSWORDS) -> Path:
    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(TEST_COST)).decode()}"
        for user, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def htpasswd_config(workdir: Path, rules: Mapping[str, Any] | None = RULES) -> dict[str, Any]:
    """Registry auth with htpasswd (Basic), plus Dockyard's access rules."""
    users = write_htpasswd(workdir / "htpasswd")
    config: dict[str, Any] = {
        "auth": {"htpasswd": {"realm": "dockyard-test-realm", "path": str(users)}},
    }
    if rules is not None:
        config["dockyard"] = {"auth": dict(rules)}
    return config


def token_config(workdir: Path, rules: Mapping[str, Any] = RULES) -> dict[str, Any]:
    """Registry auth with Bearer tokens from Dockyard's own token service."""
    users = write_htpasswd(workdir / "htpasswd")
    return {
        "auth": {"token": {"service": SERVICE, "issuer": ISSUER}},
        "dockyard": {
            "auth": {
                **rules,
                "users": str(users),
                "tokenservice": {
                    "enabled": True,
                    "key": str(workdir / "token.key"),
                    "certificate": str(workdir / "token.crt"),
                },
            }
        },
    }


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params = {key: value for key, value in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class RegistryAuth(httpx.Auth):
    """Authenticate as containers/image and Docker do: send the request, and on a 401
    answer its challenge (Basic credentials, or a token fetched from the realm for the
    challenge's scope) and send it once more."""

    requires_request_body = True
    requires_response_body = True

    def __init__(self, credentials: tuple[str, str] | None) -> None:
        self.credentials = credentials
        self.tokens_fetched = 0
        # After one Basic challenge (clients ping /v2/ first), credentials go with every
        # request, as Docker and containers/image send them.
        self.basic_known = False

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.basic_known and self.credentials is not None:
            request.headers["Authorization"] = basic(*self.credentials)
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            self.basic_known = True
            if self.credentials is None or "Authorization" in request.headers:
                return
            request.headers["Authorization"] = basic(*self.credentials)
            yield request
            return
        if scheme != "bearer":
            return
        query = {"service": params.get("service", "")}
        if params.get("scope"):
            query["scope"] = params["scope"]
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = basic(*self.credentials)
            query["account"] = self.credentials[0]
        token_response = yield httpx.Request("GET", params["realm"], params=query, headers=headers)
        self.tokens_fetched += 1
        if token_response.status_code != 200:
            return
        request.headers["Authorization"] = f"Bearer {token_response.json()['token']}"
        yield request


@dataclass(frozen=True)
class Principal:
    name: str
    credentials: tuple[str, str] | None

    def client(self, base_url: str, verify: Any = True) -> httpx.Client:
        """A client that has pinged ``/v2/`` already, as registry clients do first."""
        client = httpx.Client(
            base_url=base_url,
            auth=RegistryAuth(self.credentials),
            timeout=60.0,
            follow_redirects=False,
            verify=verify,
        )
        client.get("/v2/")
        return client


PRINCIPALS = [
    Principal("anonymous", None),
    Principal("wrong-password", ("writer", "not-the-password")),
    Principal("reader", ("reader", PASSWORDS["reader"])),
    Principal("writer", ("writer", PASSWORDS["writer"])),
    Principal("deleter", ("deleter", PASSWORDS["deleter"])),
    Principal("admin", ("admin", PASSWORDS["admin"])),
]
ADMIN = PRINCIPALS[-1]


def error_code(response: httpx.Response) -> str | None:
    try:
        return str(json.loads(response.content)["errors"][0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
