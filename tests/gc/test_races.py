"""The races of the online stress test, made deterministic.

A collection plans (reads everything), then sets candidates aside one by one, waits
``settle``, and decides. Pushes and deletes that land between the plan and the set-aside
are the hard case its design covers with holds and modification times. Here the
collector runs in the test process on the live server's data directory (as
``dockyard garbage-collect`` does, same code), with a storage driver that pauses at the
first set-aside so the test can push and delete over HTTP exactly then, and that lets it
look at the registry right after a given path was set aside.

What must hold (docs/garbage-collection.md): a push racing a collection gets 201 or a
refusal it can retry, "never a manifest that points at missing content", and nothing a
kept manifest reaches is ever deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dockyard.registry import layout
from dockyard.registry.gc import GarbageCollector, GcOptions, GcReport
from dockyard.registry.trash import TRASH
from dockyard.storage.filesystem import FilesystemDriver
from tests.support.gc_images import error_code, get_manifest, image_with_layers, make_layer
from tests.support.gc_push import push_retrying
from tests.support.gc_store import V2, wait_until_quiet
from tests.support.images import Image, push_blob, push_manifest
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]

# The server's hold limit is 0.4 * its settle; the collector here settles as long.
CONFIG = {"dockyard": {"workers": 1, "gc": {"settle": "1s"}}}


class RacingDriver(FilesystemDriver):
    """The filesystem driver, with hooks at the collector's removal steps.

    ``before_set_aside`` runs once, just before the first candidate is moved to the
    trash or the first empty repository is removed (the plan is complete by then);
    ``after_set_aside(path)`` after each such step. Both are plain functions, run in a
    thread, that may talk HTTP.
    """

    def __init__(
        self,
        root: Path,
        before_set_aside: Callable[[], None],
        after_set_aside: Callable[[str], None] = lambda path: None,
    ) -> None:
        super().__init__(str(root))
        self.before_set_aside = before_set_aside
        self.after_set_aside = after_set_aside
        self.started = False
        # The collector sets aside several candidates at once: all wait for the hook.
        self.hook_done = asyncio.Event()

    async def _before_first_step(self) -> None:
        if not self.started:
            self.started = True
            await asyncio.to_thread(self.before_set_aside)
            self.hook_done.set()
        await self.hook_done.wait()

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        into_trash = dest.startswith(TRASH + "/")
        if into_trash:
            await self._before_first_step()
        moved = await super().move_unless_touched(source, dest, since)
        if into_trash and moved:
            await asyncio.to_thread(self.after_set_aside, source)
        return moved

    async def remove_empty(self, path: str) -> bool:
        await self._before_first_step()
        removed = await super().remove_empty(path)
        await asyncio.to_thread(self.after_set_aside, path)
        return removed


def collect(driver: RacingDriver, delay: float = 3600.0) -> GcReport:
    """One real collection, as ``dockyard garbage-collect --settle 1`` runs it."""
    return asyncio.run(GarbageCollector(driver, GcOptions(delay=delay, settle=1.0)).run())


def blob_status(
    client: httpx.Client, server: ServerProcess, repository: str, digest: str
) -> tuple[int, str | None]:
    response = client.get(f"{server.url}/v2/{repository}/blobs/{digest}")
    return response.status_code, error_code(response)


def pull_statuses(
    client: httpx.Client, server: ServerProcess, repository: str, image: Image
) -> dict[str, int]:
    """Status of the manifest and of each blob, by what they are."""
    statuses = {"manifest": get_manifest(client, server.url, repository, image.digest).status_code}
    statuses["config"] = blob_status(client, server, repository, image.config.digest)[0]
    for i, layer in enumerate(image.layers):
        statuses[f"layer{i}"] = blob_status(client, server, repository, layer.digest)[0]
    return statuses


def whole(image: Image) -> dict[str, int]:
    return {"manifest": 200, "config": 200, **{f"layer{i}": 200 for i in range(len(image.layers))}}


@pytest.fixture
def client() -> httpx.Client:
    return httpx.Client(timeout=30)


def test_delete_during_collection_does_not_undo_a_concurrent_push_s_hold(
    server_factory: ServerFactory, client: httpx.Client
) -> None:
    """A layer one push holds while another manifest using it is deleted stays linked.

    Sequence: X (layer L) is deleted, so L's link is aged and L is a candidate. Between
    the plan and the set-aside, Y (also on L) is pushed (201: its hold touched L's link)
    and then W (also on L) is pushed and deleted: the DELETE ages L's link again, erasing
    the mark of Y's hold. The collector then judges the link by its time alone.
    """
    server = server_factory("dockyard", config=CONFIG)
    shared = make_layer("race-shared")
    x, y, w = (
        image_with_layers(name, [shared, make_layer(f"race-{name}")]) for name in ("x", "y", "w")
    )
    push_retrying(client, server.url, "race/app", "x", x)
    assert client.delete(f"{server.url}/v2/race/app/manifests/{x.digest}").status_code == 202
    wait_until_quiet(server.root / V2, 0.5)

    def in_the_window() -> None:
        with httpx.Client(timeout=30) as http:
            assert push_retrying(http, server.url, "race/app", "y", y).pushes == 1
            assert push_retrying(http, server.url, "race/app", "w", w).pushes == 1
            assert http.delete(f"{server.url}/v2/race/app/manifests/{w.digest}").status_code == 202

    collect(RacingDriver(server.root, in_the_window))

    # Y was accepted and is tagged: every part of it must still be there.
    assert pull_statuses(client, server, "race/app", y) == whole(y)
    assert get_manifest(client, server.url, "race/app", "y").status_code == 200


def test_manifest_pushed_as_its_new_repository_is_judged_empty_stays_visible(
    server_factory: ServerFactory, client: httpx.Client
) -> None:
    """The first push into a new repository, racing a collection, is visible at once.

    The collection plans while fresh/app has layers but no manifest yet, so it plans to
    remove the repository's (absent) ``_manifests``; the manifest arrives just before
    that step, which must leave it in place.
    """
    server = server_factory("dockyard", config=CONFIG)
    image = image_with_layers("fresh", [make_layer("fresh-1")])
    for blob in image.blobs:
        push_blob(client, server.url, "fresh/app", blob.data)
    seen: dict[str, int] = {}

    def push_manifest_now() -> None:
        with httpx.Client(timeout=30) as http:
            response = push_manifest(http, server.url, "fresh/app", "v1", image.manifest)
            assert response.status_code == 201, response.text

    def look(path: str) -> None:
        if path == layout.manifests("fresh/app"):
            with httpx.Client(timeout=30) as http:
                seen["during"] = get_manifest(http, server.url, "fresh/app", "v1").status_code

    report = collect(RacingDriver(server.root, push_manifest_now, look))

    assert get_manifest(client, server.url, "fresh/app", "v1").status_code == 200
    assert report.repositories_removed == []
    # Read after write: the accepted manifest never disappears, not even for `settle`.
    assert seen == {"during": 200}, seen


def test_image_pushed_again_during_collection_never_points_at_missing_content(
    server_factory: ServerFactory, client: httpx.Client
) -> None:
    """Delete an image, push it again while a collection runs: it pulls throughout.

    The collection plans right after the DELETE, so the image's blobs are candidates;
    the push again holds them (HEAD → 200) and is accepted before they are set aside.
    Held, they must not be set aside at all: a collection that put them back only
    after ``settle`` would leave the accepted image missing them until then.
    """
    server = server_factory("dockyard", config=CONFIG)
    image = image_with_layers("again", [make_layer("again-1"), make_layer("again-2")])
    push_retrying(client, server.url, "again/app", "v1", image)
    assert client.delete(f"{server.url}/v2/again/app/manifests/{image.digest}").status_code == 202
    # Real garbage too, so that the collection does set things aside meanwhile.
    junk = image_with_layers("junk", [make_layer("junk-1"), make_layer("junk-2")])
    push_retrying(client, server.url, "junk/app", "v1", junk)
    assert client.delete(f"{server.url}/v2/junk/app/manifests/{junk.digest}").status_code == 202
    wait_until_quiet(server.root / V2, 0.5)
    during: list[dict[str, int]] = []

    def push_again() -> None:
        with httpx.Client(timeout=30) as http:
            stats = push_retrying(http, server.url, "again/app", "v1", image)
            assert (stats.pushes, stats.uploads, stats.skipped) == (1, 0, 3), stats

    def look(path: str) -> None:
        with httpx.Client(timeout=30) as http:
            during.append(pull_statuses(http, server, "again/app", image))

    report = collect(RacingDriver(server.root, push_again, look))

    assert pull_statuses(client, server, "again/app", image) == whole(image)
    # The junk went; the image pulled whole after each step of that.
    assert during and all(statuses == whole(image) for statuses in during), during
    assert set(map(str, report.blobs_deleted)) == junk.all_digests


def test_delete_acknowledged_during_settle_is_not_undone_by_the_restore(
    server_factory: ServerFactory, client: httpx.Client
) -> None:
    """A manifest deleted with 202 stays deleted, whatever a collection puts back.

    As above, the first manifest of fresh/app arrives just before the collection removes
    the repository it judged empty. The client pushes it again (201) and deletes it
    (202) right after that step. A collection that had set ``_manifests`` aside would
    restore it, merged with the live one, and bring the deleted manifest and its tag
    back. (Seen in the stress run after a push answered 500 in the same window.)
    """
    server = server_factory("dockyard", config=CONFIG)
    image = image_with_layers("undone", [make_layer("undone-1")])
    for blob in image.blobs:
        push_blob(client, server.url, "fresh/app", blob.data)

    def push_manifest_now() -> None:
        with httpx.Client(timeout=30) as http:
            response = push_manifest(http, server.url, "fresh/app", "v1", image.manifest)
            assert response.status_code == 201, response.text

    def push_again_then_delete(path: str) -> None:
        if path != layout.manifests("fresh/app"):
            return
        with httpx.Client(timeout=30) as http:
            response = push_manifest(http, server.url, "fresh/app", "v1", image.manifest)
            assert response.status_code == 201, response.text
            deleted = http.delete(f"{server.url}/v2/fresh/app/manifests/{image.digest}")
            assert deleted.status_code == 202, deleted.text

    collect(RacingDriver(server.root, push_manifest_now, push_again_then_delete))

    by_digest = get_manifest(client, server.url, "fresh/app", image.digest)
    by_tag = get_manifest(client, server.url, "fresh/app", "v1")
    assert (by_digest.status_code, by_tag.status_code) == (404, 404), (by_digest.text, by_tag.text)
