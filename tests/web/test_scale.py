"""2,000 repositories and a repository of 2,000 tags: what a page view costs.

The render times are printed (and written to test-artifacts/web/render-times.txt), not
asserted: they depend on the machine. What is asserted is that the number of registry
requests per page view is bounded by the page size, never by the size of the registry:
no page walks the whole catalog or asks about every tag. Requests are counted twice: by
the UI (its X-Registry-Requests header) and by a proxy in front of the registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from tests.support.servers import ServerProcess
from tests.web.conftest import ARTIFACTS, DOCKYARD_CONFIG, new_context
from tests.web.layout_writer import write_scale_registry
from tests.web.support import CountingProxy, UIProcess

REPOSITORIES = 2000
TAGS = 2000
PAGE = 50  # the UI's default page size


@dataclass
class Setup:
    name: str
    ui_url: str
    proxy: CountingProxy | None


@pytest.fixture(scope="module")
def scale_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "data"
    write_scale_registry(root, REPOSITORIES, TAGS)
    return root


@pytest.fixture(scope="module")
def setups(
    scale_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Setup]]:
    """The same data directory served by Dockyard and by Distribution, each fronted by
    ``dockyard ui`` through a counting proxy; plus Dockyard's built-in UI."""
    work = tmp_path_factory.mktemp("scale-servers")
    started: list[ServerProcess | UIProcess] = []
    proxies: list[CountingProxy] = []
    try:
        dockyard = ServerProcess(
            "dockyard", work / "dockyard", config=DOCKYARD_CONFIG, root=scale_root
        )
        dockyard.start()
        started.append(dockyard)
        distribution = ServerProcess("distribution", work / "distribution", root=scale_root)
        distribution.start()
        started.append(distribution)
        found: dict[str, Setup] = {
            "dockyard-builtin": Setup("dockyard-builtin", dockyard.url, None)
        }
        for name, server in (("dockyard", dockyard), ("distribution", distribution)):
            proxy = CountingProxy(server.url).start()
            proxies.append(proxy)
            ui = UIProcess(work / f"ui-{name}", {"REGISTRY_URL": proxy.url + "/v2"}).start()
            started.append(ui)
            found[name] = Setup(name, ui.url, proxy)
        yield found
    finally:
        for process in reversed(started):
            process.stop()
        for proxy in proxies:
            proxy.stop()


@dataclass
class View:
    ms: float
    ui_count: int
    proxy_count: int | None


def view(setup: Setup, path: str) -> View:
    if setup.proxy is not None:
        setup.proxy.reset()
    started = time.perf_counter()
    response = httpx.get(setup.ui_url + path, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    counted = int(response.headers["X-Registry-Requests"])
    proxied = setup.proxy.total if setup.proxy is not None else None
    return View(elapsed, counted, proxied)


def test_list_pages_stay_bounded_at_scale(
    setups: dict[str, Setup], browser: Browser, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[str] = []

    def measure(setup: Setup, label: str, path: str, bound: int) -> View:
        result = view(setup, path)
        rows.append(
            f"{setup.name:17} {label:38} {result.ms:8.0f} ms  {result.ui_count:5} requests"
            + (f" ({result.proxy_count} at the proxy)" if result.proxy_count is not None else "")
        )
        assert result.ui_count <= bound, (setup.name, label, result.ui_count, bound)
        if result.proxy_count is not None:
            # The UI's own count is honest: the registry saw no more (a background
            # usage refresh may add one request that belongs to no page).
            assert result.ui_count <= result.proxy_count <= result.ui_count + 1, (label, result)
        return result

    deep = f"team20/service-{1020:04d}"
    for name in ("dockyard-builtin", "dockyard", "distribution"):
        setup = setups[name]
        # Repository list: one catalog page, plus (until Dockyard's usage report is
        # ready, and always on Distribution) one tag list per repository shown.
        measure(setup, "repositories, first page (cold)", "/ui/", PAGE + 3)
        measure(setup, "repositories, first page", "/ui/", PAGE + 3)
        measure(setup, "repositories, a page deep in", f"/ui/?last={deep}", PAGE + 3)
        # Search walks catalog pages of 1,000 names: 3 requests for 2,001 names.
        measure(setup, "search 'service-1999'", "/ui/?q=service-1999", PAGE + 8)
        # 2,000 tags: Dockyard gives every tag's details in one request; elsewhere a
        # page of 50 tags costs a HEAD, a manifest and a config each, then only HEADs.
        tag_bound = 5 if name.startswith("dockyard") else 3 * PAGE + 5
        measure(setup, "2,000 tags, first page (cold)", "/ui/r/big/app", tag_bound)
        measure(setup, "2,000 tags, first page", "/ui/r/big/app", tag_bound)
        measure(setup, "2,000 tags, by name, page 20", "/ui/r/big/app?sort=name&page=20", tag_bound)
        if name.startswith("dockyard"):
            measure(setup, "2,000 tags, newest first", "/ui/r/big/app?sort=date&order=desc", 5)
        measure(setup, "one image of the 2,000", "/ui/r/big/app/-/tag/build-1999", 8)

    # The list page in the browser, to be sure it renders, not just answers.
    context = new_context(browser)
    try:
        page = context.new_page()
        started = time.perf_counter()
        page.goto(setups["dockyard-builtin"].ui_url + "/ui/r/big/app")
        page.wait_for_selector("table.tags tbody tr")
        browser_ms = (time.perf_counter() - started) * 1000
        assert page.locator("table.tags tbody tr").count() == PAGE
        assert page.locator("table.tags tbody tr").first.get_attribute("data-tag") == "build-1999"
        page.screenshot(path=str(ARTIFACTS / "scale-2000-tags.png"), full_page=False)
        started = time.perf_counter()
        page.goto(setups["distribution"].ui_url + "/ui/")
        page.wait_for_selector("a.repo-link")
        list_ms = (time.perf_counter() - started) * 1000
        page.screenshot(path=str(ARTIFACTS / "scale-2000-repositories.png"), full_page=False)
    finally:
        context.close()
    rows.append(f"{'chromium':17} {'2,000 tags page, load to rows':38} {browser_ms:8.0f} ms")
    rows.append(f"{'chromium':17} {'repositories via Distribution':38} {list_ms:8.0f} ms")

    report = "\n".join(
        [
            f"Render times with {REPOSITORIES:,} repositories and a repository of {TAGS:,} tags:",
            *rows,
        ]
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "render-times.txt").write_text(report + "\n")
    with capsys.disabled():
        print("\n" + report)
