"""The on-disk layout is Distribution's, so either server can serve the other's data."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api_helpers import (
    ServerFactory,
    get_manifest,
    make_blob,
    push_blob,
    push_image,
    push_manifest,
    registry_v2,
    target_kind,
)
from tests.support.servers import ServerProcess


def link(path: Path) -> str:
    return path.read_text()


def test_push_writes_distribution_layout(api: httpx.Client, registry: ServerProcess) -> None:
    image = push_image(api, "layout/app", "v1")
    v2 = registry_v2(registry.root)
    repo = v2 / "repositories" / "layout" / "app"
    for blob in (image.config, *image.layers):
        data = v2 / "blobs" / "sha256" / blob.hex[:2] / blob.hex / "data"
        assert data.read_bytes() == blob.data
        # Link files hold the digest, without a trailing newline, as Distribution writes them.
        assert link(repo / "_layers" / "sha256" / blob.hex / "link") == blob.digest
    manifest = image.manifest
    stored = v2 / "blobs" / "sha256" / manifest.hex[:2] / manifest.hex / "data"
    assert stored.read_bytes() == manifest.body
    assert (
        link(repo / "_manifests" / "revisions" / "sha256" / manifest.hex / "link")
        == manifest.digest
    )
    tag = repo / "_manifests" / "tags" / "v1"
    assert link(tag / "current" / "link") == manifest.digest
    assert link(tag / "index" / "sha256" / manifest.hex / "link") == manifest.digest


def test_retag_keeps_the_tag_history(api: httpx.Client, registry: ServerProcess) -> None:
    first = push_image(api, "layout/retag", "t").manifest
    second = push_image(api, "layout/retag", "other").manifest
    push_manifest(api, "layout/retag", "t", second)
    tag = (
        registry_v2(registry.root)
        / "repositories"
        / "layout"
        / "retag"
        / "_manifests"
        / "tags"
        / "t"
    )
    assert link(tag / "current" / "link") == second.digest
    index = tag / "index" / "sha256"
    assert {p.name for p in index.iterdir()} == {first.hex, second.hex}


def test_mount_links_the_blob_into_the_target(api: httpx.Client, registry: ServerProcess) -> None:
    blob = make_blob(100)
    push_blob(api, "layout/source", blob)
    response = api.post(
        "/v2/layout/target/blobs/uploads/", params={"mount": blob.digest, "from": "layout/source"}
    )
    assert response.status_code == 201
    target = registry_v2(registry.root) / "repositories" / "layout" / "target"
    assert link(target / "_layers" / "sha256" / blob.hex / "link") == blob.digest
    # One copy of the content, shared.
    assert len(list((registry_v2(registry.root) / "blobs").rglob("data"))) == 1


def test_manifest_delete_removes_its_revision_link(
    api: httpx.Client, registry: ServerProcess
) -> None:
    image = push_image(api, "layout/delete", "v1")
    assert api.delete(f"/v2/layout/delete/manifests/{image.manifest.digest}").status_code == 202
    repo = registry_v2(registry.root) / "repositories" / "layout" / "delete"
    assert not (repo / "_manifests" / "revisions" / "sha256" / image.manifest.hex / "link").exists()
    assert not (repo / "_manifests" / "tags" / "v1" / "current" / "link").exists()


def test_serves_a_data_directory_written_by_distribution(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    writer = server_factory("distribution", name="writer")
    with httpx.Client(base_url=writer.url, timeout=30.0) as client:
        image = push_image(client, "interop/from-distribution", "v1")
        docker = push_image(client, "interop/from-distribution", "docker", docker=True)
    writer.stop()
    reader = server_factory(target_kind(), root=writer.root, name="reader")
    with httpx.Client(base_url=reader.url, timeout=30.0) as client:
        for tag, pushed in (("v1", image), ("docker", docker)):
            response = get_manifest(client, "interop/from-distribution", tag)
            assert response.status_code == 200
            assert response.content == pushed.manifest.body
            assert response.headers["Content-Type"] == pushed.manifest.media_type
            for blob in (pushed.config, *pushed.layers):
                fetched = client.get(f"/v2/interop/from-distribution/blobs/{blob.digest}")
                assert fetched.content == blob.data
        tags = client.get("/v2/interop/from-distribution/tags/list").json()["tags"]
        assert sorted(tags) == ["docker", "v1"]
        assert client.get("/v2/_catalog").json() == {"repositories": ["interop/from-distribution"]}


def test_distribution_serves_what_the_registry_wrote(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    writer = server_factory(target_kind(), name="writer")
    with httpx.Client(base_url=writer.url, timeout=30.0) as client:
        image = push_image(client, "interop/to-distribution", "v1")
        blob = make_blob(3000)
        location = client.post("/v2/interop/to-distribution/blobs/uploads/").headers["Location"]
        chunk = client.patch(location, content=blob.data[:1000], headers={"Content-Range": "0-999"})
        separator = "&" if "?" in chunk.headers["Location"] else "?"
        done = client.put(
            chunk.headers["Location"] + f"{separator}digest={blob.digest}", content=blob.data[1000:]
        )
        assert done.status_code == 201
    writer.stop()
    reader = server_factory("distribution", root=writer.root, name="reader")
    with httpx.Client(base_url=reader.url, timeout=30.0) as client:
        response = get_manifest(client, "interop/to-distribution", "v1")
        assert response.status_code == 200
        assert response.content == image.manifest.body
        for pushed in (image.config, *image.layers, blob):
            fetched = client.get(f"/v2/interop/to-distribution/blobs/{pushed.digest}")
            assert fetched.status_code == 200
            assert fetched.content == pushed.data
        assert client.get("/v2/interop/to-distribution/tags/list").json()["tags"] == ["v1"]
