"""Garbage collection on one replica while the others take pushes through nginx.

The collector runs in one process (the endpoint of one replica, or ``dockyard
garbage-collect`` with the replicas' configuration) and knows nothing of the requests
the other replicas are serving: everything that makes a collection safe against a
concurrent push (holds, times, the collection's status) has to live in the bucket.
Clients push as docker does (HEAD each blob, upload what is missing, PUT the manifest,
push again on ``MANIFEST_BLOB_UNKNOWN``); a 5xx or a lost blob is a failure.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.replicas.clients import assert_pulls, push_skopeo
from tests.replicas.harness import Cluster
from tests.support.gc_images import Layer, image_with_layers, make_layer
from tests.support.gc_push import PushStats, push_retrying
from tests.support.images import ALL_MANIFEST_TYPES, Image, sha256_digest

PUSHERS = 2
# Each pusher pushes at least this many images, and goes on until the collection ends.
MINIMUM_PUSHES = 3


@dataclass
class Pusher:
    """One client pushing new images through nginx until told to stop."""

    number: int
    base_url: str
    base: Layer
    pushed: dict[str, Image] = field(default_factory=dict)
    # (start, end) of each push on the monotonic clock: to show the pushes overlapped
    # the collection, not to measure anything.
    spans: list[tuple[float, float]] = field(default_factory=list)
    stats: PushStats = field(default_factory=PushStats)
    errors: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def repository(self) -> str:
        return f"gc/new-{self.number}"

    def run(self, stop: threading.Event) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                serial = 0
                while not stop.is_set() or serial < MINIMUM_PUSHES:
                    name = f"replicas-gc-{self.number}-{serial}"
                    image = image_with_layers(name, [self.base, make_layer(name)])
                    tag = f"n{serial}"
                    began = time.monotonic()
                    self.started.set()
                    self.stats.add(push_retrying(client, self.base_url, self.repository, tag, image))
                    self.spans.append((began, time.monotonic()))
                    self.pushed[tag] = image
                    serial += 1
        except BaseException as error:  # noqa: BLE001 - every failure must reach the test
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            self.started.set()


def pull_http(client: httpx.Client, url: str, repository: str, tag: str, image: Image) -> None:
    """The manifest by tag and every blob it names, checked against their digests."""
    response = client.get(
        f"{url}/v2/{repository}/manifests/{tag}", headers={"Accept": ALL_MANIFEST_TYPES}
    )
    assert response.status_code == 200, (url, repository, tag, response.status_code, response.text)
    assert response.content == image.manifest.data, (url, repository, tag)
    for blob in image.blobs:
        got = client.get(f"{url}/v2/{repository}/blobs/{blob.digest}", follow_redirects=True)
        assert got.status_code == 200, (url, repository, blob.digest, got.status_code, got.text)
        assert sha256_digest(got.content) == blob.digest, (url, repository, blob.digest)


def collect(cluster: Cluster, how: str) -> str:
    """One real collection on the first replica; returns what it reported."""
    collector = cluster.replicas[0]
    if how == "endpoint":
        response = httpx.post(
            f"{collector.url}/v2/_dockyard/gc", params={"dryRun": "false"}, timeout=240
        )
        assert response.status_code == 200, (response.status_code, response.text)
        summary: str = response.json()["summary"]
        return summary
    result = subprocess.run(
        [sys.executable, "-m", "dockyard", "garbage-collect", str(collector.config_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout[-2000:]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["endpoint", "command"])
def test_collection_on_one_replica_while_pushes_go_to_the_others(
    cluster: Cluster, tmp_path: Path, how: str
) -> None:
    # Both images and every image pushed later share a base layer.
    base = make_layer("replicas-gc-base", file_size=8192)
    kept = image_with_layers("replicas-gc-kept", [base, make_layer("replicas-gc-kept")])
    dropped = image_with_layers("replicas-gc-dropped", [base, make_layer("replicas-gc-dropped")])
    unique = dropped.all_digests - kept.all_digests
    assert len(unique) == 3  # manifest, config, own layer
    push_skopeo(cluster.host, kept, "gc/kept:v1", tmp_path / "push-kept")
    push_skopeo(cluster.host, dropped, "gc/dropped:v1", tmp_path / "push-dropped")
    assert all(cluster.blob_keys(digest) for digest in dropped.all_digests)
    # Every replica looks the deleted image's own blobs up first: the shared descriptor
    # cache knows them, and must forget them when the collection removes them.
    own_blobs = unique - {dropped.digest}
    with httpx.Client(timeout=30) as client:
        for replica in cluster.replicas:
            for digest in own_blobs:
                head = client.head(f"{replica.url}/v2/gc/dropped/blobs/{digest}")
                assert head.status_code == 200, (replica.number, digest)
    # Deleted through another replica than the one that collects.
    deleted = httpx.delete(
        f"{cluster.replicas[1].url}/v2/gc/dropped/manifests/{dropped.digest}", timeout=30
    )
    assert deleted.status_code == 202, deleted.text
    # settle is 3s: blobs written in the last 1.2 s are left for the next collection.
    time.sleep(1.3)

    stop = threading.Event()
    pushers = [Pusher(number, cluster.url, base) for number in range(PUSHERS)]
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in pushers]
    for thread in threads:
        thread.start()
    for pusher in pushers:
        assert pusher.started.wait(60)
    began = time.monotonic()
    try:
        report = collect(cluster, how)
    finally:
        ended = time.monotonic()
        stop.set()
        for thread in threads:
            thread.join(240)
    assert not any(thread.is_alive() for thread in threads), "a pusher did not finish"
    errors = [error for pusher in pushers for error in pusher.errors]
    assert errors == [], "\n".join(errors) + "\n" + cluster.logs()
    totals = PushStats()
    for pusher in pushers:
        totals.add(pusher.stats)
    print(f"\ncollection ({how}): {report.strip().splitlines()[-1] if report.strip() else ''}")
    print(f"pushes: {totals}")
    # A push racing the collection gets 201 or a refusal it may retry, never a 5xx.
    assert totals.server_errors == [], totals.server_errors
    # The pushes did run while the collection did.
    overlapping = [
        span for pusher in pushers for span in pusher.spans if span[0] < ended and span[1] > began
    ]
    assert overlapping, "no push overlapped the collection"

    # What only the deleted image used is gone from the bucket; the rest is there.
    for digest in unique:
        assert cluster.blob_keys(digest) == set(), digest
    for digest in kept.all_digests:
        assert cluster.blob_keys(digest), digest

    # Every image pushed before or during the collection pulls whole from every replica.
    with httpx.Client(timeout=60) as client:
        for replica in cluster.replicas:
            pull_http(client, replica.url, "gc/kept", "v1", kept)
            for pusher in pushers:
                for tag, image in pusher.pushed.items():
                    pull_http(client, replica.url, pusher.repository, tag, image)
            gone = client.get(f"{replica.url}/v2/gc/dropped/manifests/{dropped.digest}")
            assert gone.status_code == 404, replica.number
            for digest in own_blobs:
                for method in ("HEAD", "GET"):
                    answer = client.request(method, f"{replica.url}/v2/gc/dropped/blobs/{digest}")
                    assert answer.status_code == 404, (replica.number, method, digest)
    # And with skopeo, the kept image and each pusher's first and last, on every replica.
    for replica in cluster.replicas:
        workdir = tmp_path / f"pull-{replica.number}"
        assert_pulls(replica.host, kept, "gc/kept:v1", workdir / "kept")
        for pusher in pushers:
            for tag in {min(pusher.pushed), max(pusher.pushed)}:
                reference = f"{pusher.repository}:{tag}"
                out = workdir / f"new-{pusher.number}-{tag}"
                assert_pulls(replica.host, pusher.pushed[tag], reference, out)
