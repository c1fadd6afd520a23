"""What the repository details extension says about cached content, end to end.

An upstream Dockyard and a mirror of it on loopback; images are pulled through the
mirror with skopeo and plain HTTP, then ``GET /v2/_dockyard/repositories/<name>`` and
the usage report are read as the web UI reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.images import OCI_MANIFEST, make_image, skopeo, write_oci_layout
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]


def details(server: ServerProcess, name: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v2/_dockyard/repositories/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def tag_entry(body: dict[str, Any], tag: str) -> dict[str, Any]:
    entries = [entry for entry in body["tags"] if entry["tag"] == tag]
    assert len(entries) == 1, body
    entry: dict[str, Any] = entries[0]
    return entry


def test_details_report_the_upstream_and_fetch_pull_and_expiry_times(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    upstream = server_factory("dockyard", name="upstream")
    mirror = server_factory(
        "dockyard",
        config={
            "dockyard": {
                "proxy": [
                    {"prefix": "hub", "remoteurl": upstream.url, "ttl": "1h"},
                    {"prefix": "fresh", "remoteurl": upstream.url, "ttl": "0s"},
                ]
            }
        },
        name="mirror",
    )
    image, local = make_image("cached"), make_image("local")
    source = write_oci_layout(tmp_path / "src", {"cached": image, "local": local})
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
        f"docker://{mirror.host}/elsewhere/app:v1",
    )

    before = time.time() - 1  # file times may be a little coarser than the clock
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{mirror.host}/hub/team/app:v1",
        f"oci:{tmp_path / 'out'}:v",
    )
    after = time.time() + 1

    body = details(mirror, "hub/team/app")
    assert body["cache"] == {
        "upstream": upstream.url,
        "prefix": "hub",
        "repository": "team/app",
        "ttl": 3600,
    }
    entry = tag_entry(body, "v1")
    assert entry["digest"] == image.digest
    assert before <= entry["cachedAt"] <= after
    assert before <= entry["lastPulledAt"] <= after
    assert entry["cachedAt"] <= entry["lastPulledAt"] + 1
    assert entry["expiresAt"] == max(entry["cachedAt"], entry["lastPulledAt"]) + 3600

    # A later pull moves the last pull and the expiry; the fetch time stays.
    time.sleep(1.2)
    response = httpx.get(
        f"{mirror.url}/v2/hub/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST}
    )
    assert response.status_code == 200
    again = tag_entry(details(mirror, "hub/team/app"), "v1")
    assert again["cachedAt"] == entry["cachedAt"]
    assert again["lastPulledAt"] > entry["lastPulledAt"]
    assert again["expiresAt"] == again["lastPulledAt"] + 3600

    # ttl 0: re-validated on every pull and never expires.
    response = httpx.get(
        f"{mirror.url}/v2/fresh/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST}
    )
    assert response.status_code == 200
    body = details(mirror, "fresh/team/app")
    assert body["cache"]["ttl"] is None
    assert body["cache"]["prefix"] == "fresh"
    entry = tag_entry(body, "v1")
    assert entry["cachedAt"] > 0
    assert entry["expiresAt"] is None

    # A local repository on the same mirror, and the upstream itself: no cache fields.
    for server, name in ((mirror, "elsewhere/app"), (upstream, "team/app")):
        body = details(server, name)
        assert "cache" not in body
        entry = tag_entry(body, "v1")
        assert not {"cachedAt", "lastPulledAt", "expiresAt"} & set(entry)

    # The usage report (the web UI's repository list) marks the mirrored repositories.
    response = httpx.get(f"{mirror.url}/v2/_dockyard/usage")
    assert response.status_code == 200
    usage = {repo["name"]: repo for repo in response.json()["repositories"]}
    assert usage["hub/team/app"]["cache"]["upstream"] == upstream.url
    assert usage["fresh/team/app"]["cache"]["prefix"] == "fresh"
    assert "cache" not in usage["elsewhere/app"]
