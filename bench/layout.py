"""Write Distribution's on-disk layout directly, to build large stores in seconds.

Both registries read this layout as it is (it is the compatibility promise), so a store
written here is what either would have after the same pushes, without the hours of
API calls 10,000 repositories would take. Paths as in shared/REFERENCE.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

V2 = Path("docker/registry/v2")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.v2 = root / V2

    def put_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        hex_ = digest.split(":", 1)[1]
        path = self.v2 / "blobs" / "sha256" / hex_[:2] / hex_ / "data"
        if not path.exists():
            _write(path, data)
        return digest

    def _repo(self, name: str) -> Path:
        return self.v2 / "repositories" / name

    def link_layer(self, repo: str, digest: str) -> None:
        hex_ = digest.split(":", 1)[1]
        _write(self._repo(repo) / "_layers" / "sha256" / hex_ / "link", digest.encode())

    def link_revision(self, repo: str, digest: str) -> None:
        hex_ = digest.split(":", 1)[1]
        path = self._repo(repo) / "_manifests" / "revisions" / "sha256" / hex_ / "link"
        _write(path, digest.encode())

    def tag(self, repo: str, tag: str, digest: str) -> None:
        hex_ = digest.split(":", 1)[1]
        tags = self._repo(repo) / "_manifests" / "tags" / tag
        _write(tags / "current" / "link", digest.encode())
        _write(tags / "index" / "sha256" / hex_ / "link", digest.encode())

    def blob_count(self) -> int:
        blobs = self.v2 / "blobs"
        return sum(1 for _, _, files in os.walk(blobs) for name in files if name == "data")


def image_manifest(config: bytes, layers: list[bytes], annotation: str | None = None) -> bytes:
    """An OCI image manifest referencing these blobs (the blobs are not written here)."""
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    if annotation is not None:
        manifest["annotations"] = {"bench.id": annotation}
    return json.dumps(manifest, separators=(",", ":")).encode()


def push_image(
    store: Store, repo: str, config: bytes, layers: list[bytes], annotation: str | None = None
) -> str:
    """Blobs, layer links and the manifest revision, as a push leaves them; no tag."""
    for blob in (config, *layers):
        store.link_layer(repo, store.put_blob(blob))
    manifest = image_manifest(config, layers, annotation)
    digest = store.put_blob(manifest)
    store.link_revision(repo, digest)
    return digest
