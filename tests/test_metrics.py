"""Prometheus metrics on the debug address, scraped before and after real requests.

The registry runs as a real server (``dockyard serve``); what it counts is compared
with what the test did to it, including with two worker processes, where the scrape
must add up what both answered.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard.metrics import metric_samples
from tests.support.gc_store import wait_until_quiet
from tests.support.images import (
    OCI_MANIFEST,
    make_image,
    patch_chunk,
    push_blob,
    push_manifest,
    sha256_digest,
    skopeo,
    start_upload,
    with_digest,
    write_oci_layout,
)
from tests.support.servers import ServerProcess, free_port

ServerFactory = Callable[..., ServerProcess]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_config(workers: int, debug_port: int, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "http": {
            "debug": {"addr": f"127.0.0.1:{debug_port}", "prometheus": {"enabled": True}},
        },
        "dockyard": {"workers": workers, "ui": {"enabled": False}},
    }
    config.update(extra)
    return config


def scrape_once(port: int, path: str = "/metrics") -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (name, frozenset(labels.items())): value
        for name, labels, value in metric_samples(response.text)
    }


def scrape(port: int, path: str = "/metrics") -> Samples:
    """A scrape once the request count has stopped moving.

    A request is counted just after its response has gone out, so a client can see the
    response a moment before the count; two equal scrapes 0.1 s apart mean the
    requests this test made have all been counted.
    """
    previous = scrape_once(port, path)
    while True:
        time.sleep(0.1)
        current = scrape_once(port, path)
        if value(current, "registry_http_requests_total") == value(
            previous, "registry_http_requests_total"
        ):
            return current
        previous = current


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def debug_port() -> int:
    return free_port()


def access_pids(server: ServerProcess) -> set[int]:
    pids = set()
    for line in server.log().splitlines():
        if line.startswith("{") and '"http.request.id"' in line:
            pids.add(int(json.loads(line)["pid"]))
    return pids


def test_counters_follow_real_requests_over_two_workers(
    server_factory: ServerFactory, debug_port: int
) -> None:
    server = server_factory(
        config=metrics_config(2, debug_port, log={"formatter": "json", "level": "warn"})
    )
    before = scrape(debug_port)
    repository = "metrics/image"
    image = make_image("metrics", layers=2)
    requests = 0
    # A new connection per request, so that the kernel spreads them over both workers.
    for _ in range(40):
        with httpx.Client(timeout=30) as client:
            assert client.get(server.url + "/v2/").status_code == 200
            requests += 1
        if len(access_pids(server)) == 2:
            break
    base_gets = requests
    with httpx.Client(timeout=30) as client:
        uploaded = 0
        for blob in [image.config, *image.layers]:
            push_blob(client, server.url, repository, blob.data)
            uploaded += len(blob.data)
        assert (
            push_manifest(client, server.url, repository, "v1", image.manifest).status_code == 201
        )
        pulled = client.get(f"{server.url}/v2/{repository}/blobs/{image.layers[0].digest}")
        assert pulled.status_code == 200
        missing = client.get(f"{server.url}/v2/{repository}/manifests/absent")
        assert missing.status_code == 404
        assert client.get(f"{server.url}/v2/{repository}/tags/list").status_code == 200
        assert client.get(f"{server.url}/v2/_catalog").status_code == 200
        head = client.head(f"{server.url}/v2/{repository}/manifests/v1")
        assert head.status_code == 200

    after = scrape(debug_port)
    # Both workers answered, and the scrape (from the metrics process) sums them.
    assert len(access_pids(server)) == 2
    assert delta(before, after, "registry_http_requests_total", handler="base", code="200") == (
        base_gets
    )
    blobs = 1 + len(image.layers)
    # push_blob: POST (202) then PUT (201) per blob.
    assert (
        delta(before, after, "registry_http_requests_total", handler="blob_upload", method="post")
        == blobs
    )
    assert (
        delta(before, after, "registry_http_requests_total", handler="blob_upload", code="201")
        == blobs
    )
    assert (
        delta(
            before,
            after,
            "registry_http_requests_total",
            handler="manifest",
            method="put",
            code="201",
        )
        == 1
    )
    assert delta(before, after, "registry_http_requests_total", handler="manifest", code="404") == 1
    assert (
        delta(before, after, "registry_http_requests_total", handler="manifest", method="head") == 1
    )
    assert delta(before, after, "registry_http_requests_total", handler="tags") == 1
    assert delta(before, after, "registry_http_requests_total", handler="catalog") == 1
    assert delta(before, after, "registry_http_requests_total", handler="blob", code="200") == 1
    # Latency: one observation per request.
    assert (
        delta(before, after, "registry_http_request_duration_seconds_count", handler="base")
        == base_gets
    )
    assert (
        delta(
            before,
            after,
            "registry_http_request_duration_seconds_bucket",
            handler="base",
            le="+Inf",
        )
        == base_gets
    )
    # Bytes: every blob's bytes came in on the upload route; the pulled layer went out
    # (sent with sendfile or streamed) and the manifest came in.
    assert delta(
        before, after, "registry_http_request_size_bytes_total", handler="blob_upload"
    ) == (uploaded)
    assert delta(before, after, "registry_http_response_size_bytes_total", handler="blob") == len(
        image.layers[0].data
    )
    assert delta(before, after, "registry_http_request_size_bytes_total", handler="manifest") == (
        len(image.manifest.data)
    )
    # The storage driver's operations were timed, and nothing is in flight now. Each
    # blob's upload ended with the seal of its last bytes.
    assert (
        delta(
            before,
            after,
            "registry_storage_action_seconds_count",
            driver="filesystem",
            action="writer_seal",
        )
        >= blobs
    )
    assert delta(before, after, "registry_storage_action_seconds_count", action="read") > 0
    assert value(after, "registry_blob_uploads_in_flight") == 0
    assert value(after, "registry_http_in_flight_requests") == 0
    # The missing tag was looked up in storage: a not_found, counted apart from real errors.
    assert delta(before, after, "registry_storage_errors_total", error="not_found") >= 1
    assert value(after, "registry_storage_errors_total", error="storage") == 0


def test_manifest_cache_hits_and_misses(server_factory: ServerFactory, debug_port: int) -> None:
    server = server_factory(config=metrics_config(1, debug_port))
    image = make_image("cache", layers=1)
    with httpx.Client(timeout=30) as client:
        for blob in [image.config, *image.layers]:
            push_blob(client, server.url, "metrics/cache", blob.data)
        pushed = push_manifest(client, server.url, "metrics/cache", "v1", image.manifest)
        assert pushed.status_code == 201
        before = scrape(debug_port)
        url = f"{server.url}/v2/metrics/cache/manifests/{image.manifest.digest}"
        for _ in range(3):
            got = client.get(url, headers={"Accept": OCI_MANIFEST})
            assert got.status_code == 200
            assert got.content == image.manifest.data
    after = scrape(debug_port)
    hits = delta(before, after, "registry_cache_requests_total", cache="manifests", result="hit")
    misses = delta(before, after, "registry_cache_requests_total", cache="manifests", result="miss")
    # One worker, three reads of one digest: at most the first one misses.
    assert hits >= 2
    assert hits + misses >= 3


def test_chunked_upload_counts_bytes_and_in_flight_settles(
    server_factory: ServerFactory, debug_port: int
) -> None:
    server = server_factory(config=metrics_config(2, debug_port))
    data = random.Random("chunks").randbytes(300_000)
    before = scrape(debug_port)
    with httpx.Client(timeout=30) as client:
        url = start_upload(client, server.url, "metrics/chunks")
        url = patch_chunk(client, server.url, url, data[:100_000], 0)
        url = patch_chunk(client, server.url, url, data[100_000:], 100_000)
        done = client.put(with_digest(url, sha256_digest(data)))
        assert done.status_code == 201, done.text
    after = scrape(debug_port)
    assert (
        delta(before, after, "registry_http_requests_total", handler="blob_upload", method="patch")
        == 2
    )
    assert delta(
        before, after, "registry_http_request_size_bytes_total", handler="blob_upload"
    ) == (len(data))
    assert value(after, "registry_blob_uploads_in_flight") == 0


def test_bytes_out_of_large_and_ranged_pulls(
    server_factory: ServerFactory, debug_port: int
) -> None:
    server = server_factory(config=metrics_config(1, debug_port))
    data = random.Random("large").randbytes(3 << 20)
    with httpx.Client(timeout=60) as client:
        digest = push_blob(client, server.url, "metrics/large", data)
        before = scrape(debug_port)
        url = f"{server.url}/v2/metrics/large/blobs/{digest}"
        whole = client.get(url)
        assert whole.content == data
        ranged = client.get(url, headers={"Range": "bytes=1000-1999"})
        assert ranged.status_code == 206
        assert ranged.content == data[1000:2000]
        assert client.head(url).status_code == 200
    after = scrape(debug_port)
    assert delta(before, after, "registry_http_response_size_bytes_total", handler="blob") == (
        len(data) + 1000
    )
    assert delta(before, after, "registry_http_requests_total", handler="blob", code="206") == 1


def test_single_worker_serves_its_own_metrics(
    server_factory: ServerFactory, debug_port: int
) -> None:
    server = server_factory(
        config=metrics_config(
            1,
            debug_port,
            http={
                "debug": {
                    "addr": f"127.0.0.1:{debug_port}",
                    "prometheus": {"enabled": True, "path": "/custom/metrics"},
                }
            },
        )
    )
    before = scrape(debug_port, "/custom/metrics")
    assert httpx.get(server.url + "/v2/", timeout=10).status_code == 200
    assert httpx.get(server.url + "/v2/nope/tags/list", timeout=10).status_code == 404
    after = scrape(debug_port, "/custom/metrics")
    assert delta(before, after, "registry_http_requests_total", handler="base", code="200") == 1
    assert delta(before, after, "registry_http_requests_total", handler="tags", code="404") == 1
    # Only the metrics path is served on the debug address, and the registry's address
    # does not serve the metrics.
    assert httpx.get(f"http://127.0.0.1:{debug_port}/metrics", timeout=10).status_code == 404
    assert httpx.get(server.url + "/custom/metrics", timeout=10).status_code == 404


def test_routes_are_a_fixed_set(server_factory: ServerFactory, debug_port: int) -> None:
    server = server_factory(
        config=metrics_config(1, debug_port, dockyard={"workers": 1, "ui": {"enabled": True}})
    )
    with httpx.Client(timeout=30, follow_redirects=False) as client:
        for number in range(5):
            client.get(f"{server.url}/no/such/page/{number}")
            client.get(f"{server.url}/v2/repo{number}/unknown/thing")
        client.get(f"{server.url}/ui/")
        client.get(f"{server.url}/debug/health")
        client.get(f"{server.url}/v2/_dockyard/gc")
        client.get(f"{server.url}/v2/a/referrers/sha256:{'0' * 64}")
    samples = scrape(debug_port)
    handlers = {
        dict(labels)["handler"]
        for name, labels in samples
        if name == "registry_http_requests_total"
    }
    assert handlers <= {
        "base",
        "blob",
        "blob_upload",
        "manifest",
        "tags",
        "catalog",
        "referrers",
        "extension",
        "ui",
        "auth",
        "health",
        "other",
    }
    assert {"other", "ui", "health", "extension", "referrers"} <= handlers
    assert value(samples, "registry_http_requests_total", handler="other") == 10


def test_gc_runs_and_bytes_freed(server_factory: ServerFactory, debug_port: int) -> None:
    server = server_factory(
        config=metrics_config(
            2,
            debug_port,
            dockyard={
                "workers": 2,
                "ui": {"enabled": False},
                "gc": {"delay": "0s", "settle": "1s"},
            },
        )
    )
    image = make_image("gc-metrics", layers=2)
    with httpx.Client(timeout=60) as client:
        for blob in [image.config, *image.layers]:
            push_blob(client, server.url, "metrics/gc", blob.data)
        pushed = push_manifest(client, server.url, "metrics/gc", "v1", image.manifest)
        assert pushed.status_code == 201
        deleted = client.delete(f"{server.url}/v2/metrics/gc/manifests/{image.manifest.digest}")
        assert deleted.status_code == 202
        # Blob data touched in the last 0.4 s (settle 1s) may belong to a push: wait.
        wait_until_quiet(server.root / "docker" / "registry" / "v2", 0.5)
        before = scrape(debug_port)
        dry = client.post(f"{server.url}/v2/_dockyard/gc?dryRun=true")
        assert dry.status_code == 200, dry.text
        real = client.post(f"{server.url}/v2/_dockyard/gc")
        assert real.status_code == 200, real.text
        report = real.json()
    after = scrape(debug_port)
    assert report["bytesFreed"] > 0
    assert delta(before, after, "registry_gc_runs_total", outcome="dry_run") == 1
    assert delta(before, after, "registry_gc_runs_total", outcome="deleted") == 1
    assert delta(before, after, "registry_gc_freed_bytes_total") == report["bytesFreed"]
    assert delta(before, after, "registry_gc_deleted_blobs_total") == len(report["blobsDeleted"])


def test_no_debug_listener_without_prometheus(
    server_factory: ServerFactory, debug_port: int
) -> None:
    server = server_factory(
        config={"http": {"debug": {"addr": f"127.0.0.1:{debug_port}"}}, "dockyard": {"workers": 1}}
    )
    assert httpx.get(server.url + "/v2/", timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{debug_port}/metrics", timeout=5)
    assert re.search(r"http\.debug\.addr is set without", server.log())


def test_counts_survive_a_worker_that_dies(server_factory: ServerFactory, debug_port: int) -> None:
    server = server_factory(
        config=metrics_config(2, debug_port, log={"formatter": "json", "level": "warn"})
    )
    for _ in range(40):
        with httpx.Client(timeout=30) as client:
            assert client.get(server.url + "/v2/").status_code == 200
        if len(access_pids(server)) == 2:
            break
    pids = access_pids(server)
    assert len(pids) == 2
    before = scrape(debug_port)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    # The parent replaces it; the registry keeps answering meanwhile (the other worker).
    deadline = time.monotonic() + 30
    while True:
        with httpx.Client(timeout=30) as client:
            assert client.get(server.url + "/v2/").status_code == 200
        if len(access_pids(server) - pids) >= 1 or time.monotonic() > deadline:
            break
    assert access_pids(server) - pids, "no replacement worker answered"
    after = scrape(debug_port)
    # What the dead worker counted is still in the sum: counters never go backwards.
    assert value(after, "registry_http_requests_total") > value(
        before, "registry_http_requests_total"
    )
    assert value(after, "registry_http_in_flight_requests") == 0


def test_a_skopeo_push_and_pull_are_counted(
    server_factory: ServerFactory, debug_port: int, tmp_path: Path
) -> None:
    server = server_factory(config=metrics_config(2, debug_port))
    image = make_image("metrics-skopeo", layers=3)
    source = write_oci_layout(tmp_path / "source", {"v1": image})
    before = scrape(debug_port)
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{source}:v1",
        f"docker://{server.host}/metrics/skopeo:v1",
    )
    pushed = scrape(debug_port)
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{server.host}/metrics/skopeo:v1",
        f"oci:{tmp_path / 'out'}:v1",
    )
    pulled = scrape(debug_port)

    blobs = len(image.blobs)
    total = sum(blob.size for blob in image.blobs)
    assert (
        delta(
            before,
            pushed,
            "registry_http_requests_total",
            handler="manifest",
            method="put",
            code="201",
        )
        == 1
    )
    assert (
        delta(before, pushed, "registry_http_requests_total", handler="blob_upload", code="201")
        == blobs
    )
    assert (
        delta(before, pushed, "registry_http_request_size_bytes_total", handler="blob_upload")
        == total
    )
    assert delta(before, pushed, "registry_http_request_size_bytes_total", handler="manifest") == (
        image.manifest.size
    )
    assert (
        delta(
            pushed, pulled, "registry_http_requests_total", handler="blob", method="get", code="200"
        )
        == blobs
    )
    assert delta(pushed, pulled, "registry_http_response_size_bytes_total", handler="blob") == total
    assert delta(pushed, pulled, "registry_http_requests_total", handler="blob_upload") == 0
    assert value(pulled, "registry_blob_uploads_in_flight") == 0
