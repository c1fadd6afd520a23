"""Browsing in a real browser, the same tests against Dockyard and Distribution.

``target`` is Dockyard with its built-in UI, Distribution behind ``dockyard ui``, and
Distribution with htpasswd auth behind ``dockyard ui`` with REGISTRY_BASIC_AUTH.
"""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.web.conftest import Target, screenshot
from tests.web.support import HOSTILE


def test_root_leads_to_the_repository_list(page: Page, target: Target) -> None:
    page.goto(target.ui_url + "/")
    expect(page).to_have_url(re.compile(r"/ui/$"))
    expect(page.get_by_role("heading", name="Repositories")).to_be_visible()


def test_from_the_list_to_an_image(page: Page, target: Target) -> None:
    page.goto(target.ui_url + "/ui/")
    for name in ("zhang/nginx", "zhang/multi", "library/alpine", "xss/evil"):
        expect(page.locator("a.repo-link", has_text=name.split("/")[1])).to_have_count(1)
    screenshot(page, f"{target.kind}-repositories")

    page.locator("a.repo-link", has_text="nginx").click()
    expect(page.get_by_role("heading", name="zhang/nginx")).to_be_visible()
    rows = page.locator("table.tags tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("tr[data-tag='1.17'] td[data-label='Platforms']")).to_have_text(
        "linux/amd64"
    )
    screenshot(page, f"{target.kind}-repository")

    page.locator("a.tag-link", has_text="1.17").click()
    expect(page.locator("h1")).to_contain_text("zhang/nginx:1.17")
    expect(page.locator(".badge.kind")).to_have_text("OCI image manifest")
    # The config, as a person reads it.
    config = page.locator("#config")
    expect(config).to_contain_text("2024-03-01 10:00:00 UTC")
    expect(config).to_contain_text("Dockyard tests")
    expect(config).to_contain_text('["/docker-entrypoint.sh"]')
    expect(config).to_contain_text("/usr/share/nginx/html")
    expect(config).to_contain_text("80/tcp")
    expect(config).to_contain_text("/var/cache/nginx")
    expect(page.locator("#env")).to_contain_text("NGINX_VERSION")
    expect(page.locator("#labels")).to_contain_text("NGINX Docker Maintainers")
    # Dockerfile steps, with the classic builder's and BuildKit's noise removed.
    history = page.locator("ol.history li")
    expect(history).to_have_count(5)
    expect(history.nth(0)).to_contain_text("ADD file:9b8be2b5 in /")
    expect(history.nth(2)).to_contain_text("RUN apt-get update && apt-get install -y nginx")
    expect(history.nth(3)).to_contain_text("COPY docker-entrypoint.sh /")
    expect(history.nth(1)).to_contain_text("no layer")
    expect(page.locator("#layers tbody tr")).to_have_count(3)
    expect(page.locator("#layers")).to_contain_text("application/vnd.oci.image.layer.v1.tar+gzip")
    expect(page.locator("#annotations")).to_contain_text("https://example.com/nginx")
    expect(page.locator(".pulls")).to_contain_text(
        f"docker pull {target.pull_host}/zhang/nginx:1.17"
    )
    expect(page.locator(".pulls")).to_contain_text(
        f"docker pull {target.pull_host}/zhang/nginx@sha256:"
    )
    page.locator("details.raw summary").click()
    expect(page.locator("pre.json")).to_contain_text('"schemaVersion": 2')
    screenshot(page, f"{target.kind}-image")


def test_an_index_lists_its_platforms_each_a_link(page: Page, target: Target) -> None:
    page.goto(target.ui_url + "/ui/r/zhang/multi/-/tag/v1")
    expect(page.locator(".badge.kind")).to_have_text("OCI image index")
    platforms = page.locator("#platforms tbody tr")
    expect(platforms).to_have_count(2)
    page.locator("#platforms a", has_text="linux/arm64").click()
    expect(page.locator(".lede .chip").first).to_have_text("linux/arm64")
    expect(page.locator(".crumbs")).to_contain_text("v1")
    screenshot(page, f"{target.kind}-platform")


def test_search(page: Page, target: Target) -> None:
    page.goto(target.ui_url + "/ui/")
    page.locator("#repo-q").fill("NGIN")
    page.locator("#repo-q").press("Enter")
    expect(page.locator("a.repo-link")).to_have_count(1)
    expect(page.locator("a.repo-link")).to_contain_text("zhang/nginx")
    page.locator("#repo-q").fill("no-such-thing")
    page.locator("#repo-q").press("Enter")
    expect(page.locator(".empty")).to_contain_text("No repository name contains")


def test_sort_and_filter_tags(page: Page, target: Target) -> None:
    page.goto(target.ui_url + "/ui/r/zhang/nginx?sort=name&order=asc")
    tags = page.locator("table.tags tbody tr")

    def order() -> list[str]:
        return [tags.nth(i).get_attribute("data-tag") or "" for i in range(tags.count())]

    assert order() == ["1.16", "1.17", "latest"]
    page.locator(".sorts a[data-sort='name']").click()  # the active sort flips its order
    expect(tags.first).to_have_attribute("data-tag", "latest")
    assert order() == ["latest", "1.17", "1.16"]
    page.locator(".sorts a[data-sort='date']").click()  # newest first
    expect(tags.last).to_have_attribute("data-tag", "1.16")
    page.locator(".sorts a[data-sort='date']").click()  # oldest first
    expect(tags.first).to_have_attribute("data-tag", "1.16")
    page.locator("#tag-q").fill("1.1")
    page.locator("#tag-q").press("Enter")
    expect(tags).to_have_count(2)
    assert sorted(order()) == ["1.16", "1.17"]


def test_copy_the_pull_command(page: Page, target: Target) -> None:
    page.goto(target.ui_url + "/ui/r/zhang/nginx/-/tag/1.17")
    command = f"docker pull {target.pull_host}/zhang/nginx:1.17"
    button = page.locator(f".pulls button[data-copy='{command}']")
    button.click()
    expect(page.locator("#toast")).to_have_text(f"Copied: {command}")
    expect(button).to_have_attribute("data-copied", command)
    assert page.evaluate("navigator.clipboard.readText()") == command
    digest_button = page.locator(".pulls button.btn-copy").nth(1)
    digest_button.click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert re.fullmatch(
        rf"docker pull {re.escape(target.pull_host)}/zhang/nginx@sha256:[0-9a-f]{{64}}", copied
    )


def test_pages_read_without_javascript(browser_no_js: Page, target: Target) -> None:
    page = browser_no_js
    page.goto(target.ui_url + "/ui/")
    page.locator("a.repo-link", has_text="nginx").click()
    expect(page.locator("table.tags tbody tr")).to_have_count(3)
    page.locator("a.tag-link", has_text="latest").click()
    expect(page.locator("#layers tbody tr")).to_have_count(3)
    # The copy buttons need script; without it the command is plain selectable text.
    expect(page.locator(".pulls .btn-copy").first).to_be_hidden()
    expect(page.locator(".pulls code.cmd").first).to_be_visible()


def test_phone_layout_has_no_sideways_scrolling(phone: Page, target: Target) -> None:
    for path, name in (
        ("/ui/", "list"),
        ("/ui/r/zhang/nginx", "repository"),
        ("/ui/r/zhang/nginx/-/tag/1.17", "image"),
    ):
        phone.goto(target.ui_url + path)
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than the phone"
        if target.kind == "dockyard":
            screenshot(phone, f"phone-{name}")


def test_the_registry_credentials_never_reach_the_browser(target: Target) -> None:
    if target.auth is None:
        return
    secret = target.auth[1]
    for path in ("/ui/", "/ui/r/zhang/nginx", "/ui/r/zhang/nginx/-/tag/1.17"):
        response = httpx.get(target.ui_url + path)
        assert response.status_code == 200
        assert secret not in response.text
        assert secret not in str(response.headers)


def test_markup_from_an_image_is_shown_as_text_and_never_runs(page: Page, target: Target) -> None:
    """Labels, annotations, env, author and history carrying HTML and script."""
    page.goto(target.ui_url + "/ui/r/xss/evil/-/tag/latest")
    expect(page.locator("#labels")).to_contain_text(HOSTILE)
    expect(page.locator("#labels")).to_contain_text(f"evil{HOSTILE}")
    expect(page.locator("#annotations")).to_contain_text(HOSTILE)
    expect(page.locator("#annotations")).to_contain_text(
        "</code></td><script>window.pwned=3</script>"
    )
    expect(page.locator("#env")).to_contain_text(HOSTILE)
    expect(page.locator("#config")).to_contain_text(f"Mallory {HOSTILE}")
    expect(page.locator("ol.history")).to_contain_text(f"echo '{HOSTILE}'")
    page.locator("details.raw summary").click()
    expect(page.locator("pre.json")).to_contain_text("window.pwned")
    screenshot(page, f"{target.kind}-hostile-image")
    # Nothing ran, and nothing became an element: escaping, not only the CSP, did it.
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("main script, main img").count() == 0
    for path in ("/ui/r/xss/evil/-/tag/latest", "/ui/r/xss/evil", "/ui/?q=%3Cscript%3E"):
        html = httpx.get(target.ui_url + path, auth=None).text
        assert "<script>window.pwned" not in html
        assert "<img src=x onerror" not in html
    assert (
        "&lt;script&gt;window.pwned = 1&lt;/script&gt;"
        in httpx.get(target.ui_url + "/ui/r/xss/evil/-/tag/latest").text
    )
