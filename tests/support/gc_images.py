"""Images that share layers, built locally: what garbage collection must tell apart.

``tests.support.images.make_image`` draws every layer from its own seed; collection
tests need the opposite, one base layer under several images, so that deleting one
image must free its own layers and keep the shared one. Layers are real tar+gzip with
matching ``diff_ids`` so that skopeo accepts the images.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.images import (
    ALL_MANIFEST_TYPES,
    MEDIA_TYPES,
    Blob,
    Format,
    Image,
    ImageIndex,
    random_layer,
    serialise,
    sha256_digest,
)


@dataclass(frozen=True)
class Layer:
    """A compressed layer and the digest of its uncompressed tar (the config's diff_id)."""

    data: bytes
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)


def make_layer(seed: str, files: int = 3, file_size: int = 4096) -> Layer:
    """A layer that is a pure function of ``seed``; random contents do not compress."""
    compressed, uncompressed = random_layer(random.Random(seed), files, file_size)
    return Layer(compressed, "sha256:" + hashlib.sha256(uncompressed).hexdigest())


def image_with_layers(
    name: str,
    layers: Sequence[Layer],
    *,
    fmt: Format = "oci",
    os_name: str = "linux",
    architecture: str = "amd64",
) -> Image:
    """An image over exactly ``layers``; ``name`` makes its config (and so it) unique."""
    types = MEDIA_TYPES[fmt]
    config = Blob(
        types["config"],
        serialise(
            {
                "created": "2024-01-01T00:00:00Z",
                "architecture": architecture,
                "os": os_name,
                "config": {"Cmd": ["/bin/sh"], "Labels": {"dockyard.test.image": name}},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            }
        ),
    )
    layer_blobs = tuple(Blob(types["layer"], layer.data) for layer in layers)
    manifest = {
        "schemaVersion": 2,
        "mediaType": types["manifest"],
        "config": config.descriptor(),
        "layers": [blob.descriptor() for blob in layer_blobs],
    }
    return Image(
        config=config,
        layers=layer_blobs,
        manifest=Blob(types["manifest"], serialise(manifest)),
        platform={"architecture": architecture, "os": os_name},
    )


def index_of(images: Iterable[Image], fmt: Format = "oci") -> ImageIndex:
    """A multi-arch index (or Docker manifest list) over ``images``."""
    images = tuple(images)
    document = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPES[fmt]["index"],
        "manifests": [image.manifest.descriptor(platform=dict(image.platform)) for image in images],
    }
    return ImageIndex(images=images, manifest=Blob(MEDIA_TYPES[fmt]["index"], serialise(document)))


def blob_sizes(artifacts: Iterable[Image | ImageIndex]) -> dict[str, int]:
    """digest → size of every blob the artifacts consist of, manifests included."""
    sizes: dict[str, int] = {}
    for artifact in artifacts:
        sizes[artifact.manifest.digest] = artifact.manifest.size
        images = artifact.images if isinstance(artifact, ImageIndex) else (artifact,)
        for image in images:
            sizes[image.manifest.digest] = image.manifest.size
            for blob in image.blobs:
                sizes[blob.digest] = blob.size
    return sizes


def error_code(response: httpx.Response) -> str | None:
    """The first OCI error code of a response body, or None when there is none."""
    try:
        body: Any = response.json()
    except ValueError:
        return None
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        code = errors[0].get("code")
        return code if isinstance(code, str) else None
    return None


def get_manifest(
    client: httpx.Client, base_url: str, repository: str, reference: str
) -> httpx.Response:
    return client.get(
        f"{base_url}/v2/{repository}/manifests/{reference}", headers={"Accept": ALL_MANIFEST_TYPES}
    )
