"""Write a registry data directory straight to disk, in Distribution's layout.

Pushing thousands of repositories over HTTP would take minutes; writing the link files
takes a second, and both Dockyard and Distribution serve the result, since it is the
same on-disk layout (which is itself a compatibility check).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.images import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    Image,
    make_image,
    serialise,
)

V2 = Path("docker/registry/v2")


class LayoutWriter:
    def __init__(self, root: Path) -> None:
        self.root = root / V2
        self._written: set[str] = set()

    def blob(self, blob: Blob) -> None:
        if blob.digest in self._written:
            return
        hexpart = blob.digest.removeprefix("sha256:")
        path = self.root / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob.data)
        self._written.add(blob.digest)

    def _link(self, path: Path, digest: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(digest)

    def image(self, repository: str, image: Image, tags: list[str]) -> None:
        repo = self.root / "repositories" / repository
        for blob in (*image.blobs, image.manifest):
            self.blob(blob)
        for blob in image.blobs:
            hexpart = blob.digest.removeprefix("sha256:")
            self._link(repo / "_layers" / "sha256" / hexpart / "link", blob.digest)
        hexpart = image.digest.removeprefix("sha256:")
        self._link(repo / "_manifests" / "revisions" / "sha256" / hexpart / "link", image.digest)
        for tag in tags:
            tag_dir = repo / "_manifests" / "tags" / tag
            self._link(tag_dir / "current" / "link", image.digest)
            self._link(tag_dir / "index" / "sha256" / hexpart / "link", image.digest)


def dated_image(base: Image, index: int, start: datetime) -> Image:
    """``base``'s layers under a new config whose ``created`` is ``start`` + index hours.

    A distinct config per tag makes each tag a distinct image with its own date, as in
    a repository that CI pushes to, while the layers stay shared and the data small.
    """
    created = (start + timedelta(hours=index)).strftime("%Y-%m-%dT%H:%M:%SZ")
    config_document = json.loads(base.config.data)
    config_document["created"] = created
    config_document["config"]["Labels"] = {"build": str(index)}
    config = Blob(OCI_CONFIG, serialise(config_document))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in base.layers],
    }
    return Image(
        config=config,
        layers=base.layers,
        manifest=Blob(OCI_MANIFEST, serialise(manifest)),
        platform=base.platform,
    )


def write_scale_registry(root: Path, repositories: int, tags: int) -> dict[str, object]:
    """``repositories`` repositories of one tag each, and ``big/app`` with ``tags`` tags.

    Returns facts the tests check against (names, the newest tag).
    """
    writer = LayoutWriter(root)
    base = make_image("scale", layers=1, files_per_layer=1, file_size=512)
    assert all(layer.media_type == OCI_LAYER for layer in base.layers)
    names = [f"team{i % 40:02d}/service-{i:04d}" for i in range(repositories)]
    for name in names:
        writer.image(name, base, ["latest"])
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(tags):
        writer.image("big/app", dated_image(base, i, start), [f"build-{i:04d}"])
    return {
        "names": sorted(names + ["big/app"], key=lambda n: n.split("/")),
        "newest": f"build-{tags - 1:04d}",
    }
