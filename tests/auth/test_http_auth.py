"""Auth over HTTP beyond the matrix: the token endpoint itself, failed-login slowdown,
filtered catalog paging, Distribution's plain htpasswd and silly semantics, a prefix."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.auth.support import (
    ADMIN,
    PASSWORDS,
    RULES,
    SERVICE,
    Principal,
    basic,
    error_code,
    htpasswd_config,
    parse_challenge,
    token_config,
)
from tests.support.images import make_image, push_artifact
from tests.support.servers import ServerProcess


def _start(workdir: Path, config: dict[str, Any]) -> ServerProcess:
    server = ServerProcess("dockyard", workdir, config=config)
    server.start()
    return server


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = _start(tmp_path, token_config(tmp_path))
    yield server
    server.stop()


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_token_endpoint_get(token_server: ServerProcess) -> None:
    url = f"{token_server.url}/auth/token"
    params = {"service": SERVICE, "scope": "repository:proj/app:pull,push,delete", "account": "writer"}
    response = httpx.get(url, params=params, auth=("writer", PASSWORDS["writer"]))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    claims = _claims(body["token"])
    assert claims["sub"] == "writer"
    assert claims["aud"] == SERVICE
    assert claims["exp"] - claims["iat"] == body["expires_in"] == 300
    assert claims["jti"]
    # What was asked for, cut down to what the rules give: no delete for a writer.
    assert claims["access"] == [{"type": "repository", "name": "proj/app", "actions": ["pull", "push"]}]
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256" and header["kid"].count(":") == 11 and len(header["x5c"]) == 1


def test_token_endpoint_anonymous_and_errors(token_server: ServerProcess) -> None:
    url = f"{token_server.url}/auth/token"
    anonymous = httpx.get(url, params={"service": SERVICE, "scope": ["repository:public/a:pull,push", "repository:proj/a:pull"]})
    assert anonymous.status_code == 200
    claims = _claims(anonymous.json()["token"])
    assert claims["sub"] == ""
    assert claims["access"] == [{"type": "repository", "name": "public/a", "actions": ["pull"]}]

    wrong = httpx.get(url, params={"service": SERVICE}, auth=("writer", "wrong"))
    assert wrong.status_code == 401
    assert error_code(wrong) == "UNAUTHORIZED"
    assert parse_challenge(wrong.headers["WWW-Authenticate"])[0] == "basic"

    mismatch = httpx.get(url, params={"service": SERVICE, "account": "admin"}, auth=("writer", PASSWORDS["writer"]))
    assert mismatch.status_code == 400
    other = httpx.get(url, params={"service": "not-served-here"}, auth=("writer", PASSWORDS["writer"]))
    assert other.status_code == 400
    bearer = httpx.get(url, params={"service": SERVICE}, headers={"Authorization": "Bearer abc"})
    assert bearer.status_code == 401


def test_token_endpoint_oauth_post(token_server: ServerProcess) -> None:
    url = f"{token_server.url}/auth/token"
    form = {
        "grant_type": "password",
        "username": "reader",
        "password": PASSWORDS["reader"],
        "service": SERVICE,
        "scope": "repository:proj/app:pull repository:proj/app:push",
        "client_id": "test",
    }
    response = httpx.post(url, data=form)
    assert response.status_code == 200, response.text
    assert _claims(response.json()["access_token"])["access"] == [
        {"type": "repository", "name": "proj/app", "actions": ["pull"]}
    ]
    assert httpx.post(url, data={**form, "password": "wrong"}).status_code == 401
    refresh = httpx.post(url, data={"grant_type": "refresh_token", "refresh_token": "x", "service": SERVICE})
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "unsupported_grant_type"


def test_challenge_realm_is_this_servers_token_endpoint(token_server: ServerProcess) -> None:
    response = httpx.get(f"{token_server.url}/v2/proj/app/tags/list")
    scheme, params = parse_challenge(response.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params == {
        "realm": f"{token_server.url}/auth/token",
        "service": SERVICE,
        "scope": "repository:proj/app:pull",
    }


def test_filtered_catalog_pages_over_what_the_caller_sees(tmp_path: Path) -> None:
    server = _start(tmp_path, htpasswd_config(tmp_path))
    try:
        admin = ADMIN.client(server.url)
        image = make_image("paging")
        for repo in ("proj/a", "proj/b", "proj/c", "secret/a", "secret/b", "zzz/z"):
            push_artifact(admin, "", repo, "v1", image)
        reader = Principal("reader", ("reader", PASSWORDS["reader"])).client(server.url)
        seen: list[str] = []
        url = "/v2/_catalog?n=2"
        while url:
            response = reader.get(url)
            assert response.status_code == 200
            seen += response.json()["repositories"]
            link = response.headers.get("Link")
            # The cursor is always a name the caller may see.
            assert link is None or "secret" not in link and "zzz" not in link
            url = link.split(";")[0].strip("<>") if link else ""
        assert seen == ["proj/a", "proj/b", "proj/c"]
        assert admin.get("/v2/_catalog").json()["repositories"] == [
            "proj/a", "proj/b", "proj/c", "secret/a", "secret/b", "zzz/z",
        ]
        assert reader.get("/v2/_catalog?n=99999").status_code == 400
    finally:
        server.stop()


def test_failed_sign_ins_are_slowed_logged_and_secret(tmp_path: Path) -> None:
    config = htpasswd_config(tmp_path, rules={**RULES, "backoff": {"free": 2, "initial": "300ms", "maximum": "600ms"}})
    config["dockyard"]["workers"] = 1
    server = _start(tmp_path, config)
    try:
        url = f"{server.url}/v2/"
        good = {"Authorization": basic("reader", PASSWORDS["reader"])}
        assert httpx.get(url, headers=good).status_code == 200
        durations = []
        for attempt in range(5):
            started = time.monotonic()
            bad = {"Authorization": basic("reader", f"guess-{attempt}")}
            assert httpx.get(url, headers=bad, timeout=30).status_code == 401
            durations.append(time.monotonic() - started)
        assert max(durations[:3]) < 0.25, durations
        assert durations[3] >= 0.25 and durations[4] >= 0.5, durations
        # Credentials that already passed are never held up by someone's guessing.
        started = time.monotonic()
        assert httpx.get(url, headers=good).status_code == 200
        assert time.monotonic() - started < 0.25
        time.sleep(0.3)
        log = server.log()
        assert "failed sign-in for user 'reader' from 127.0.0.1" in log
        assert "guess-" not in log
        assert PASSWORDS["reader"] not in log
    finally:
        server.stop()


def test_plain_htpasswd_is_distributions_semantics(tmp_path: Path) -> None:
    # No rules: any valid user may do everything, nobody else anything.
    server = _start(tmp_path, htpasswd_config(tmp_path, rules=None))
    try:
        reader = Principal("reader", ("reader", PASSWORDS["reader"])).client(server.url)
        image = make_image("plain")
        push_artifact(reader, "", "any/repo", "v1", image)
        assert reader.delete(f"/v2/any/repo/manifests/{image.digest}").status_code == 202
        assert reader.post("/v2/_dockyard/gc", params={"dryRun": "true"}).status_code == 200
        anonymous = httpx.get(f"{server.url}/v2/_catalog")
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="dockyard-test-realm"'
        assert error_code(anonymous) == "UNAUTHORIZED"
        head = httpx.head(f"{server.url}/v2/any/repo/manifests/v1")
        assert head.status_code == 401 and head.content == b""
        assert httpx.get(f"{server.url}/debug/health").status_code == 200
    finally:
        server.stop()


def test_silly_auth(tmp_path: Path) -> None:
    server = _start(tmp_path, {"auth": {"silly": {"realm": "silly-realm", "service": "silly-service"}}})
    try:
        response = httpx.get(f"{server.url}/v2/x/y/tags/list")
        assert response.status_code == 401
        assert parse_challenge(response.headers["WWW-Authenticate"]) == (
            "bearer",
            {"realm": "silly-realm", "service": "silly-service", "scope": "repository:x/y:pull"},
        )
        anything = httpx.get(f"{server.url}/v2/x/y/tags/list", headers={"Authorization": "Bearer whatever"})
        assert anything.status_code == 404  # authorized; the repository does not exist
    finally:
        server.stop()


class PrefixedServer(ServerProcess):
    """A server under ``http.prefix: /registry``: its URL, and readiness probe, include it."""

    @property
    def url(self) -> str:
        return super().url + "/registry"


def test_token_service_under_a_prefix(tmp_path: Path) -> None:
    config = token_config(tmp_path)
    config["http"] = {"prefix": "/registry/"}
    server = PrefixedServer("dockyard", tmp_path, config=config)
    server.start()
    try:
        response = httpx.get(f"{server.url}/v2/proj/app/tags/list")
        realm = parse_challenge(response.headers["WWW-Authenticate"])[1]["realm"]
        assert realm == f"{server.url}/auth/token"
        writer = Principal("writer", ("writer", PASSWORDS["writer"])).client(server.url)
        push_artifact(writer, "", "proj/app", "v1", make_image("prefix"))
        assert writer.get("/v2/proj/app/tags/list").json()["tags"] == ["v1"]
    finally:
        server.stop()


def test_autoredirect_realm_follows_the_host(tmp_path: Path) -> None:
    # Distribution's autoredirect: the realm is https://<Host header><autoredirectpath>.
    config = token_config(tmp_path)
    config["auth"]["token"].update({"autoredirect": True, "realm": "https://ignored.invalid/token"})
    server = _start(tmp_path, config)
    try:
        response = httpx.get(f"{server.url}/v2/", headers={"Host": "registry.example:5000"})
        realm = parse_challenge(response.headers["WWW-Authenticate"])[1]["realm"]
        assert realm == "https://registry.example:5000/auth/token"
        proxied = httpx.get(f"{server.url}/v2/", headers={"X-Forwarded-Proto": "http"})
        assert parse_challenge(proxied.headers["WWW-Authenticate"])[1]["realm"] == f"{server.url}/auth/token"
    finally:
        server.stop()
