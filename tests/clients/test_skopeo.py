"""skopeo against a running registry: what `docker push`/`pull` users rely on.

skopeo speaks the same protocol through the same Go library (containers/image) as
podman and buildah, so a round trip here is a round trip for those clients. Plain HTTP
(``--*-tls-verify=false``) because the fixture serves without TLS.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support.images import (
    ALL_MANIFEST_TYPES,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    Blob,
    make_image,
    make_index,
    read_dir_layout,
    read_oci_layout,
    sha256_digest,
    skopeo,
    skopeo_fails,
    write_dir_layout,
    write_oci_layout,
)
from tests.support.servers import ServerProcess

PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"
REMOTE = "--tls-verify=false"


def assert_served_verbatim(registry: ServerProcess, reference: str, expected: Blob) -> None:
    """The registry returns the pushed manifest byte for byte, under its digest.

    ``reference`` is ``repo:tag`` or ``repo@digest``. Checked three ways: skopeo's raw
    bytes, skopeo's reported digest, and the HTTP headers a client trusts.
    """
    raw = skopeo("inspect", "--raw", REMOTE, f"docker://{registry.host}/{reference}")
    assert raw == expected.data
    assert sha256_digest(raw) == expected.digest
    inspected = json.loads(skopeo("inspect", REMOTE, f"docker://{registry.host}/{reference}"))
    assert inspected["Digest"] == expected.digest

    repository, _, ref = reference.replace("@", ":", 1).partition(":")
    response = httpx.get(
        f"{registry.url}/v2/{repository}/manifests/{ref}",
        headers={"Accept": ALL_MANIFEST_TYPES},
    )
    assert response.status_code == 200
    assert response.content == expected.data
    assert response.headers["Docker-Content-Digest"] == expected.digest
    assert response.headers["Content-Type"] == expected.media_type


def test_push_inspect_pull_single_image(registry: ServerProcess, tmp_path: Path) -> None:
    image = make_image("single", layers=3)
    source = write_oci_layout(tmp_path / "src", {"v1": image})

    skopeo("copy", PUSH, f"oci:{source}:v1", f"docker://{registry.host}/skopeo/single:v1")

    assert_served_verbatim(registry, "skopeo/single:v1", image.manifest)
    assert_served_verbatim(registry, f"skopeo/single@{image.digest}", image.manifest)

    skopeo("copy", PULL, f"docker://{registry.host}/skopeo/single:v1", f"oci:{tmp_path / 'out'}:v1")
    pulled = read_oci_layout(tmp_path / "out")
    assert pulled.tags == {"v1": image.digest}
    assert set(pulled.blobs) == image.all_digests
    assert pulled.blobs[image.digest] == image.manifest.data
    for blob in image.blobs:
        assert pulled.blobs[blob.digest] == blob.data


def test_multi_arch_copy_all_preserves_index(registry: ServerProcess, tmp_path: Path) -> None:
    index = make_index("multi")
    source = write_oci_layout(tmp_path / "src", {"1.0": index})

    skopeo("copy", "--all", PUSH, f"oci:{source}:1.0", f"docker://{registry.host}/skopeo/multi:1.0")

    assert_served_verbatim(registry, "skopeo/multi:1.0", index.manifest)
    for image in index.images:
        assert_served_verbatim(registry, f"skopeo/multi@{image.digest}", image.manifest)

    skopeo(
        "copy", "--all", PULL,
        f"docker://{registry.host}/skopeo/multi:1.0", f"oci:{tmp_path / 'all'}:1.0",
    )
    pulled = read_oci_layout(tmp_path / "all")
    assert pulled.tags == {"1.0": index.digest}
    assert set(pulled.blobs) == index.all_digests

    # A single-platform pull, as `docker pull` on an arm64 host does: the index is
    # resolved to the arm64 manifest, unchanged.
    arm64 = next(i for i in index.images if i.platform["architecture"] == "arm64")
    skopeo(
        "--override-os", "linux", "--override-arch", "arm64", "copy", PULL,
        f"docker://{registry.host}/skopeo/multi:1.0", f"oci:{tmp_path / 'arm64'}:1.0",
    )
    pulled = read_oci_layout(tmp_path / "arm64")
    assert pulled.tags == {"1.0": arm64.digest}
    assert set(pulled.blobs) == arm64.all_digests


def test_copy_between_repositories(registry: ServerProcess, tmp_path: Path) -> None:
    image = make_image("between")
    source = write_oci_layout(tmp_path / "src", {"v1": image})
    skopeo("copy", PUSH, f"oci:{source}:v1", f"docker://{registry.host}/team-a/app:v1")

    # skopeo knows the layers came from team-a/app on the same registry and asks for a
    # cross-repository mount instead of uploading them again.
    skopeo(
        "copy", PULL, PUSH,
        f"docker://{registry.host}/team-a/app:v1", f"docker://{registry.host}/team-b/app:v1",
    )
    assert_served_verbatim(registry, "team-b/app:v1", image.manifest)
    for blob in image.blobs:
        head = httpx.head(f"{registry.url}/v2/team-b/app/blobs/{blob.digest}")
        assert head.status_code == 200
        assert head.headers["Docker-Content-Digest"] == blob.digest
        assert int(head.headers["Content-Length"]) == blob.size

    # The mount itself, as the protocol defines it: 201 with the blob's location, no
    # upload session (skopeo silently falls back to uploading if this fails).
    layer = image.layers[0]
    response = httpx.post(
        f"{registry.url}/v2/team-c/app/blobs/uploads/",
        params={"mount": layer.digest, "from": "team-a/app"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == layer.digest
    assert response.headers["Location"].endswith(f"/v2/team-c/app/blobs/{layer.digest}")
    fetched = httpx.get(f"{registry.url}/v2/team-c/app/blobs/{layer.digest}")
    assert fetched.status_code == 200
    assert fetched.content == layer.data


def test_list_tags(registry: ServerProcess, tmp_path: Path) -> None:
    first, second = make_image("tags-1"), make_image("tags-2")
    source = write_oci_layout(tmp_path / "src", {"first": first, "second": second})
    pushes = {"1.0": "first", "1.1": "second", "latest": "second", "stable": "first"}
    for tag, ref in pushes.items():
        skopeo("copy", PUSH, f"oci:{source}:{ref}", f"docker://{registry.host}/skopeo/tags:{tag}")

    listed = json.loads(skopeo("list-tags", REMOTE, f"docker://{registry.host}/skopeo/tags"))
    assert listed["Repository"] == f"{registry.host}/skopeo/tags"
    assert sorted(listed["Tags"]) == sorted(pushes)
    assert_served_verbatim(registry, "skopeo/tags:latest", second.manifest)
    assert_served_verbatim(registry, "skopeo/tags:stable", first.manifest)


def test_delete_then_inspect_fails(registry: ServerProcess, tmp_path: Path) -> None:
    doomed, kept = make_image("delete-doomed"), make_image("delete-kept")
    source = write_oci_layout(tmp_path / "src", {"doomed": doomed, "kept": kept})
    skopeo("copy", PUSH, f"oci:{source}:doomed", f"docker://{registry.host}/skopeo/del:doomed")
    skopeo("copy", PUSH, f"oci:{source}:kept", f"docker://{registry.host}/skopeo/del:kept")

    # skopeo resolves the tag and deletes the manifest by digest, as the seed's
    # `curl -X DELETE /v2/<name>/manifests/<digest>` does.
    skopeo("delete", REMOTE, f"docker://{registry.host}/skopeo/del:doomed")

    error = skopeo_fails("inspect", "--raw", REMOTE, f"docker://{registry.host}/skopeo/del:doomed")
    assert "manifest unknown" in error
    error = skopeo_fails(
        "inspect", "--raw", REMOTE, f"docker://{registry.host}/skopeo/del@{doomed.digest}"
    )
    assert "manifest unknown" in error
    assert_served_verbatim(registry, "skopeo/del:kept", kept.manifest)
    listed = json.loads(skopeo("list-tags", REMOTE, f"docker://{registry.host}/skopeo/del"))
    assert listed["Tags"] == ["kept"]


def test_convert_to_docker_schema2_on_push(registry: ServerProcess, tmp_path: Path) -> None:
    image = make_image("v2s2")
    source = write_oci_layout(tmp_path / "src", {"v1": image})

    skopeo("copy", "--format", "v2s2", PUSH, f"oci:{source}:v1", f"docker://{registry.host}/skopeo/v2s2:v1")

    raw = skopeo("inspect", "--raw", REMOTE, f"docker://{registry.host}/skopeo/v2s2:v1")
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    # The conversion rewrites media types only: the blobs are the same bytes.
    assert manifest["config"] == {**image.config.descriptor(), "mediaType": DOCKER_CONFIG}
    assert manifest["layers"] == [{**l.descriptor(), "mediaType": DOCKER_LAYER} for l in image.layers]
    converted = Blob(DOCKER_MANIFEST, raw)
    assert_served_verbatim(registry, "skopeo/v2s2:v1", converted)

    skopeo("copy", PULL, f"docker://{registry.host}/skopeo/v2s2:v1", f"dir:{tmp_path / 'out'}")
    pulled = read_dir_layout(tmp_path / "out")
    assert pulled.tags == {"": converted.digest}
    assert set(pulled.blobs) == {converted.digest, *(b.digest for b in image.blobs)}


def test_docker_schema2_image_and_list_verbatim(registry: ServerProcess, tmp_path: Path) -> None:
    image = make_image("docker-image", fmt="docker")
    manifest_list = make_index("docker-list", fmt="docker")
    write_dir_layout(tmp_path / "image", image)
    write_dir_layout(tmp_path / "list", manifest_list)

    skopeo("copy", PUSH, f"dir:{tmp_path / 'image'}", f"docker://{registry.host}/skopeo/docker:image")
    skopeo("copy", "--all", PUSH, f"dir:{tmp_path / 'list'}", f"docker://{registry.host}/skopeo/docker:list")

    assert_served_verbatim(registry, "skopeo/docker:image", image.manifest)
    assert_served_verbatim(registry, "skopeo/docker:list", manifest_list.manifest)
    for child in manifest_list.images:
        assert_served_verbatim(registry, f"skopeo/docker@{child.digest}", child.manifest)

    skopeo("copy", "--all", PULL, f"docker://{registry.host}/skopeo/docker:list", f"dir:{tmp_path / 'out'}")
    pulled = read_dir_layout(tmp_path / "out")
    assert pulled.tags == {"": manifest_list.digest}
    assert set(pulled.blobs) == manifest_list.all_digests
