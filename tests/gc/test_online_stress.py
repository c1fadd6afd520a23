"""Collections back to back while clients push, move tags and delete: nothing is lost.

Distribution's collector must run with the registry stopped because a push racing it
can lose layers; Dockyard promises it cannot. Here four clients push small images into
three repositories as docker does (HEAD each layer, upload or mount only what is
missing, PUT the manifest), drawing layers from a shared pool so that a layer is
often unreferenced one moment and pushed again the next; they move their tags, push
multi-arch indexes and delete manifests. Meanwhile another thread runs real
collections through ``POST /v2/_dockyard/gc`` with ``delay: 0s`` so that they do delete.

A manifest may be refused with ``MANIFEST_BLOB_UNKNOWN`` (a layer was collected after
the client's HEAD) and pushed again; that is what a client does, and it is counted.
What must never happen: a manifest the registry accepted that then misses a blob. Each
client pulls every manifest right after pushing it and again at random later; at the
end every tag and every manifest not deleted is pulled, digests checked, and a final
collection with nothing in flight must leave exactly the blobs those manifests use.

``DOCKYARD_STRESS_SECONDS`` (default 25; the whole test takes about 40 s) sets how long
the load runs; ``DOCKYARD_STRESS_SEED`` replays another sequence of actions.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.gc_images import error_code, get_manifest, index_of
from tests.support.gc_push import PushFailed, PushStats, push_retrying
from tests.support.gc_store import V2, stored_blobs, wait_until_quiet
from tests.support.images import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    Image,
    ImageIndex,
    serialise,
    sha256_digest,
)
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]
Artifact = Image | ImageIndex

SECONDS = float(os.environ.get("DOCKYARD_STRESS_SECONDS", "25"))
SEED = int(os.environ.get("DOCKYARD_STRESS_SEED", "20200421"))
CLIENTS = 4
REPOSITORIES = ("stress/r0", "stress/r1", "stress/r2")
# Large enough that, with each client keeping a handful of manifests, most pool layers
# are unreferenced at any moment and get collected, then pushed again.
POOL_SIZE = 40
LIVE_PER_CLIENT = 5


def layer_pool() -> list[Blob]:
    """Layers every client draws from: shared between images, repositories and clients.

    The registry does not look inside layers, so random bytes stand in for tar+gzip.
    """
    rng = random.Random(SEED)
    return [Blob(OCI_LAYER, rng.randbytes(rng.randint(1024, 12 * 1024))) for _ in range(POOL_SIZE)]


def new_image(
    client_id: int, serial: int, layers: list[Blob], architecture: str = "amd64"
) -> Image:
    """A unique image (its config names the client and serial) over shared layers."""
    config = Blob(
        OCI_CONFIG,
        serialise(
            {
                "architecture": architecture,
                "os": "linux",
                "config": {"Labels": {"client": str(client_id), "serial": str(serial)}},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
            }
        ),
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return Image(
        config=config,
        layers=tuple(layers),
        manifest=Blob(OCI_MANIFEST, serialise(manifest)),
        platform={"architecture": architecture, "os": "linux"},
    )


class Broken(AssertionError):
    """Content of a manifest the registry accepted is missing or wrong."""


def pull(
    client: httpx.Client, base_url: str, repository: str, artifact: Artifact, via: str | None = None
) -> None:
    """GET the manifest (by ``via`` or its digest) and every blob, checking each digest."""
    response = get_manifest(client, base_url, repository, via or artifact.digest)
    if response.status_code != 200 or response.content != artifact.manifest.data:
        raise Broken(
            f"{repository}@{via or artifact.digest}: {response.status_code} {response.text[:200]}"
        )
    images = artifact.images if isinstance(artifact, ImageIndex) else (artifact,)
    for image in images:
        if image is not artifact:
            pull(client, base_url, repository, image)
            continue
        for blob in image.blobs:
            fetched = client.get(f"{base_url}/v2/{repository}/blobs/{blob.digest}")
            if fetched.status_code != 200 or sha256_digest(fetched.content) != blob.digest:
                raise Broken(
                    f"{repository}@{image.digest} blob {blob.digest}: {fetched.status_code}"
                    f" ({error_code(fetched)})"
                )


@dataclass
class ClientModel:
    """What one client has made true; clients never touch each other's tags or manifests."""

    live: dict[tuple[str, str], Artifact] = field(default_factory=dict)  # (repo, digest)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, tag) → digest
    deleted: set[tuple[str, str]] = field(default_factory=set)
    stats: PushStats = field(default_factory=PushStats)
    # Requests on accepted content that failed, then worked once a collection settled.
    transient: list[str] = field(default_factory=list)
    # Accepted content that never came back: what a collection must never cause.
    lost: list[str] = field(default_factory=list)
    deletes: int = 0
    indexes: int = 0
    verifications: int = 0

    def pushed(self, repository: str, artifact: Artifact, tag: str | None) -> None:
        self.live[(repository, artifact.digest)] = artifact
        if isinstance(artifact, ImageIndex):
            for image in artifact.images:
                self.live[(repository, image.digest)] = image
        if tag is not None:
            self.tags[(repository, tag)] = artifact.digest

    def deletable(self) -> list[tuple[str, str]]:
        """Manifests this client may delete: not a platform image of a live index."""
        children = {
            (repository, image.digest)
            for (repository, _), artifact in self.live.items()
            if isinstance(artifact, ImageIndex)
            for image in artifact.images
        }
        return [key for key in self.live if key not in children]


SETTLE = 1.0


def checked_pull(
    client: httpx.Client,
    base_url: str,
    repository: str,
    artifact: Artifact,
    via: str | None,
    model: ClientModel,
) -> None:
    """Pull content the registry accepted; tell a lasting loss from a passing absence.

    A failure is retried once after a collection's settle time (plus margin): if the
    content is back, a collection had it set aside (invisible, not lost); if not, it is
    lost. Both are recorded and judged at the end, so one run reports every kind.
    """
    model.verifications += 1
    try:
        pull(client, base_url, repository, artifact, via)
    except Broken as first:
        failed_at = time.monotonic()
        time.sleep(2 * SETTLE + 0.5)
        try:
            pull(client, base_url, repository, artifact, via)
        except Broken as second:
            model.lost.append(f"pull {second} (first: {first})")
            return
        model.transient.append(f"pull {first} (back within {time.monotonic() - failed_at:.1f}s)")


def checked_delete(
    client: httpx.Client, base_url: str, repository: str, digest: str, model: ClientModel
) -> None:
    """DELETE one of this client's manifests; 404 is retried after settle, as for pulls."""
    url = f"{base_url}/v2/{repository}/manifests/{digest}"
    response = client.delete(url)
    if response.status_code == 404:
        first = f"DELETE {repository}@{digest}: 404 {error_code(response)}"
        time.sleep(2 * SETTLE + 0.5)
        response = client.delete(url)
        if response.status_code == 202:
            model.transient.append(f"{first} (202 after settle)")
        elif response.status_code == 404:
            model.lost.append(f"{first}, still 404 after settle")
    if response.status_code not in (202, 404):
        raise PushFailed(
            f"DELETE {repository}@{digest}: {response.status_code} {response.text[:300]}"
        )
    model.live.pop((repository, digest))
    model.deleted.add((repository, digest))
    model.tags = {key: d for key, d in model.tags.items() if key[0] != repository or d != digest}
    model.deletes += 1


def client_loop(
    client_id: int,
    base_url: str,
    pool: list[Blob],
    deadline: float,
    stop: threading.Event,
    model: ClientModel,
) -> None:
    rng = random.Random(SEED * 31 + client_id)
    serial = 0
    others = [f"stress/r{i}" for i in range(len(REPOSITORIES))]
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < deadline and not stop.is_set():
            repository = rng.choice(REPOSITORIES)
            mount_from = (
                rng.choice([r for r in others if r != repository]) if rng.random() < 0.3 else None
            )
            # Deleting gets likelier as the client holds more, so its set stays small.
            delete_chance = min(0.9, 0.2 + 0.15 * max(0, len(model.live) - LIVE_PER_CLIENT))
            action = rng.random()
            if action < delete_chance:
                candidates = model.deletable()
                if not candidates:
                    continue
                checked_delete(client, base_url, *rng.choice(candidates), model)
                continue
            action = rng.random()
            if action < 0.7:
                serial += 1
                # The first pool layer is everyone's base; the rest vary.
                layers = [pool[0], *rng.sample(pool[1:], rng.randint(1, 2))]
                image = new_image(client_id, serial, layers)
                tag = f"c{client_id}-t{rng.randrange(3)}"  # moves the tag off its last image
                model.stats.add(push_retrying(client, base_url, repository, tag, image, mount_from))
                model.pushed(repository, image, tag)
                checked_pull(client, base_url, repository, image, None, model)
            elif action < 0.85:
                serial += 1
                images = [
                    new_image(client_id, serial, [pool[0], rng.choice(pool[1:])], "amd64"),
                    new_image(client_id, serial, [rng.choice(pool[1:])], "arm64"),
                ]
                index = index_of(images)
                tag = f"c{client_id}-multi"
                model.stats.add(push_retrying(client, base_url, repository, tag, index, mount_from))
                model.pushed(repository, index, tag)
                model.indexes += 1
                checked_pull(client, base_url, repository, index, tag, model)
            elif model.live:
                # An earlier manifest, possibly untagged now, must still pull whole.
                (repository, _), artifact = rng.choice(list(model.live.items()))
                checked_pull(client, base_url, repository, artifact, None, model)


@dataclass
class CollectorTally:
    runs: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    pool_layers_collected: int = 0
    manifests_deleted: int = 0
    layer_links_deleted: int = 0
    repositories_removed: int = 0


def collector_loop(
    base_url: str,
    pool_digests: set[str],
    deadline: float,
    stop: threading.Event,
    tally: CollectorTally,
) -> None:
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < deadline and not stop.is_set():
            response = client.post(f"{base_url}/v2/_dockyard/gc", params={"dryRun": "false"})
            if response.status_code != 200:
                raise AssertionError(
                    f"POST /v2/_dockyard/gc: {response.status_code} {response.text}"
                )
            report: dict[str, Any] = response.json()
            tally.runs += 1
            tally.blobs_deleted += len(report["blobsDeleted"])
            tally.bytes_freed += report["bytesFreed"]
            tally.pool_layers_collected += len(pool_digests & set(report["blobsDeleted"]))
            tally.manifests_deleted += len(report["manifestsDeleted"])
            tally.layer_links_deleted += report["layerLinksDeleted"]
            tally.repositories_removed += len(report["repositoriesRemoved"])


def run_threads(targets: list[Callable[[], None]], stop: threading.Event) -> list[str]:
    """Run every target in a thread; the first failure stops the others. Returns failures."""
    failures: list[str] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - every failure must reach the test
            failures.append(f"{type(error).__name__}: {error}")
            stop.set()

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 120)
        assert not thread.is_alive(), "a stress thread hung"
    return failures


def verify_everything(client: httpx.Client, base_url: str, models: list[ClientModel]) -> None:
    """Every tag lists and resolves; every manifest not deleted pulls whole; deleted ones
    are gone. Collects every failure, so the message says how much was lost."""
    tags_by_repository: dict[str, set[str]] = {repository: set() for repository in REPOSITORIES}
    for model in models:
        for repository, tag in model.tags:
            tags_by_repository[repository].add(tag)
    broken: list[str] = []
    for repository, expected in tags_by_repository.items():
        response = client.get(f"{base_url}/v2/{repository}/tags/list")
        listed = set(response.json().get("tags") or []) if response.status_code == 200 else set()
        if listed != expected:
            broken.append(f"{repository} tags differ: {sorted(listed ^ expected)}")
    checks = 0
    for model in models:
        pulls: list[tuple[str, Artifact, str | None]] = [
            (repository, model.live[(repository, digest)], tag)
            for (repository, tag), digest in model.tags.items()
        ]
        pulls += [(repository, artifact, None) for (repository, _), artifact in model.live.items()]
        for repository, artifact, via in pulls:
            checks += 1
            try:
                pull(client, base_url, repository, artifact, via=via)
            except Broken as error:
                broken.append(str(error))
        for repository, digest in model.deleted:
            response = get_manifest(client, base_url, repository, digest)
            if (response.status_code, error_code(response)) != (404, "MANIFEST_UNKNOWN"):
                broken.append(f"deleted {repository}@{digest} answers {response.status_code}")
    assert broken == [], f"{len(broken)} of {checks} pulls broken:\n" + "\n".join(broken[:10])


def test_collections_back_to_back_while_clients_push_move_tags_and_delete(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(
        "dockyard", config={"dockyard": {"gc": {"delay": "0s", "settle": f"{SETTLE}s"}}}
    )
    pool = layer_pool()
    pool_digests = {layer.digest for layer in pool}
    models = [ClientModel() for _ in range(CLIENTS)]
    tally = CollectorTally()
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + SECONDS

    def clients(i: int) -> Callable[[], None]:
        return lambda: client_loop(i, server.url, pool, deadline, stop, models[i])

    failures = run_threads(
        [clients(i) for i in range(CLIENTS)]
        + [lambda: collector_loop(server.url, pool_digests, deadline, stop, tally)],
        stop,
    )
    elapsed = time.monotonic() - started

    totals = PushStats()
    for model in models:
        totals.add(model.stats)
    summary = {
        "seconds": round(elapsed, 1),
        "seed": SEED,
        "collections": tally.runs,
        "blobs_deleted_by_collections": tally.blobs_deleted,
        "bytes_freed": tally.bytes_freed,
        "pool_layers_collected_then_pushed_again": tally.pool_layers_collected,
        "layer_links_deleted": tally.layer_links_deleted,
        "manifest_pushes": totals.pushes,
        "indexes": sum(m.indexes for m in models),
        "blobs_uploaded": totals.uploads,
        "blobs_skipped_after_head": totals.skipped,
        "blobs_mounted": totals.mounted,
        "pushes_retried_manifest_blob_unknown": totals.retried_blob_unknown,
        "pushes_retried_unavailable": totals.retried_unavailable,
        "manifests_deleted_by_clients": sum(m.deletes for m in models),
        "pulls_verified_during_run": sum(m.verifications for m in models),
        "requests_failed_then_back_after_settle": sum(len(m.transient) for m in models),
        "server_errors_on_push": len(totals.server_errors),
        "accepted_content_lost": sum(len(m.lost) for m in models),
    }
    print("\nonline GC stress:", json.dumps(summary, indent=1))
    assert not failures, "\n".join(failures) + "\n" + server.log()[-4000:]
    # The collector's promise first: nothing accepted is ever lost.
    lost = [line for model in models for line in model.lost]
    assert lost == [], f"{len(lost)} accepted manifests lost content:\n" + "\n".join(lost[:10])

    with httpx.Client(timeout=60) as client:
        verify_everything(client, server.url, models)

        # Nothing in flight now: one more collection must keep every live manifest whole
        # and leave exactly the blobs they use (so the collections also miss nothing).
        wait_until_quiet(server.root / V2, 0.5)
        response = client.post(f"{server.url}/v2/_dockyard/gc", params={"dryRun": "false"})
        assert response.status_code == 200, response.text
        verify_everything(client, server.url, models)
    used: set[str] = set()
    for model in models:
        for artifact in model.live.values():
            used |= artifact.all_digests
    assert set(stored_blobs(server.root)) == used
    print("final store:", len(used), "blobs, all referenced")

    # The run must actually have raced: collections that deleted content, layers of the
    # shared pool collected and pushed again, and enough pushes and deletes.
    assert tally.runs >= max(3, int(SECONDS / 6)), summary
    assert tally.blobs_deleted > 0 and tally.pool_layers_collected > 0, summary
    assert totals.pushes >= 10 * CLIENTS and sum(m.deletes for m in models) >= 2 * CLIENTS, summary

    # A push racing a collection gets 201 or a refusal it can retry, never a 500.
    assert totals.server_errors == [], f"{len(totals.server_errors)} server errors:\n" + "\n".join(
        totals.server_errors[:5]
    )
    # Read after write: a manifest the registry accepted pulls (and deletes) at once, not
    # only after a collection has put back what it had set aside.
    transient = [line for model in models for line in model.transient]
    assert transient == [], (
        f"{len(transient)} requests on accepted content failed for a while:\n"
        + "\n".join(transient[:10])
    )
