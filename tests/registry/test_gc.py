"""Mark-and-sweep on random graphs of manifests, indexes, referrers and tags."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.registry import Registry, RegistryOptions, Repository, layout
from dockyard.registry.digest import Digest
from dockyard.registry.gc import GarbageCollector, GcOptions
from dockyard.registry.manifests import OCI_INDEX, OCI_MANIFEST
from dockyard.registry.trash import TRASH
from dockyard.storage import FilesystemDriver, MemoryDriver
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import StorageDriver
from tests.support.recording_drivers import BatchRecorder

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


@dataclass
class Node:
    """One manifest of the random graph, as the test generates it."""

    repo: int
    blobs: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    subject: int | None = None
    tag: str | None = None


@st.composite
def graphs(draw: st.DrawFn) -> tuple[int, int, list[Node]]:
    repos = draw(st.integers(1, 3))
    blob_count = draw(st.integers(1, 8))
    nodes: list[Node] = []
    for index in range(draw(st.integers(1, 10))):
        repo = draw(st.integers(0, repos - 1))
        node = Node(repo)
        earlier = [i for i, n in enumerate(nodes) if n.repo == repo]
        kind = draw(st.sampled_from(["image", "image", "index", "referrer"]))
        if kind == "index" and earlier:
            node.children = sorted(
                set(draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3)))
            )
        else:
            node.blobs = sorted(
                set(draw(st.lists(st.integers(0, blob_count - 1), min_size=1, max_size=4)))
            )
        if kind == "referrer" and earlier:
            node.subject = draw(st.sampled_from(earlier))
        if draw(st.booleans()):
            node.tag = f"t{index}"
        nodes.append(node)
    return repos, blob_count, nodes


def blob_bytes(i: int) -> bytes:
    return f"blob-{i}".encode()


def manifest_bytes(
    node: Node, index: int, digests: dict[int, Digest], sizes: dict[int, int]
) -> tuple[bytes, str]:
    body: dict[str, object] = {"schemaVersion": 2}
    if node.children:
        body["mediaType"] = OCI_INDEX
        body["manifests"] = [
            {"mediaType": OCI_MANIFEST, "digest": str(digests[c]), "size": sizes[c]}
            for c in node.children
        ]
    else:
        body["mediaType"] = OCI_MANIFEST
        config, *layers = node.blobs + node.blobs[:1] if len(node.blobs) == 1 else node.blobs
        body["config"] = {
            "mediaType": CONFIG_TYPE,
            "digest": str(Digest.of(blob_bytes(config))),
            "size": len(blob_bytes(config)),
        }
        body["layers"] = [
            {
                "mediaType": LAYER_TYPE,
                "digest": str(Digest.of(blob_bytes(b))),
                "size": len(blob_bytes(b)),
            }
            for b in layers
        ]
        body["annotations"] = {"index": str(index)}
    if node.subject is not None:
        body["subject"] = {
            "mediaType": OCI_MANIFEST,
            "digest": str(digests[node.subject]),
            "size": sizes[node.subject],
        }
    data = json.dumps(body).encode()
    return data, str(body["mediaType"])


def expected_kept(
    nodes: list[Node], delete_untagged: bool, digests: dict[int, Digest]
) -> set[int]:
    """The specification: tagged manifests (or all), their children, referrers of kept ones.

    Two nodes with the same bytes in one repository are one manifest: kept together.
    """
    kept = {i for i, n in enumerate(nodes) if n.tag is not None}
    if not delete_untagged:
        kept |= {i for i, n in enumerate(nodes) if n.subject is None}
    changed = True
    while changed:
        changed = False
        kept_digests = {(nodes[i].repo, digests[i]) for i in kept}
        for i, node in enumerate(nodes):
            if i in kept:
                for child in node.children:
                    if child not in kept:
                        kept.add(child)
                        changed = True
            elif (node.repo, digests[i]) in kept_digests or (
                node.subject is not None
                and (node.repo, digests[node.subject]) in kept_digests
            ):
                kept.add(i)
                changed = True
    return kept


async def build(
    repos: int, blob_count: int, nodes: list[Node]
) -> tuple[Registry, dict[int, Digest]]:
    registry = Registry(MemoryDriver(), RegistryOptions(delete_enabled=True))
    for r in range(repos):
        repo = registry.repository(f"repo{r}")
        for b in range(blob_count):
            digest = await registry.blobs.put(blob_bytes(b))
            await repo.blobs.link(digest)
    digests: dict[int, Digest] = {}
    sizes: dict[int, int] = {}
    for index, node in enumerate(nodes):
        data, media_type = manifest_bytes(node, index, digests, sizes)
        manifest = await registry.repository(f"repo{node.repo}").manifests.put(
            data, media_type, node.tag, None
        )
        digests[index] = manifest.digest
        sizes[index] = len(data)
    return registry, digests


async def collect(
    registry: Registry, delete_untagged: bool, dry_run: bool = False, alone: bool = False
) -> None:
    # Everything was written before the collection starts, so no delay is needed.
    await asyncio.sleep(0.01)
    options = GcOptions(dry_run=dry_run, delete_untagged=delete_untagged, delay=0, settle=0)
    await GarbageCollector(registry.driver, options, alone=alone).run()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(), delete_untagged=st.booleans())
def test_nothing_reachable_is_swept_and_nothing_unreachable_survives(
    graph: tuple[int, int, list[Node]], delete_untagged: bool
) -> None:
    asyncio.run(_check_collection(graph, delete_untagged))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(), delete_untagged=st.booleans())
def test_a_collection_alone_sweeps_the_same(
    graph: tuple[int, int, list[Node]], delete_untagged: bool
) -> None:
    # Deleting in place instead of setting aside changes how, not what.
    asyncio.run(_check_collection(graph, delete_untagged, alone=True))


async def _check_collection(
    graph: tuple[int, int, list[Node]], delete_untagged: bool, alone: bool = False
) -> None:
    repos, blob_count, nodes = graph
    registry, digests = await build(repos, blob_count, nodes)
    await collect(registry, delete_untagged, alone=alone)
    kept = expected_kept(nodes, delete_untagged, digests)
    kept_digests = {(nodes[i].repo, digests[i]) for i in kept}
    needed_blobs = {Digest.of(blob_bytes(b)) for i in kept for b in nodes[i].blobs}
    needed_blobs |= {digests[i] for i in kept}
    for index, node in enumerate(nodes):
        repo = registry.repository(f"repo{node.repo}")
        present = await repo.manifests.exists(digests[index])
        # The same bytes can be pushed as two nodes; the digest decides.
        assert present == ((node.repo, digests[index]) in kept_digests), (index, node)
        if present:
            await repo.manifests.get(digests[index])
            for blob in node.blobs:
                assert await repo.blobs.stat(Digest.of(blob_bytes(blob)))
        if node.tag is not None:
            assert await repo.tags.resolve(node.tag) == digests[index]
    for b in range(blob_count):
        digest = Digest.of(blob_bytes(b))
        assert await registry.blobs.exists(digest) == (digest in needed_blobs), b


@settings(max_examples=40, deadline=None)
@given(graph=graphs(), delete_untagged=st.booleans())
def test_dry_run_changes_nothing(graph: tuple[int, int, list[Node]], delete_untagged: bool) -> None:
    async def check() -> None:
        registry, _ = await build(*graph)
        before = [(i.path, i.size) async for i in registry.driver.walk("/docker")]
        await collect(registry, delete_untagged, dry_run=True)
        after = [(i.path, i.size) async for i in registry.driver.walk("/docker")]
        assert before == after

    asyncio.run(check())


class MoveRecorder(DelegatingDriver):
    """Remembers each set-aside: what was asked to move, and whether it moved."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.moves: list[tuple[str, bool]] = []

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        moved = await self.inner.move_unless_touched(source, dest, since)
        self.moves.append((source, moved))
        return moved


def image_manifest(config: Digest, layers: list[Digest]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": str(config), "size": 8},
            "layers": [{"mediaType": LAYER_TYPE, "digest": str(d), "size": 8} for d in layers],
        }
    ).encode()


async def linked_blobs(
    driver: StorageDriver, name: str, count: int
) -> tuple[Registry, Repository, list[Digest]]:
    """A registry on ``driver`` with ``count`` small blobs, each linked into ``name``."""
    registry = Registry(driver, RegistryOptions(delete_enabled=True))
    repo = registry.repository(name)
    blobs = [await registry.blobs.put(f"blob-{n}".encode()) for n in range(count)]
    for digest in blobs:
        await repo.blobs.link(digest)
    return registry, repo, blobs


async def test_link_directories_go_whole_unless_a_fresh_release_marker_is_in_them(
    tmp_path: Path,
) -> None:
    driver = MoveRecorder(FilesystemDriver(str(tmp_path)))
    _, repo, (c1, l1, c2, l2, l3) = await linked_blobs(driver, "links/app", 5)
    await repo.manifests.put(image_manifest(c1, [l1]), OCI_MANIFEST, "v1", None)
    gone = await repo.manifests.put(image_manifest(c2, [l2, l3]), OCI_MANIFEST, None, None)
    await repo.manifests.delete(gone.digest)
    # Older than the collection's hold limit (0.4 s with settle 1), except one marker: a
    # DELETE that released l3 again just now. It says nothing of whether l3 is in use.
    await asyncio.sleep(0.5)
    await driver.write(layout.released_marker(layout.layer_link("links/app", l3)), b"")
    driver.moves.clear()

    report = await GarbageCollector(driver, GcOptions(delay=0, settle=1)).run()

    assert set(report.blobs_deleted) == {gone.digest, c2, l2, l3}
    assert report.layer_links_deleted == 3
    moved = dict(driver.moves)
    assert moved[layout.layer_dir("links/app", l2)] is True
    assert moved[layout.layer_dir("links/app", c2)] is True
    assert layout.layer_link("links/app", l2) not in moved
    # The fresh marker refused the directory; the link went alone and the directory
    # was cleared after it, marker and all.
    assert moved[layout.layer_dir("links/app", l3)] is False
    assert moved[layout.layer_link("links/app", l3)] is True
    for digest in (c2, l2, l3):
        assert not (tmp_path / layout.layer_dir("links/app", digest).lstrip("/")).exists()
    kept = tmp_path / layout.layer_link("links/app", l1).lstrip("/")
    assert kept.exists()
    assert not any((tmp_path / TRASH.lstrip("/")).rglob("*"))


async def test_a_collection_alone_deletes_in_place_without_a_grace_period(
    tmp_path: Path,
) -> None:
    driver = MoveRecorder(FilesystemDriver(str(tmp_path)))
    registry, repo, (c1, l1, c2, l2) = await linked_blobs(driver, "alone/app", 4)
    await repo.manifests.put(image_manifest(c1, [l1]), OCI_MANIFEST, "v1", None)
    gone = await repo.manifests.put(image_manifest(c2, [l2]), OCI_MANIFEST, "v2", None)
    await repo.manifests.delete(gone.digest)
    # Trash an earlier run left behind goes too.
    await driver.write(f"{TRASH}/earlier-run/0/0/1/link", b"sha256:0")
    await asyncio.sleep(0.05)

    # A grace period this long would outlast the test's timeout: none is taken.
    options = GcOptions(delay=0, settle=3600)
    report = await asyncio.wait_for(GarbageCollector(driver, options, alone=True).run(), 60)

    assert set(report.blobs_deleted) == {gone.digest, c2, l2}
    assert report.layer_links_deleted == 2
    assert driver.moves == []
    assert not (tmp_path / TRASH.lstrip("/")).exists()
    for digest in (gone.digest, c2, l2):
        assert not await registry.blobs.exists(digest)
        assert not (tmp_path / layout.layer_dir("alone/app", digest).lstrip("/")).exists()
    assert await repo.tags.resolve("v1")
    for digest in (c1, l1):
        assert await registry.blobs.exists(digest)
        assert await repo.blobs.is_linked(digest)


async def test_a_collection_alone_removes_manifests_before_what_names_them_and_their_blobs(
    tmp_path: Path,
) -> None:
    driver = BatchRecorder(FilesystemDriver(str(tmp_path)))
    registry, repo, (c1, l1, c2, l2) = await linked_blobs(driver, "rounds/app", 4)
    gone = await repo.manifests.put(image_manifest(c2, [l2]), OCI_MANIFEST, "v1", None)
    # The tag moves on: its history still names the first manifest.
    kept = await repo.manifests.put(image_manifest(c1, [l1]), OCI_MANIFEST, "v1", None)
    await asyncio.sleep(0.05)

    options = GcOptions(delay=0, delete_untagged=True)
    report = await GarbageCollector(driver, options, alone=True).run()

    assert report.manifests_deleted == [("rounds/app", gone.digest)]
    assert set(report.blobs_deleted) == {gone.digest, c2, l2}
    assert report.layer_links_deleted == 2
    revision = layout.revision_link("rounds/app", gone.digest).rsplit("/", 1)[0]
    history = layout.tag_index_link("rounds/app", "v1", gone.digest).rsplit("/", 1)[0]
    # One round at a time: a run stopped midway leaves no kept manifest without its
    # blobs, and no link naming a manifest that is still there.
    rounds = [batch for batch in driver.batches if batch]
    assert rounds[0] == [revision]
    assert rounds[1] == [history]
    assert sorted(rounds[2]) == sorted(
        [layout.blob_dir(d) for d in (gone.digest, c2, l2)]
        + [layout.layer_dir("rounds/app", d) for d in (c2, l2)]
    )
    assert len(rounds) == 3
    for path in rounds[0] + rounds[1] + rounds[2]:
        assert not (tmp_path / path.lstrip("/")).exists()
    assert await repo.tags.resolve("v1") == kept.digest
    for digest in (kept.digest, c1, l1):
        assert await registry.blobs.exists(digest)


async def test_a_collection_alone_hands_its_lines_over_a_burst_at_a_time(tmp_path: Path) -> None:
    _, repo, blobs = await linked_blobs(FilesystemDriver(str(tmp_path)), "lines/app", 12)
    gone = await repo.manifests.put(image_manifest(blobs[0], blobs[1:]), OCI_MANIFEST, None, None)
    await repo.manifests.delete(gone.digest)
    await asyncio.sleep(0.05)
    bursts: list[list[str]] = []

    report = await GarbageCollector(
        FilesystemDriver(str(tmp_path)), GcOptions(delay=0), emit=bursts.append, alone=True
    ).run()

    removed = {gone.digest, *blobs}
    assert set(report.blobs_deleted) == removed
    # One burst of what is eligible, one of what was deleted, then the repository left
    # empty: thousands of lines are a few writes, not one (or two, unbuffered) per line.
    eligible, deleting, emptied = bursts
    assert sorted(eligible) == sorted(f"blob eligible for deletion: {d}" for d in removed)
    assert sorted(deleting) == sorted(f"Deleting blob: {layout.blob_dir(d)}" for d in removed)
    assert emptied == ["lines/app: repository has no manifests left; removing it"]
