"""The UI's pieces without a browser: settings, parsing, the client's auth handling."""

from __future__ import annotations

import asyncio
import base64
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dockyard.web.client import (
    AuthRequired,
    RegistryClient,
    RequestStats,
    next_last,
    parse_challenge,
)
from dockyard.web.model import (
    ago,
    dockerfile_step,
    human_size,
    parse_config,
    parse_manifest,
    parse_time,
)
from dockyard.web.render import highlight_json
from dockyard.web.settings import (
    Credentials,
    SettingsError,
    UISettings,
    settings_from_env,
)
from tests.web.conftest import start_dockyard


def test_settings_come_from_docker_registry_webs_variables() -> None:
    settings = settings_from_env(
        {
            "REGISTRY_URL": "http://172.16.1.31:5000/v2",
            "REGISTRY_TRUST_ANY_SSL": "true",
            "REGISTRY_BASIC_AUTH": "YWRtaW46YWRtaW4=",
            "REGISTRY_NAME": "10.0.0.31:5000",
        }
    )
    assert settings.registry_url == "http://172.16.1.31:5000"
    assert settings.registry_name == "10.0.0.31:5000"
    assert settings.credentials == Credentials("admin", "admin")
    assert settings.trust_any_ssl
    # As docker-registry-web: read-only unless REGISTRY_READONLY=false.
    assert settings.read_only
    assert not settings_from_env({"REGISTRY_READONLY": "false"}).read_only
    # The password never shows in a repr (logs, tracebacks).
    assert "admin'" not in repr(settings.credentials).replace("username='admin'", "")


def test_settings_defaults_and_errors() -> None:
    settings = settings_from_env({})
    assert settings.registry_url == "http://localhost:5000"
    assert settings.registry_name == "localhost:5000"
    with pytest.raises(SettingsError, match="REGISTRY_BASIC_AUTH"):
        settings_from_env({"REGISTRY_BASIC_AUTH": "not base64!"})
    with pytest.raises(SettingsError, match="REGISTRY_READONLY"):
        settings_from_env({"REGISTRY_READONLY": "maybe"})
    with pytest.raises(SettingsError, match="REGISTRY_URL"):
        settings_from_env({"REGISTRY_URL": "ftp://x"})


@pytest.mark.parametrize(
    ("created_by", "expected"),
    [
        ('/bin/sh -c #(nop)  CMD ["nginx"]', ("CMD", '["nginx"]')),
        ("/bin/sh -c #(nop) ADD file:abc in / ", ("ADD", "file:abc in /")),
        ("/bin/sh -c apt-get update", ("RUN", "apt-get update")),
        ("|2 A=1 B=2 /bin/sh -c make", ("RUN", "make")),
        ("RUN /bin/sh -c go build ./... # buildkit", ("RUN", "go build ./...")),
        ("COPY . /src # buildkit", ("COPY", ". /src")),
        ("", ("", "")),
    ],
)
def test_dockerfile_steps(created_by: str, expected: tuple[str, str]) -> None:
    assert dockerfile_step(created_by) == expected


def test_times_sizes_and_json() -> None:
    assert parse_time("2024-01-01T00:00:00.123456789Z") == datetime(
        2024, 1, 1, 0, 0, 0, 123456, UTC
    )
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time(12) is None
    assert human_size(0) == "0 B"
    assert human_size(1536) == "1.5 KiB"
    now = datetime(2024, 6, 1, tzinfo=UTC)
    assert ago(datetime(2024, 5, 31, tzinfo=UTC), now) == "1 day ago"
    assert ago(datetime(2023, 1, 1, tzinfo=UTC), now) == "2023-01-01"
    highlighted = str(highlight_json('{"a<b>": "<script>", "n": 1, "t": true}'))
    assert "<script>" not in highlighted
    assert "&lt;script&gt;" in highlighted
    assert '<span class="jn">1</span>' in highlighted


def test_history_steps_take_their_layer_sizes() -> None:
    manifest = parse_manifest(
        "sha256:" + "1" * 64,
        "application/vnd.oci.image.manifest.v1+json",
        b'{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
        b'"digest":"sha256:'
        + b"2" * 64
        + b'","size":10},"layers":[{"mediaType":"x","digest":"sha256:'
        + b"3" * 64
        + b'","size":100},{"mediaType":"x","digest":"sha256:'
        + b"4" * 64
        + b'","size":200}]}',
    )
    assert manifest.is_image and manifest.image_size == len(manifest.raw) + 310
    config = parse_config(
        b'{"history":[{"created_by":"a"},{"created_by":"b","empty_layer":true},{"created_by":"c"}]}',
        manifest.layers,
    )
    assert [step.size for step in config.history] == [100, 0, 200]


def test_challenges_and_links() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry",
        "scope": "repository:a/b:pull",
    }
    assert next_last('</v2/_catalog?last=b%2Fc&n=2>; rel="next"', ["a", "b/c"]) == "b/c"
    assert next_last(None, ["a"]) is None


async def _token_registry() -> TestServer:
    """A registry that wants a bearer token, from a token service that wants Basic."""
    good = "Basic " + base64.b64encode(b"alice:wonder").decode()

    async def token(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != good:
            return web.json_response({}, status=401)
        return web.json_response({"token": f"tok-{request.query.get('scope')}", "expires_in": 300})

    async def api(request: web.Request) -> web.Response:
        scope = "registry:catalog:*"
        if request.headers.get("Authorization") != f"Bearer tok-{scope}":
            realm = f"http://127.0.0.1:{request.url.port}/token"
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={
                    "WWW-Authenticate": f'Bearer realm="{realm}",service="test",scope="{scope}"'
                },
            )
        return web.json_response({"repositories": ["a", "b"]})

    app = web.Application()
    app.router.add_get("/token", token)
    app.router.add_get("/v2/_catalog", api)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def _bearer_flow() -> None:
    server = await _token_registry()
    client = RegistryClient(UISettings(registry_url=str(server.make_url("")).rstrip("/")))
    await client.start()
    try:
        stats = RequestStats()
        session = client.session(Credentials("alice", "wonder"), stats)
        assert (await session.catalog(10)).items == ["a", "b"]
        assert stats.requests == 3  # challenge, token, retry
        again = RequestStats()
        assert (await client.session(Credentials("alice", "wonder"), again).catalog(10)).items == [
            "a",
            "b",
        ]
        assert again.requests == 1  # the cached token goes first
        with pytest.raises(AuthRequired):
            await client.session(Credentials("alice", "wrong")).catalog(10)
    finally:
        await client.close()
        await server.close()


def test_bearer_tokens_are_fetched_once_and_reused() -> None:
    # On a thread of its own: Playwright's sync API (the session's browser) keeps an
    # event loop running on the main thread, where no second loop may start.
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_bearer_flow())
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if failures:
        raise failures[0]


def test_the_ui_can_be_switched_off(tmp_path: Path) -> None:
    server = start_dockyard(
        tmp_path / "off", {"dockyard": {"workers": 1, "ui": {"enabled": False}}}
    )
    try:
        assert httpx.get(server.url + "/ui/").status_code == 404
        assert httpx.get(server.url + "/").status_code == 404
        assert httpx.get(server.url + "/v2/").status_code == 200
    finally:
        server.stop()
