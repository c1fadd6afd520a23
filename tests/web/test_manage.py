"""Deleting and collecting garbage from the page, and what the page refuses to do."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.images import make_image, push_artifact
from tests.web.conftest import Target, screenshot, start_distribution, start_dockyard
from tests.web.support import UIProcess, signature_for


def _tag_exists(registry_url: str, name: str, reference: str) -> bool:
    response = httpx.head(
        f"{registry_url}/v2/{name}/manifests/{reference}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert response.status_code in (200, 404), response.status_code
    return response.status_code == 200


def test_delete_tags_selected_in_the_table(page: Page, dockyard: Target) -> None:
    url = dockyard.registry.url
    with httpx.Client() as client:
        push_artifact(client, url, "delete/me", "a", make_image("del-a"))
        push_artifact(client, url, "delete/me", "b", make_image("del-b"))
        push_artifact(client, url, "delete/me", "keep", make_image("del-keep"))
    page.goto(url + "/ui/r/delete/me?sort=name")
    expect(page.locator("#delete-selected")).to_be_disabled()
    page.locator("tr[data-tag='a'] input[type=checkbox]").check()
    page.locator("tr[data-tag='b'] input[type=checkbox]").check()
    expect(page.locator("#selection-count")).to_have_text("2 selected")
    page.locator("#delete-selected").click()

    # The confirmation names exactly what goes.
    expect(page.get_by_role("heading", name="Delete from delete/me?")).to_be_visible()
    plan = page.locator("ul.plan")
    expect(plan.locator(".chip-danger")).to_have_text(["a", "b"])
    expect(plan).to_contain_text("No other tag points at this image")
    screenshot(page, "delete-confirm")
    page.locator("#confirm-delete").click()

    expect(page.locator(".flash-ok")).to_have_text(["Deleted tag a.", "Deleted tag b."])
    expect(page.locator("table.tags tbody tr")).to_have_count(1)
    expect(page.locator("tr[data-tag='keep']")).to_be_visible()
    screenshot(page, "delete-done")
    assert not _tag_exists(url, "delete/me", "a")
    assert not _tag_exists(url, "delete/me", "b")
    assert _tag_exists(url, "delete/me", "keep")
    tags = httpx.get(f"{url}/v2/delete/me/tags/list").json()["tags"]
    assert tags == ["keep"]


def test_deleting_a_manifest_names_every_tag_that_goes_with_it(
    page: Page, dockyard: Target
) -> None:
    url = dockyard.registry.url
    image = make_image("shared-digest")
    with httpx.Client() as client:
        for tag in ("one", "two", "three"):
            push_artifact(client, url, "delete/shared", tag, image)
    page.goto(url + "/ui/r/delete/shared/-/tag/two")
    expect(page.locator(".lede")).to_contain_text("also tagged")
    page.get_by_role("link", name="Delete manifest…").click()
    expect(page.locator("ul.plan")).to_contain_text(image.digest)
    expect(page.locator("ul.plan .chip-danger")).to_have_text(["one", "three", "two"])
    page.locator("#confirm-delete").click()
    expect(page.locator(".flash-ok")).to_contain_text(f"Deleted manifest {image.digest}")
    expect(page.locator(".empty")).to_contain_text("no tags")
    assert not _tag_exists(url, "delete/shared", image.digest)
    assert httpx.get(f"{url}/v2/delete/shared/tags/list").json()["tags"] == []


def test_a_message_claiming_a_deletion_is_checked_against_the_registry(
    page: Page, dockyard: Target
) -> None:
    """A crafted link cannot make the page say something was deleted that was not."""
    page.goto(dockyard.registry.url + "/ui/r/zhang/nginx?deleted=tag:latest&deleted=tag:1.17")
    expect(page.locator(".flash-ok")).to_have_count(0)


def test_referrers_are_listed(page: Page, dockyard: Target) -> None:
    url = dockyard.registry.url
    image = make_image("signed")
    signature = signature_for(image)
    with httpx.Client() as client:
        push_artifact(client, url, "signed/app", "v1", image)
        push_artifact(client, url, "signed/app", signature.digest, signature)
    page.goto(url + "/ui/r/signed/app/-/tag/v1")
    referrers = page.locator("#referrers tbody tr")
    expect(referrers).to_have_count(1)
    expect(referrers).to_contain_text("cosign signature")
    referrers.locator("a.digest").click()
    expect(page.locator(".badge.kind")).to_contain_text("OCI artifact")
    expect(page.locator(".flash-info")).to_contain_text("refers to")
    screenshot(page, "referrer")


def test_garbage_collection_dry_run_then_real_run(page: Page, dockyard: Target) -> None:
    url = dockyard.registry.url
    doomed = make_image("doomed", layers=3, file_size=64 * 1024)
    with httpx.Client() as client:
        push_artifact(client, url, "gc/victim", "old", doomed)
        response = client.delete(f"{url}/v2/gc/victim/manifests/{doomed.digest}")
        assert response.status_code == 202
    expected = sum(blob.size for blob in doomed.blobs) + doomed.manifest.size
    # The collector leaves alone what was written moments ago (a push may be in flight
    # and about to reference it), so let the doomed image age a little.
    time.sleep(3)

    page.goto(url + "/ui/storage?fresh=1")
    expect(page.locator("#reclaimable-bytes")).not_to_have_text("0 B")
    screenshot(page, "storage")
    page.locator("#gc-dry").click()
    result = page.locator("#gc-result")
    expect(result).to_be_visible(timeout=60_000)
    expect(page.locator("h1")).to_have_text("Dry run")
    freed = int(result.get_attribute("data-bytes-freed") or "0")
    assert freed >= expected
    for blob in doomed.blobs:
        expect(page.locator("#gc-blobs")).to_contain_text(blob.digest)
    screenshot(page, "gc-dry-run")
    # A dry run deletes nothing. (Checked on disk: a HEAD of the blob would count as a
    # client about to use it, and the collector would rightly spare it.)
    blob_path = _blob_path(dockyard, doomed.layers[0].digest)
    assert blob_path.exists()

    page.locator("#gc-run-now").click()
    expect(page.locator("h1")).to_have_text("Garbage collection")
    # The page streams while the registry works (settle is 1 s here, so a tick shows).
    expect(page.locator("#gc-progress li.tick").first).to_be_visible(timeout=30_000)
    expect(page.locator("#gc-result")).to_be_visible(timeout=60_000)
    expect(page.locator("#bytes-freed")).to_have_text(re.compile(r"KiB|MiB"))
    assert int(page.locator("#gc-result").get_attribute("data-bytes-freed") or "0") == freed
    screenshot(page, "gc-run")
    assert not blob_path.exists()

    page.goto(url + "/ui/storage?fresh=1")
    expect(page.locator("#gc-last")).to_contain_text("freed")


def _blob_path(target: Target, digest: str) -> Path:
    hexpart = digest.removeprefix("sha256:")
    return target.registry.root / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def test_forms_need_the_csrf_token(dockyard: Target) -> None:
    url = dockyard.registry.url
    with httpx.Client() as client:
        push_artifact(client, url, "csrf/target", "v1", make_image("csrf"))
    with httpx.Client(base_url=url) as client:
        # No token at all.
        response = client.post("/ui/r/csrf/target/-/delete", data={"tag": "v1"})
        assert response.status_code == 403
        # A cookie and a different token (another site cannot read the cookie).
        client.get("/ui/")
        assert "dockyard_ui_csrf" in client.cookies
        response = client.post("/ui/r/csrf/target/-/delete", data={"tag": "v1", "csrf": "x" * 43})
        assert response.status_code == 403
        # The right token, but sent from another site.
        token = client.cookies["dockyard_ui_csrf"]
        response = client.post(
            "/ui/r/csrf/target/-/delete",
            data={"tag": "v1", "csrf": token},
            headers={"Origin": "http://evil.example"},
        )
        assert response.status_code == 403
        response = client.post("/ui/storage/gc", data={"mode": "collect"})
        assert response.status_code == 403
    assert _tag_exists(url, "csrf/target", "v1")


def test_the_csrf_cookie_is_strict_and_http_only(dockyard: Target) -> None:
    response = httpx.get(dockyard.registry.url + "/ui/")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_deletes_disabled_are_said_plainly(page: Page, tmp_path: Path) -> None:
    server = start_dockyard(tmp_path / "nodelete", {"storage": {"delete": {"enabled": False}}})
    try:
        with httpx.Client() as client:
            push_artifact(client, server.url, "locked/app", "v1", make_image("locked"))
        page.goto(server.url + "/ui/r/locked/app")
        # Dockyard says up front that deleting is off: no checkboxes, no delete buttons.
        expect(page.locator("#delete-selected")).to_have_count(0)
        page.goto(server.url + "/ui/r/locked/app/-/delete?tag=v1")
        page.locator("#confirm-delete").click()
        expect(page.locator("h1")).to_have_text("Nothing was deleted")
        expect(page.locator(".failures")).to_contain_text("does not allow deleting")
        expect(page.locator(".failures")).to_contain_text("storage.delete.enabled: true")
        screenshot(page, "delete-refused")
        assert _tag_exists(server.url, "locked/app", "v1")
    finally:
        server.stop()


def test_distribution_explains_that_a_tag_goes_only_with_its_digest(
    page: Page, tmp_path: Path
) -> None:
    """Distribution 2.8 cannot delete a tag alone; the page offers the digest instead."""
    registry, _ = start_distribution(tmp_path / "dist", with_auth=False)
    ui = None
    try:
        image = make_image("dist-delete")
        with httpx.Client() as client:
            push_artifact(client, registry.url, "dist/app", "v1", image)
            push_artifact(client, registry.url, "dist/app", "v1-alias", image)
            push_artifact(client, registry.url, "dist/app", "other", make_image("dist-other"))
        ui = UIProcess(
            tmp_path / "ui",
            {"REGISTRY_URL": f"{registry.url}/v2", "REGISTRY_READONLY": "false"},
        ).start()
        page.goto(ui.url + "/ui/r/dist/app/-/delete?tag=v1")
        page.locator("#confirm-delete").click()
        failures = page.locator(".failures")
        expect(failures).to_contain_text("cannot delete a tag on its own")
        expect(failures.locator(".chip-danger")).to_have_text(["v1", "v1-alias"])
        screenshot(page, "distribution-tag-delete")
        assert _tag_exists(registry.url, "dist/app", "v1")

        page.get_by_role("button", name=re.compile("Delete sha256:")).click()
        expect(page.locator("ul.plan .chip-danger")).to_have_text(["v1", "v1-alias"])
        page.locator("#confirm-delete").click()
        expect(page.locator(".flash-ok")).to_contain_text(f"Deleted manifest {image.digest}")
        expect(page.locator("table.tags tbody tr")).to_have_count(1)
        assert not _tag_exists(registry.url, "dist/app", "v1")
        assert _tag_exists(registry.url, "dist/app", "other")
    finally:
        if ui is not None:
            ui.stop()
        registry.stop()


def test_standalone_ui_is_read_only_by_default(page: Page, tmp_path: Path) -> None:
    """As docker-registry-web: deleting needs REGISTRY_READONLY=false."""
    registry = start_dockyard(tmp_path / "ro")
    ui = None
    try:
        with httpx.Client() as client:
            push_artifact(client, registry.url, "ro/app", "v1", make_image("ro"))
        ui = UIProcess(tmp_path / "ui", {"REGISTRY_URL": f"{registry.url}/v2"}).start()
        page.goto(ui.url + "/ui/r/ro/app")
        expect(page.locator("table.tags tbody tr")).to_have_count(1)
        expect(page.locator("#delete-selected")).to_have_count(0)
        expect(page.locator(".footer")).to_contain_text("read-only")
        # The storage page still reports usage, without the collection buttons.
        page.goto(ui.url + "/ui/storage")
        expect(page.locator("#gc-run")).to_have_count(0)
        with httpx.Client(base_url=ui.url) as client:
            client.get("/ui/")
            token = client.cookies["dockyard_ui_csrf"]
            response = client.post("/ui/r/ro/app/-/delete", data={"tag": "v1", "csrf": token})
            assert response.status_code == 403
        assert _tag_exists(registry.url, "ro/app", "v1")
    finally:
        if ui is not None:
            ui.stop()
        registry.stop()


def test_browser_credentials_pass_through_to_the_registry(browser: object, tmp_path: Path) -> None:
    """Without REGISTRY_BASIC_AUTH the browser asks, and its credentials reach the registry."""
    from playwright.sync_api import Browser

    from tests.web.support import PASSWORD, USER

    assert isinstance(browser, Browser)
    registry, auth = start_distribution(tmp_path / "auth", with_auth=True)
    ui = None
    try:
        with httpx.Client(auth=auth) as client:
            push_artifact(client, registry.url, "private/app", "v1", make_image("private"))
        ui = UIProcess(tmp_path / "ui", {"REGISTRY_URL": f"{registry.url}/v2"}).start()
        anonymous = httpx.get(ui.url + "/ui/")
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
        try:
            page = context.new_page()
            page.goto(ui.url + "/ui/")
            expect(page.locator("a.repo-link")).to_contain_text("private/app")
        finally:
            context.close()
    finally:
        if ui is not None:
            ui.stop()
        registry.stop()


@pytest.mark.parametrize(
    "path", ["/ui/r/Bad_Name", "/ui/r/zhang/nginx/-/tag/..", "/ui/r/zhang/nginx/-/nope"]
)
def test_bad_paths_are_404_pages(dockyard: Target, path: str) -> None:
    response = httpx.get(dockyard.registry.url + path)
    assert response.status_code == 404
    assert "text/html" in response.headers["Content-Type"]


def test_builtin_ui_behind_dockyards_own_auth(browser: object, tmp_path: Path) -> None:
    """With htpasswd auth in dockyard serve, the UI asks the browser and passes it on."""
    from playwright.sync_api import Browser

    from tests.web.support import PASSWORD, USER, write_htpasswd

    assert isinstance(browser, Browser)
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    server = start_dockyard(
        tmp_path / "authed",
        {
            "auth": {"htpasswd": {"realm": "test", "path": str(htpasswd)}},
            "dockyard": {"workers": 1, "auth": {"admins": [USER]}},
        },
    )
    try:
        with httpx.Client(auth=(USER, PASSWORD)) as client:
            push_artifact(client, server.url, "private/app", "v1", make_image("authed"))
        assert httpx.get(server.url + "/ui/").status_code == 401
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
        try:
            page = context.new_page()
            page.goto(server.url + "/ui/r/private/app/-/tag/v1")
            expect(page.locator("#layers tbody tr")).to_have_count(2)
            page.get_by_role("link", name="Storage").click()
            expect(page.locator("#total-bytes")).not_to_have_text("0 B")
        finally:
            context.close()
    finally:
        server.stop()
