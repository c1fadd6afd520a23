"""A mirror's cached repositories in the browser: the upstream, fetch, pull and expiry.

An upstream Dockyard and a Dockyard mirroring it under ``hub`` (with its built-in UI),
both on loopback; an image is pulled through the mirror with skopeo before the pages
are read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from dockyard.web.browse import CacheSource, cache_source
from dockyard.web.model import duration
from tests.support.images import make_image, skopeo, write_oci_layout
from tests.support.servers import ServerProcess
from tests.web.conftest import DOCKYARD_CONFIG, Target, screenshot, start_dockyard


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, ServerProcess]]:
    workdir = tmp_path_factory.mktemp("mirror")
    upstream = start_dockyard(workdir / "upstream")
    mirror: ServerProcess | None = None
    try:
        mirror = start_dockyard(
            workdir / "mirror",
            {
                "dockyard": {
                    **DOCKYARD_CONFIG["dockyard"],
                    "proxy": [{"prefix": "hub", "remoteurl": upstream.url, "ttl": "2h"}],
                }
            },
        )
        source = write_oci_layout(
            workdir / "src", {"cached": make_image("web-cached"), "local": make_image("web-local")}
        )
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{source}:cached",
            f"docker://{upstream.host}/team/app:v1",
        )
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{source}:local",
            f"docker://{mirror.host}/ours/app:v1",
        )
        skopeo(
            "copy",
            "--src-tls-verify=false",
            f"docker://{mirror.host}/hub/team/app:v1",
            f"oci:{workdir / 'pulled'}:v",
        )
        yield Target("dockyard", mirror.url, mirror), upstream
    finally:
        if mirror is not None:
            mirror.stop()
        upstream.stop()


def moment(page: Page, selector: str) -> float:
    value = page.locator(f"{selector} time").get_attribute("datetime")
    assert value, selector
    # What the page says, to the second: "2026-01-02 03:04:05 UTC".
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC).timestamp()


def test_a_cached_repository_names_its_upstream_and_its_times(
    page: Page, mirrored: tuple[Target, ServerProcess]
) -> None:
    target, upstream = mirrored
    # The list marks cached repositories from the usage report, which the first view
    # only sets going: it is shown once it is in.
    page.goto(target.ui_url + "/ui/")
    deadline = time.monotonic() + 20
    while page.locator("table.repos thead th", has_text="Size").count() == 0:
        assert time.monotonic() < deadline, "the usage report never arrived"
        time.sleep(0.2)
        page.reload()
    row = page.locator("table.repos tbody tr", has=page.locator("a.repo-link", has_text="team/"))
    expect(row.locator(".badge-cache")).to_have_text("cache")
    expect(row.locator(".badge-cache")).to_have_attribute(
        "title", f"A pull-through cache of {upstream.url}"
    )
    local = page.locator("table.repos tbody tr", has=page.locator("a.repo-link", has_text="ours/"))
    expect(local).to_have_count(1)
    expect(local.locator(".badge-cache")).to_have_count(0)
    screenshot(page, "mirror-repositories")

    row.locator("a.repo-link").click()
    expect(page.get_by_role("heading", name="hub/team/app")).to_be_visible()
    source = page.locator("#cache-source")
    expect(source).to_contain_text(f"A pull-through cache of {upstream.url}")
    expect(source.locator("[data-upstream]")).to_have_text(upstream.url)
    expect(source.locator("[data-remote]")).to_have_text("team/app")
    expect(source.locator("[data-prefix]")).to_have_text("hub")
    expect(source.locator("[data-ttl]")).to_have_text("2 hours")

    header = page.locator("table.tags thead")
    for column in ("Fetched", "Last pulled", "Expires"):
        expect(header).to_contain_text(column)
    tag = "tr[data-tag='v1']"
    expect(page.locator(f"{tag} td.cached-at")).to_have_text("just now")
    expect(page.locator(f"{tag} td.last-pulled")).to_have_text("just now")
    expect(page.locator(f"{tag} td.expires")).to_have_text("in 1 hour")
    now = time.time()
    fetched = moment(page, f"{tag} td.cached-at")
    pulled = moment(page, f"{tag} td.last-pulled")
    expires = moment(page, f"{tag} td.expires")
    assert now - 120 < fetched <= pulled + 1 <= now + 2
    assert abs(expires - (max(fetched, pulled) + 7200)) < 2
    # Deletes are refused in a cached repository, so none are offered.
    expect(page.locator("#delete-selected")).to_have_count(0)
    expect(page.locator(".danger-zone")).to_have_count(0)
    screenshot(page, "mirror-repository")


def test_a_local_repository_on_the_mirror_shows_nothing_of_the_cache(
    page: Page, mirrored: tuple[Target, ServerProcess]
) -> None:
    target, _ = mirrored
    page.goto(target.ui_url + "/ui/r/ours/app")
    expect(page.locator("table.tags tbody tr")).to_have_count(1)
    expect(page.locator("#cache-source")).to_have_count(0)
    expect(page.locator("table.tags thead")).not_to_contain_text("Fetched")
    expect(page.locator("#delete-selected")).to_have_count(1)


def test_the_upstream_itself_shows_nothing_of_the_cache(
    page: Page, mirrored: tuple[Target, ServerProcess]
) -> None:
    _, upstream = mirrored
    page.goto(upstream.url + "/ui/r/team/app")
    expect(page.locator("table.tags tbody tr")).to_have_count(1)
    expect(page.locator("#cache-source")).to_have_count(0)
    expect(page.locator(".badge-cache")).to_have_count(0)


def test_cache_fields_are_read_only_when_they_make_sense() -> None:
    assert cache_source(None) is None  # a local repository, or not Dockyard
    assert cache_source({"prefix": "hub"}) is None
    assert cache_source({"upstream": 5}) is None
    assert cache_source(
        {"upstream": "https://ghcr.io", "prefix": "ghcr.io", "repository": "o/r", "ttl": 86400}
    ) == CacheSource("https://ghcr.io", "ghcr.io", "o/r", 86400.0)
    odd = cache_source({"upstream": "https://x", "prefix": 1, "ttl": True})
    assert odd == CacheSource("https://x", "", None, None)
    assert duration(604_800) == "7 days"
    assert duration(5_400) == "1 hour 30 minutes"
    assert duration(90_061) == "1 day 1 hour"
    assert duration(45) == "45 seconds"
    assert duration(None) == "—"
