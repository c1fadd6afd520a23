"""Fixtures for the web UI tests: one headless Chromium per session, registries per module.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright's Python package; no
browser is ever downloaded. Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.support.servers import ServerProcess
from tests.web.support import PASSWORD, USER, UIProcess, basic_auth_value, seed, write_htpasswd

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"

# Dockyard as the tests configure it: deletes on, one worker (so the collector's
# "running" state is the one the UI asks), and a collector that may take what was
# pushed a moment ago.
DOCKYARD_CONFIG: dict[str, Any] = {
    "dockyard": {"workers": 1, "gc": {"delay": "0s", "settle": "1s"}},
}


# Package-scoped: Playwright's synchronous API keeps an event loop marked running in
# this thread while it is open, and tests after these ones call asyncio.run.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium as root")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    settings: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}, **options}
    context = browser.new_context(**settings)
    context.set_default_timeout(20_000)
    return context


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = new_context(browser)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def browser_no_js(browser: Browser) -> Iterator[Page]:
    """Reading must work with JavaScript off."""
    context = new_context(browser, java_script_enabled=False)
    yield context.new_page()
    context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    context = new_context(
        browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    yield context.new_page()
    context.close()


def screenshot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@dataclass
class Target:
    """A registry with the UI in front of it, as a browser reaches it."""

    kind: str  # "dockyard" (UI inside dockyard serve), "distribution", "distribution-auth"
    ui_url: str
    registry: ServerProcess
    ui: UIProcess | None = None
    auth: tuple[str, str] | None = None

    @property
    def pull_host(self) -> str:
        return self.registry.host

    @property
    def is_dockyard(self) -> bool:
        return self.kind == "dockyard"


def start_dockyard(workdir: Path, config: dict[str, Any] | None = None) -> ServerProcess:
    merged = {**DOCKYARD_CONFIG, **(config or {})}
    server = ServerProcess("dockyard", workdir, config=merged)
    server.start()
    return server


def start_distribution(
    workdir: Path, with_auth: bool
) -> tuple[ServerProcess, tuple[str, str] | None]:
    config: dict[str, Any] = {}
    auth = None
    if with_auth:
        htpasswd = write_htpasswd(workdir.parent / f"{workdir.name}.htpasswd")
        config = {"auth": {"htpasswd": {"realm": "test", "path": str(htpasswd)}}}
        auth = (USER, PASSWORD)
    server = ServerProcess("distribution", workdir, config=config)
    server.start()
    return server, auth


@pytest.fixture(scope="module", params=["dockyard", "distribution", "distribution-auth"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The browse tests run against each: the same pages, whatever registry is behind."""
    kind = str(request.param)
    workdir = tmp_path_factory.mktemp(kind)
    if kind == "dockyard":
        server = start_dockyard(workdir / "registry")
        try:
            seed(server.url)
            yield Target(kind, server.url, server)
        finally:
            server.stop()
        return
    server, auth = start_distribution(workdir / "registry", kind == "distribution-auth")
    ui = None
    try:
        seed(server.url, auth)
        env = {
            "REGISTRY_URL": f"{server.url}/v2",
            "REGISTRY_NAME": server.host,
            "REGISTRY_READONLY": "false",
        }
        if auth:
            env["REGISTRY_BASIC_AUTH"] = basic_auth_value()
        ui = UIProcess(workdir / "ui", env).start()
        yield Target(kind, ui.url, server, ui, auth)
    finally:
        if ui is not None:
            ui.stop()
        server.stop()


@pytest.fixture(scope="module")
def dockyard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Dockyard with its built-in UI, for what only Dockyard has (usage, collection)."""
    server = start_dockyard(tmp_path_factory.mktemp("dockyard") / "registry")
    try:
        seed(server.url)
        yield Target("dockyard", server.url, server)
    finally:
        server.stop()
