"""Dockyard's collector against Distribution's, on the very same store.

Distribution 2.8 writes the store (pushed with skopeo, as users do: repositories sharing
a base layer, a tag moved, a tag removed by hand, a manifest deleted, a manifest pushed
by digest only, multi-arch images, an index deleted), then both collectors dry-run on
byte-identical copies. Each one's choice of blobs is compared with what an independent
model of the store says it should be, and with the other's.

Where they differ, it is Dockyard being deliberately safer: with ``--delete-untagged``
Distribution 2.8 deletes the platform manifests of a tagged multi-arch index (they
carry no tag of their own) and the layers only they use (distribution#3004), so the
index no longer pulls. The last test shows that on real runs, side by side.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.gc_images import (
    error_code,
    get_manifest,
    image_with_layers,
    index_of,
    make_layer,
)
from tests.support.gc_store import (
    V2,
    copy_store,
    distribution_gc,
    dockyard_gc,
    stored_blobs,
    wait_until_quiet,
)
from tests.support.images import (
    Image,
    ImageIndex,
    push_artifact,
    read_dir_layout,
    read_oci_layout,
    skopeo,
    skopeo_fails,
    write_dir_layout,
    write_oci_layout,
)
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]
Artifact = Image | ImageIndex

PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"


@dataclass
class StoreModel:
    """What the store holds, kept by the test as it pushes: the expected answer."""

    revisions: dict[str, set[str]] = field(default_factory=dict)  # repository → manifests
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # repository → tag → digest
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # digest → what it is
    blobs: set[str] = field(default_factory=set)  # every blob ever pushed

    def pushed(self, repository: str, artifact: Artifact, tag: str | None) -> None:
        revisions = self.revisions.setdefault(repository, set())
        self.tags.setdefault(repository, {})
        revisions.add(artifact.digest)
        self.artifacts[artifact.digest] = artifact
        self.blobs |= artifact.all_digests
        if isinstance(artifact, ImageIndex):
            for image in artifact.images:
                revisions.add(image.digest)
                self.artifacts[image.digest] = image
        if tag is not None:
            self.tags[repository][tag] = artifact.digest

    def deleted(self, repository: str, digest: str) -> None:
        """A manifest DELETE: the revision and every tag on it go."""
        self.revisions[repository].discard(digest)
        self.tags[repository] = {t: d for t, d in self.tags[repository].items() if d != digest}

    def untagged(self, repository: str, tag: str) -> None:
        del self.tags[repository][tag]

    def own_blobs(self, digest: str) -> set[str]:
        """The manifest's own content, config and layers (not its children's)."""
        artifact = self.artifacts[digest]
        if isinstance(artifact, ImageIndex):
            return {digest}
        return {digest} | {blob.digest for blob in artifact.blobs}

    def children(self, digest: str) -> set[str]:
        artifact = self.artifacts[digest]
        return (
            {image.digest for image in artifact.images}
            if isinstance(artifact, ImageIndex)
            else set()
        )

    def untagged_revisions(self) -> set[str]:
        return {
            digest
            for repository, revisions in self.revisions.items()
            for digest in revisions
            if digest not in self.tags[repository].values()
        }

    # What each collector should keep, from its documented mark phase.

    def marked_keeping_untagged(self) -> set[str]:
        """Both collectors without -m: every manifest revision and what it references."""
        marked: set[str] = set()
        for revisions in self.revisions.values():
            for digest in revisions:
                marked |= self.own_blobs(digest) | self.children(digest)
        return marked

    def marked_distribution_untagged(self) -> set[str]:
        """Distribution 2.8 with -m: tagged manifests; an index's children as mere blobs."""
        marked: set[str] = set()
        for tags in self.tags.values():
            for digest in tags.values():
                marked |= self.own_blobs(digest) | self.children(digest)
        return marked

    def dockyard_kept_manifests(self) -> set[str]:
        """Dockyard with -m: tagged manifests and, recursively, their children."""
        kept: set[str] = set()
        for repository, tags in self.tags.items():
            pending = list(tags.values())
            while pending:
                digest = pending.pop()
                if digest not in kept:
                    kept.add(digest)
                    pending.extend(self.children(digest) & self.revisions[repository])
        return kept

    def marked_dockyard_untagged(self) -> set[str]:
        marked: set[str] = set()
        for digest in self.dockyard_kept_manifests():
            marked |= self.own_blobs(digest)
        return marked


@dataclass
class BuiltStore:
    """A stopped Distribution store and the model of what it holds."""

    server: ServerProcess
    model: StoreModel
    multi: ImageIndex
    docker_list: ImageIndex


def build_store_with_distribution(server_factory: ServerFactory, workdir: Path) -> BuiltStore:
    server = server_factory("distribution")
    model = StoreModel()
    base = make_layer("x-base", file_size=8192)
    base_arm = make_layer("x-base-arm64", file_size=8192)
    edge_shared = make_layer("x-edge-shared")
    images: dict[str, Image] = {
        "v1": image_with_layers("app-v1", [base, make_layer("x-app-1")]),
        "v2": image_with_layers("app-v2", [base, make_layer("x-app-2")]),
        "old": image_with_layers("app-old", [base, make_layer("x-app-0")]),
        "gone": image_with_layers("app-gone", [make_layer("x-gone-1"), make_layer("x-gone-2")]),
        "edge1": image_with_layers("app-edge1", [edge_shared, make_layer("x-edge-1")]),
        "edge2": image_with_layers("app-edge2", [edge_shared, make_layer("x-edge-2")]),
        "lib1": image_with_layers("lib-1", [base, make_layer("x-lib-1")]),
    }
    by_digest = image_with_layers("lib-2", [base, make_layer("x-lib-2")])
    # The amd64 image of the tagged index shares the base with team/app and team/lib;
    # the arm64 one has a base of its own. Only the latter goes with #3004.
    multi = index_of(
        [
            image_with_layers("multi-amd64", [base, make_layer("x-multi-amd64")]),
            image_with_layers(
                "multi-arm64", [base_arm, make_layer("x-multi-arm64")], architecture="arm64"
            ),
        ]
    )
    docker_list = index_of(
        [
            image_with_layers("dl-amd64", [make_layer("x-dl-amd64")], fmt="docker"),
            image_with_layers(
                "dl-arm64", [make_layer("x-dl-arm64")], fmt="docker", architecture="arm64"
            ),
        ],
        fmt="docker",
    )
    old_index = index_of(
        [
            image_with_layers("old-amd64", [make_layer("x-old-amd64")]),
            image_with_layers("old-arm64", [make_layer("x-old-arm64")], architecture="arm64"),
        ]
    )
    layout = write_oci_layout(workdir / "oci", {**images, "multi": multi, "old-index": old_index})
    write_dir_layout(workdir / "docker-list", docker_list)

    def push(ref: str, repository: str, tag: str, *options: str) -> None:
        skopeo(
            "copy",
            *options,
            PUSH,
            f"oci:{layout}:{ref}",
            f"docker://{server.host}/{repository}:{tag}",
        )
        artifact = multi if ref == "multi" else old_index if ref == "old-index" else images[ref]
        model.pushed(repository, artifact, tag)

    push("v1", "team/app", "v1")
    push("v1", "team/app", "latest")
    push("v2", "team/app", "v2")
    push("v2", "team/app", "latest")  # latest moves from v1 to v2; v1 keeps its own tag
    push("old", "team/app", "old")
    push("gone", "team/app", "gone")
    push("edge1", "team/app", "edge")
    push("edge2", "team/app", "edge")  # edge1 is left untagged; it shares a layer with edge2
    push("lib1", "team/lib", "1.0")
    push("multi", "multi", "1.0", "--all")
    push("old-index", "multi", "0.9", "--all")
    skopeo(
        "copy",
        "--all",
        PUSH,
        f"dir:{workdir / 'docker-list'}",
        f"docker://{server.host}/multi:docker",
    )
    model.pushed("multi", docker_list, "docker")
    with httpx.Client(timeout=30) as client:
        # A manifest pushed by digest only, as `crane`/`oras` and CI pipelines do.
        push_artifact(client, server.url, "team/lib", by_digest.digest, by_digest)
        model.pushed("team/lib", by_digest, None)
        for repository, digest in (
            ("team/app", images["gone"].digest),
            ("multi", old_index.digest),
        ):
            response = client.delete(f"{server.url}/v2/{repository}/manifests/{digest}")
            assert response.status_code == 202, response.text
            model.deleted(repository, digest)
    server.stop()
    # Distribution 2.8 cannot delete a tag (DELETE by tag is 400 DIGEST_INVALID); its
    # users remove the tag's directory by hand, with the registry stopped.
    shutil.rmtree(server.root / V2 / "repositories" / "team/app" / "_manifests" / "tags" / "old")
    model.untagged("team/app", "old")

    assert set(stored_blobs(server.root)) == model.blobs
    wait_until_quiet(server.root / V2, 0.5)
    return BuiltStore(server, model, multi, docker_list)


@pytest.fixture
def built(server_factory: ServerFactory, tmp_path: Path) -> BuiltStore:
    return build_store_with_distribution(server_factory, tmp_path / "build")


def test_dry_runs_agree_on_every_blob_without_delete_untagged(
    built: BuiltStore, tmp_path: Path
) -> None:
    model = built.model
    _, distribution_config = copy_store(
        built.server.config, built.server.root, tmp_path / "distribution"
    )
    _, dockyard_config = copy_store(built.server.config, built.server.root, tmp_path / "dockyard")

    distribution = distribution_gc(distribution_config, "--dry-run")
    dockyard = dockyard_gc(dockyard_config, "--dry-run", "--delay", "0", "--settle", "1")

    expected = model.blobs - model.marked_keeping_untagged()
    # The deleted image's config, layers and manifest, and the deleted index: 3 + 1 + 1.
    assert len(expected) == 5
    assert distribution.eligible_blobs == expected, distribution.stdout
    assert dockyard.eligible_blobs == expected, dockyard.stdout
    assert distribution.eligible_manifests == dockyard.eligible_manifests == set()
    print(
        f"\nwithout -m: {len(model.blobs)} blobs; Distribution {len(distribution.eligible_blobs)}"
        f" eligible, Dockyard {len(dockyard.eligible_blobs)} eligible, identical sets"
    )
    # A dry run changes nothing, for either.
    assert stored_blobs(tmp_path / "dockyard" / "data") == stored_blobs(built.server.root)


def test_dry_runs_with_delete_untagged_differ_exactly_by_distribution_3004(
    built: BuiltStore, tmp_path: Path
) -> None:
    model = built.model
    _, distribution_config = copy_store(
        built.server.config, built.server.root, tmp_path / "distribution"
    )
    _, dockyard_config = copy_store(built.server.config, built.server.root, tmp_path / "dockyard")

    distribution = distribution_gc(distribution_config, "--dry-run", "--delete-untagged")
    dockyard = dockyard_gc(
        dockyard_config, "--dry-run", "--delete-untagged", "--delay", "0", "--settle", "1"
    )

    assert distribution.eligible_blobs == model.blobs - model.marked_distribution_untagged()
    assert dockyard.eligible_blobs == model.blobs - model.marked_dockyard_untagged()

    # Untagged: old, edge1, lib-2 (by digest), the deleted index's two children, and the
    # four platform manifests of the two tagged multi-arch images.
    platform_children = {
        image.digest for index in (built.multi, built.docker_list) for image in index.images
    }
    assert distribution.eligible_manifests == model.untagged_revisions()
    assert len(distribution.eligible_manifests) == 9
    assert dockyard.eligible_manifests == model.untagged_revisions() - platform_children
    assert len(dockyard.eligible_manifests) == 5
    # Dockyard names the repository of each manifest on the line itself.
    assert {repository for repository, _ in dockyard.eligible_manifests_by_repository} == {
        "team/app",
        "team/lib",
        "multi",
    }

    # The whole difference, blob by blob: the configs and layers of the platform images
    # that nothing but the tagged indexes reach. The amd64 image's base layer is not in
    # it (team/app and team/lib use it); the platform manifests themselves are not
    # either (Distribution marks them as blobs of the index, then unlinks them).
    assert dockyard.eligible_blobs <= distribution.eligible_blobs
    multi_amd64, multi_arm64 = built.multi.images
    dl_amd64, dl_arm64 = built.docker_list.images
    only_under_indexes = {
        multi_amd64.config.digest,
        multi_amd64.layers[1].digest,
        multi_arm64.config.digest,
        *(layer.digest for layer in multi_arm64.layers),
        *(blob.digest for blob in dl_amd64.blobs),
        *(blob.digest for blob in dl_arm64.blobs),
    }
    assert len(only_under_indexes) == 9
    assert distribution.eligible_blobs - dockyard.eligible_blobs == only_under_indexes
    print(
        f"\nwith -m: {len(model.blobs)} blobs; Distribution {len(distribution.eligible_blobs)} blobs"
        f" and {len(distribution.eligible_manifests)} manifests eligible, Dockyard"
        f" {len(dockyard.eligible_blobs)} and {len(dockyard.eligible_manifests)};"
        f" Distribution-only: {len(only_under_indexes)} blobs, {len(platform_children)} manifests (#3004)"
    )


def pull_all(server: ServerProcess, reference: str, into: Path) -> None:
    skopeo("copy", "--all", PULL, f"docker://{server.host}/{reference}", f"oci:{into}:pulled")


def test_real_delete_untagged_runs_side_by_side_3004(
    built: BuiltStore, server_factory: ServerFactory, tmp_path: Path
) -> None:
    model = built.model
    multi, docker_list = built.multi, built.docker_list
    distribution_root, distribution_config = copy_store(
        built.server.config, built.server.root, tmp_path / "distribution"
    )
    dockyard_root, dockyard_config = copy_store(
        built.server.config, built.server.root, tmp_path / "dockyard"
    )

    distribution_gc(distribution_config, "--delete-untagged")
    dockyard = dockyard_gc(dockyard_config, "--delete-untagged", "--delay", "0", "--settle", "1")
    assert set(stored_blobs(distribution_root)) == model.marked_distribution_untagged()
    assert set(stored_blobs(dockyard_root)) == model.marked_dockyard_untagged()
    assert dockyard.deleted_blobs == model.blobs - model.marked_dockyard_untagged()

    # Distribution after its own collection: the tagged index is there, its platform
    # manifests are not, and pulling it fails.
    served = server_factory("distribution", root=distribution_root, name="distribution-after")
    error = skopeo_fails(
        "copy", "--all", PULL, f"docker://{served.host}/multi:1.0", f"oci:{tmp_path / 'd'}:x"
    )
    assert "manifest unknown" in error, error
    with httpx.Client(timeout=30) as client:
        assert get_manifest(client, served.url, "multi", "1.0").status_code == 200
        for image in multi.images:
            child = get_manifest(client, served.url, "multi", image.digest)
            assert (child.status_code, error_code(child)) == (404, "MANIFEST_UNKNOWN"), child.text
        arm64_base = client.get(f"{served.url}/v2/multi/blobs/{multi.images[1].layers[0].digest}")
        assert arm64_base.status_code == 404
    served.stop()

    # Dockyard after its own collection: both multi-arch images pull whole, digests equal;
    # and so they do from Distribution serving the store Dockyard collected.
    for kind in ("dockyard", "distribution"):
        served = server_factory(kind, root=dockyard_root, name=f"{kind}-after-dockyard")
        pull_all(served, "multi:1.0", tmp_path / kind / "multi")
        pulled = read_oci_layout(tmp_path / kind / "multi")
        assert pulled.tags == {"pulled": multi.digest}
        assert set(pulled.blobs) == multi.all_digests
        skopeo(
            "copy",
            "--all",
            PULL,
            f"docker://{served.host}/multi:docker",
            f"dir:{tmp_path / kind / 'docker'}",
        )
        listed = read_dir_layout(tmp_path / kind / "docker")
        assert listed.tags == {"": docker_list.digest}
        assert set(listed.blobs) == docker_list.all_digests
        with httpx.Client(timeout=30) as client:
            for repository, tags in model.tags.items():
                for tag, digest in tags.items():
                    response = get_manifest(client, served.url, repository, tag)
                    assert response.status_code == 200, (kind, repository, tag, response.text)
                    assert response.headers["Docker-Content-Digest"] == digest
        served.stop()
