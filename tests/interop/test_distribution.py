"""Dockyard and Distribution 2.8 (Debian's docker-registry) serve each other's data.

The promise: point Dockyard at an existing ``registry:2`` data directory and every
image pulls with the same digests; point Distribution back at a directory Dockyard
wrote and it still works, garbage collection included. Each test writes a data
directory with one server, stops it, and reads everything back with the other.

``DOCKYARD_TEST_TARGET=distribution`` stands Distribution in for Dockyard, which turns
these into Distribution-to-Distribution runs: the check that the harness itself
expects only what the reference implementation does.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dockyard.registry.hashstate import sha256_states
from tests.support.images import (
    ALL_MANIFEST_TYPES,
    MANIFEST_TYPES,
    Artifact,
    ImageIndex,
    iter_blobs,
    make_image,
    make_index,
    patch_chunk,
    push_blob,
    push_blob_chunked,
    push_manifest,
    read_dir_layout,
    read_oci_layout,
    sha256_digest,
    skopeo,
    start_upload,
    with_digest,
    write_dir_layout,
    write_oci_layout,
)
from tests.support.servers import DISTRIBUTION_BINARY, ServerProcess

ServerFactory = Callable[..., ServerProcess]

DOCKYARD = os.environ.get("DOCKYARD_TEST_TARGET", "dockyard")
PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"
REMOTE = "--tls-verify=false"


@dataclass
class Contents:
    """What was pushed, to be found again: ``repo:tag`` → artifact, and deletions."""

    tagged: dict[str, Artifact] = field(default_factory=dict)
    deleted: dict[str, Artifact] = field(default_factory=dict)

    @property
    def repositories(self) -> set[str]:
        return {ref.rpartition(":")[0] for ref in self.tagged}

    def tags(self, repository: str) -> set[str]:
        return {ref.rpartition(":")[2] for ref in self.tagged if ref.rpartition(":")[0] == repository}


def populate(server: ServerProcess, workdir: Path, prefix: str, contents: Contents | None = None) -> Contents:
    """Push the kinds of content a real registry holds, the way clients push them."""
    contents = contents or Contents()
    workdir.mkdir(parents=True, exist_ok=True)
    single = make_image(f"{prefix}-single", layers=3)
    multi = make_index(f"{prefix}-multi")
    docker_image = make_image(f"{prefix}-docker", fmt="docker")
    docker_list = make_index(f"{prefix}-docker-list", fmt="docker")
    doomed = make_image(f"{prefix}-doomed")
    layout = write_oci_layout(workdir / "oci", {"single": single, "multi": multi, "doomed": doomed})
    write_dir_layout(workdir / "docker-image", docker_image)
    write_dir_layout(workdir / "docker-list", docker_list)

    def copy(source: str, ref: str, *options: str) -> None:
        skopeo("copy", *options, PUSH, source, f"docker://{server.host}/{ref}")

    pushes: list[tuple[str, str, Artifact, tuple[str, ...]]] = [
        (f"oci:{layout}:single", f"{prefix}/single:v1", single, ()),
        (f"oci:{layout}:single", f"{prefix}/single:latest", single, ()),
        (f"oci:{layout}:single", f"{prefix}/deep/nested/name:v1", single, ()),
        (f"oci:{layout}:multi", f"{prefix}/multi:1.0", multi, ("--all",)),
        (f"dir:{workdir / 'docker-image'}", f"{prefix}/docker:image", docker_image, ()),
        (f"dir:{workdir / 'docker-list'}", f"{prefix}/docker:list", docker_list, ("--all",)),
        (f"oci:{layout}:doomed", f"{prefix}/doomed:gone", doomed, ()),
    ]
    for source, ref, artifact, options in pushes:
        copy(source, ref, *options)
        contents.tagged[ref] = artifact

    # A layer of a few MiB uploaded in 1 MiB PATCH chunks: skopeo always sends a blob
    # as one streamed PATCH, and chunk boundaries are what leave hash states and
    # partial data in ``_uploads`` for the other implementation to make sense of.
    chunked = make_image(f"{prefix}-chunked", layers=1, files_per_layer=3, file_size=1_000_000)
    repository = f"{prefix}/chunked"
    with httpx.Client(timeout=60) as client:
        push_blob_chunked(client, server.url, repository, chunked.layers[0].data, 1024 * 1024)
        push_blob(client, server.url, repository, chunked.config.data)
        response = push_manifest(client, server.url, repository, "v1", chunked.manifest)
        assert response.status_code == 201, response.text
    contents.tagged[f"{repository}:v1"] = chunked

    # Deleted through the API as in the seed's `curl -X DELETE`: gone for both servers.
    response = httpx.delete(f"{server.url}/v2/{prefix}/doomed/manifests/{doomed.digest}")
    assert response.status_code == 202, response.text
    contents.deleted[f"{prefix}/doomed:gone"] = contents.tagged.pop(f"{prefix}/doomed:gone")
    return contents


def verify(server: ServerProcess, workdir: Path, contents: Contents) -> None:
    """Everything pushed is served intact; what was deleted stays deleted."""
    client = httpx.Client(timeout=60)
    with client:
        for ref, artifact in contents.tagged.items():
            repository, _, tag = ref.rpartition(":")
            for reference in (tag, artifact.digest):
                response = client.get(
                    f"{server.url}/v2/{repository}/manifests/{reference}",
                    headers={"Accept": ALL_MANIFEST_TYPES},
                )
                assert response.status_code == 200, (ref, reference, response.text)
                assert response.content == artifact.manifest.data, ref
                assert response.headers["Docker-Content-Digest"] == artifact.digest
                assert response.headers["Content-Type"] == artifact.manifest.media_type
            # Every blob and child manifest, byte for byte, through this repository.
            for blob in iter_blobs(artifact):
                kind = "manifests" if blob.media_type in MANIFEST_TYPES else "blobs"
                response = client.get(
                    f"{server.url}/v2/{repository}/{kind}/{blob.digest}",
                    headers={"Accept": ALL_MANIFEST_TYPES},
                )
                assert response.status_code == 200, (ref, kind, blob.digest, response.text)
                assert sha256_digest(response.content) == blob.digest

        for repository in contents.repositories:
            response = client.get(f"{server.url}/v2/{repository}/tags/list")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["name"] == repository
            assert set(body["tags"]) == contents.tags(repository)

        response = client.get(f"{server.url}/v2/_catalog")
        assert response.status_code == 200, response.text
        catalog = set(response.json()["repositories"])
        # A repository whose only manifest was deleted may or may not still be listed
        # (Distribution keeps listing it); every live one must be.
        deleted_repositories = {ref.rpartition(":")[0] for ref in contents.deleted}
        assert contents.repositories <= catalog
        assert catalog <= contents.repositories | deleted_repositories

        for ref, artifact in contents.deleted.items():
            repository, _, tag = ref.rpartition(":")
            for reference in (tag, artifact.digest):
                response = client.get(
                    f"{server.url}/v2/{repository}/manifests/{reference}",
                    headers={"Accept": ALL_MANIFEST_TYPES},
                )
                assert response.status_code == 404, (ref, reference, response.status_code)

    # And pulled by a real client into a local layout, every blob checked.
    workdir.mkdir(parents=True, exist_ok=True)
    for index, (ref, artifact) in enumerate(sorted(contents.tagged.items())):
        destination = workdir / f"pull-{index}"
        options = ("--all",) if isinstance(artifact, ImageIndex) else ()
        if artifact.manifest.media_type.startswith("application/vnd.oci"):
            skopeo("copy", *options, PULL, f"docker://{server.host}/{ref}", f"oci:{destination}:t")
            pulled = read_oci_layout(destination)
            assert pulled.tags == {"t": artifact.digest}, ref
        else:
            skopeo("copy", *options, PULL, f"docker://{server.host}/{ref}", f"dir:{destination}")
            pulled = read_dir_layout(destination)
            assert pulled.tags == {"": artifact.digest}, ref
        assert set(pulled.blobs) == artifact.all_digests, ref

    for repository in contents.repositories:
        listed = json.loads(skopeo("list-tags", REMOTE, f"docker://{server.host}/{repository}"))
        assert set(listed["Tags"]) == contents.tags(repository)


def test_dockyard_serves_distribution_data(server_factory: ServerFactory, tmp_path: Path) -> None:
    distribution = server_factory("distribution")
    contents = populate(distribution, tmp_path / "push-1", "from-distribution")
    verify(distribution, tmp_path / "check-0", contents)
    distribution.stop()

    dockyard = server_factory(DOCKYARD, root=distribution.root)
    verify(dockyard, tmp_path / "check-1", contents)

    # Dockyard goes on writing into the same directory; Distribution must still read
    # all of it, old and new, afterwards (a rollback must be possible).
    populate(dockyard, tmp_path / "push-2", "from-dockyard", contents)
    verify(dockyard, tmp_path / "check-2", contents)
    dockyard.stop()

    distribution.start()
    verify(distribution, tmp_path / "check-3", contents)


def test_distribution_serves_dockyard_data(server_factory: ServerFactory, tmp_path: Path) -> None:
    dockyard = server_factory(DOCKYARD)
    contents = populate(dockyard, tmp_path / "push", "from-dockyard")
    verify(dockyard, tmp_path / "check-0", contents)
    dockyard.stop()

    distribution = server_factory("distribution", root=dockyard.root)
    verify(distribution, tmp_path / "check-1", contents)

    # Distribution's own offline garbage collection, run on what Dockyard wrote, must
    # find every reference (it reads the same link files) and delete nothing live;
    # the deleted image's blobs are what it may reclaim.
    distribution.stop()
    blobs_before = blob_files(dockyard.root)
    result = subprocess.run(
        [DISTRIBUTION_BINARY, "garbage-collect", str(distribution.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    removed = blobs_before - blob_files(dockyard.root)
    doomed = next(iter(contents.deleted.values()))
    assert doomed.manifest.digest in removed
    live = set().union(*(artifact.all_digests for artifact in contents.tagged.values()))
    assert not removed & live

    distribution.start()
    verify(distribution, tmp_path / "check-2", contents)
    distribution.stop()
    dockyard.start()
    verify(dockyard, tmp_path / "check-3", contents)


def blob_files(root: Path) -> set[str]:
    """Digests of every blob in the shared blob store of a data directory."""
    blobs = root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{path.parent.name}" for path in blobs.glob("*/*/data")}


def test_an_upload_distribution_began_goes_on_from_its_saved_hash(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    # An upload in flight when registry:2 is swapped for Dockyard. Distribution saved its
    # running hash after the chunk (Go's encoding, hashstates/sha256/<offset>): Dockyard's
    # own states are those bytes for the same data, and it goes on from Distribution's.
    states = sha256_states()
    assert states is not None
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 11)
    cut = 2 * 1024 * 1024 + 5
    shared = {"http": {"secret": "one-secret-for-both"}}  # Distribution signs upload URLs
    distribution = server_factory("distribution", config=shared)
    with httpx.Client() as client:
        url = start_upload(client, distribution.url, "handover/app")
        url = patch_chunk(client, distribution.url, url, data[:cut], 0)
    distribution.stop()
    (saved,) = distribution.root.glob(
        "docker/registry/v2/repositories/handover/app/_uploads/*/hashstates/sha256"
    )
    ours = states.new()
    ours.update(data[:cut])
    assert (saved / str(cut)).read_bytes() == ours.state()

    dockyard = server_factory(DOCKYARD, config=shared, root=distribution.root)
    with httpx.Client() as client:
        url = patch_chunk(client, dockyard.url, url.replace(distribution.url, dockyard.url), data[cut:], cut)
        ours.update(data[cut:])
        assert (saved / str(len(data))).read_bytes() == ours.state()
        response = client.put(with_digest(url, sha256_digest(data)))
        assert response.status_code == 201, response.text
        pulled = client.get(f"{dockyard.url}/v2/handover/app/blobs/{sha256_digest(data)}")
        assert pulled.content == data
