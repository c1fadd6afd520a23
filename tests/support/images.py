"""Test images built locally, with no network: layers, configs, manifests, indexes.

Everything is generated from a seed so a failing test can be replayed, and every
manifest keeps the exact bytes it was serialised to: registries must store and serve
those bytes verbatim (the digest is their sha256), so the tests compare bytes and
digests, never re-parsed JSON.

``write_oci_layout`` writes an OCI image layout directory that skopeo reads with
``oci:DIR:TAG``; the small HTTP helpers at the end push blobs and manifests directly,
for what skopeo never does (uploads in several ``PATCH`` chunks, exact bytes of a
Docker schema2 manifest list).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

Format = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST})

# What a client sends as Accept when it wants any manifest kind back unchanged.
ALL_MANIFEST_TYPES = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

MEDIA_TYPES: dict[Format, dict[str, str]] = {
    "oci": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "layer": OCI_LAYER},
    "docker": {
        "manifest": DOCKER_MANIFEST,
        "index": DOCKER_LIST,
        "config": DOCKER_CONFIG,
        "layer": DOCKER_LAYER,
    },
}

REF_NAME = "org.opencontainers.image.ref.name"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def serialise(document: Mapping[str, Any]) -> bytes:
    """JSON as a client might write it, deliberately not canonical.

    Three-space indentation and a trailing newline: a registry that re-encodes the
    document instead of storing the bytes it was given changes the digest, and the
    tests notice.
    """
    return (json.dumps(document, indent=3) + "\n").encode()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """One image manifest with its config and layers (a single platform)."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: Blob
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config and layers: what a registry stores as blobs besides the manifest."""
        return (self.config, *self.layers)

    @property
    def all_digests(self) -> set[str]:
        return {self.manifest.digest, *(b.digest for b in self.blobs)}


@dataclass(frozen=True)
class ImageIndex:
    """An OCI image index or Docker manifest list over several images."""

    images: tuple[Image, ...]
    manifest: Blob

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def all_digests(self) -> set[str]:
        digests = {self.manifest.digest}
        for image in self.images:
            digests |= image.all_digests
        return digests


Artifact = Image | ImageIndex


def random_layer(rng: random.Random, files: int = 3, file_size: int = 2048) -> tuple[bytes, bytes]:
    """A gzip'd tar of a few files with random names and contents.

    Returns (compressed, uncompressed): the config's ``diff_ids`` are digests of the
    uncompressed tar. Fixed mtimes keep the bytes a pure function of the seed.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(f"d{rng.getrandbits(32):08x}")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        directory.mtime = 1_700_000_000
        tar.addfile(directory)
        for _ in range(files):
            content = rng.randbytes(rng.randint(file_size // 2, file_size))
            info = tarfile.TarInfo(f"{directory.name}/f{rng.getrandbits(32):08x}.bin")
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), uncompressed


def make_image(
    seed: int | str,
    *,
    layers: int = 2,
    files_per_layer: int = 3,
    file_size: int = 2048,
    fmt: Format = "oci",
    os_name: str = "linux",
    architecture: str = "amd64",
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """A runnable-looking image: real tar+gzip layers, an image config, a manifest."""
    rng = random.Random(f"{seed}/{fmt}/{os_name}/{architecture}")
    types = MEDIA_TYPES[fmt]
    layer_blobs: list[Blob] = []
    diff_ids: list[str] = []
    for _ in range(layers):
        compressed, uncompressed = random_layer(rng, files_per_layer, file_size)
        layer_blobs.append(Blob(types["layer"], compressed))
        diff_ids.append(sha256_digest(uncompressed))
    config_document = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": architecture,
        "os": os_name,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"dockyard.test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(layers)
        ],
    }
    config = Blob(types["config"], serialise(config_document))
    manifest_document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": types["manifest"],
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layer_blobs],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("Docker schema2 manifests have no annotations")
        manifest_document["annotations"] = dict(annotations)
    return Image(
        config=config,
        layers=tuple(layer_blobs),
        manifest=Blob(types["manifest"], serialise(manifest_document)),
        platform={"architecture": architecture, "os": os_name},
    )


def make_index(
    seed: int | str,
    *,
    platforms: Iterable[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
    fmt: Format = "oci",
    **image_options: Any,
) -> ImageIndex:
    """A multi-arch image: one image per (os, architecture) under an index/list."""
    images = tuple(
        make_image(seed, fmt=fmt, os_name=os_name, architecture=arch, **image_options)
        for os_name, arch in platforms
    )
    types = MEDIA_TYPES[fmt]
    document = {
        "schemaVersion": 2,
        "mediaType": types["index"],
        "manifests": [
            image.manifest.descriptor(platform=dict(image.platform)) for image in images
        ],
    }
    return ImageIndex(images=images, manifest=Blob(types["index"], serialise(document)))


def iter_blobs(artifact: Artifact) -> Iterator[Blob]:
    """Every blob an artifact consists of, manifests included, children first."""
    if isinstance(artifact, ImageIndex):
        for image in artifact.images:
            yield from iter_blobs(image)
    else:
        yield from artifact.blobs
    yield artifact.manifest


def write_oci_layout(directory: Path, refs: Mapping[str, Artifact]) -> Path:
    """Write an OCI image layout holding ``refs`` (tag → image or index).

    The result is what ``skopeo copy oci:DIR:TAG ...`` reads: ``oci-layout``,
    ``index.json`` naming each tag through ``org.opencontainers.image.ref.name``, and
    every blob under ``blobs/sha256/<hex>``.
    """
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entries = []
    for tag, artifact in refs.items():
        for blob in iter_blobs(artifact):
            (blob_dir / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
        entries.append(artifact.manifest.descriptor(annotations={REF_NAME: tag}))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def write_dir_layout(directory: Path, artifact: Artifact) -> Path:
    """Write skopeo's ``dir:`` layout for one image or index.

    skopeo's ``oci:`` transport only lists OCI media types in ``index.json``, so Docker
    schema2 manifests and manifest lists travel through ``dir:`` instead, which keeps
    any manifest verbatim: ``manifest.json`` is the top manifest, each child of an
    index is ``<hex>.manifest.json``, each blob is a file named by its hex digest.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version").write_text("Directory Transport Version: 1.1\n")
    (directory / "manifest.json").write_bytes(artifact.manifest.data)
    images = artifact.images if isinstance(artifact, ImageIndex) else (artifact,)
    for image in images:
        if isinstance(artifact, ImageIndex):
            name = image.digest.removeprefix("sha256:") + ".manifest.json"
            (directory / name).write_bytes(image.manifest.data)
        for blob in image.blobs:
            (directory / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    return directory


@dataclass
class LayoutContents:
    """What an OCI layout directory holds, read back for comparisons."""

    tags: dict[str, str] = field(default_factory=dict)  # tag → manifest digest
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest → content


def read_oci_layout(directory: Path) -> LayoutContents:
    """Read a layout (e.g. one skopeo pulled into) and check every blob's name.

    A blob whose content does not hash to its file name is a corrupt pull; it raises
    here so that no test can overlook it.
    """
    contents = LayoutContents()
    index = json.loads((directory / "index.json").read_text())
    for entry in index.get("manifests", []):
        tag = (entry.get("annotations") or {}).get(REF_NAME)
        if tag is not None:
            contents.tags[tag] = entry["digest"]
    for path in sorted((directory / "blobs" / "sha256").iterdir()):
        data = path.read_bytes()
        digest = sha256_digest(data)
        if digest != f"sha256:{path.name}":
            raise AssertionError(f"{path} holds content with digest {digest}")
        contents.blobs[digest] = data
    return contents


def read_dir_layout(directory: Path) -> LayoutContents:
    """Read skopeo's ``dir:`` layout back, checking every file against its name.

    The top manifest is listed under the tag ``""`` in ``tags``; child manifests and
    blobs are all in ``blobs`` (the top manifest too).
    """
    contents = LayoutContents()
    for path in sorted(directory.iterdir()):
        if path.name == "version":
            continue
        data = path.read_bytes()
        digest = sha256_digest(data)
        if path.name == "manifest.json":
            contents.tags[""] = digest
        elif f"sha256:{path.name.removesuffix('.manifest.json')}" != digest:
            raise AssertionError(f"{path} holds content with digest {digest}")
        contents.blobs[digest] = data
    return contents


# --- skopeo -------------------------------------------------------------------------


def skopeo(*args: str, timeout: float = 120.0) -> bytes:
    """Run skopeo and return its stdout; a failure raises with skopeo's own words.

    ``--insecure-policy`` because a fresh machine may have no signature policy that
    accepts unsigned local images, which is not what these tests are about.
    """
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"skopeo {' '.join(args)} exited {result.returncode}:\n"
            + result.stderr.decode(errors="replace")
        )
    return result.stdout


def skopeo_fails(*args: str, timeout: float = 120.0) -> str:
    """Run skopeo expecting failure; returns stderr so the test can check the reason."""
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, timeout=timeout
    )
    if result.returncode == 0:
        raise AssertionError(f"skopeo {' '.join(args)} succeeded, expected a failure")
    return result.stderr.decode(errors="replace")


# --- pushing over the HTTP API -------------------------------------------------------


def _location(base_url: str, response: httpx.Response) -> str:
    location = response.headers["Location"]
    return location if location.startswith("http") else base_url + location


def start_upload(client: httpx.Client, base_url: str, repository: str) -> str:
    """``POST /v2/<name>/blobs/uploads/`` and return the absolute upload URL."""
    response = client.post(f"{base_url}/v2/{repository}/blobs/uploads/")
    assert response.status_code == 202, (response.status_code, response.text)
    return _location(base_url, response)


def with_digest(upload_url: str, digest: str) -> str:
    separator = "&" if "?" in upload_url else "?"
    return f"{upload_url}{separator}digest={digest}"


def patch_chunk(client: httpx.Client, base_url: str, upload_url: str, chunk: bytes, offset: int) -> str:
    """Send one chunk with its ``Content-Range``; returns the next upload URL.

    The registry must answer 202 with a ``Range`` that ends at the last byte received:
    that acknowledgement is what a client may rely on after a crash.
    """
    response = client.patch(
        upload_url,
        content=chunk,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            "Content-Length": str(len(chunk)),
        },
    )
    assert response.status_code == 202, (response.status_code, response.text)
    assert response.headers["Range"] == f"0-{offset + len(chunk) - 1}", response.headers
    return _location(base_url, response)


def push_blob_chunked(
    client: httpx.Client, base_url: str, repository: str, data: bytes, chunk_size: int
) -> str:
    """Upload a blob in several ``PATCH`` requests, then close it with ``PUT``."""
    url = start_upload(client, base_url, repository)
    for offset in range(0, len(data), chunk_size):
        url = patch_chunk(client, base_url, url, data[offset : offset + chunk_size], offset)
    digest = sha256_digest(data)
    response = client.put(with_digest(url, digest))
    assert response.status_code == 201, (response.status_code, response.text)
    assert response.headers["Docker-Content-Digest"] == digest
    return digest


def push_blob(client: httpx.Client, base_url: str, repository: str, data: bytes) -> str:
    """A monolithic upload: ``POST`` then one ``PUT`` carrying the whole body."""
    url = start_upload(client, base_url, repository)
    digest = sha256_digest(data)
    response = client.put(
        with_digest(url, digest),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, (response.status_code, response.text)
    return digest


def push_manifest(
    client: httpx.Client, base_url: str, repository: str, reference: str, manifest: Blob
) -> httpx.Response:
    return client.put(
        f"{base_url}/v2/{repository}/manifests/{reference}",
        content=manifest.data,
        headers={"Content-Type": manifest.media_type},
    )


def push_artifact(
    client: httpx.Client, base_url: str, repository: str, tag: str, artifact: Artifact
) -> None:
    """Push blobs, child manifests by digest, then the top manifest under ``tag``."""
    if isinstance(artifact, ImageIndex):
        for image in artifact.images:
            push_artifact(client, base_url, repository, image.digest, image)
    else:
        for blob in artifact.blobs:
            push_blob(client, base_url, repository, blob.data)
    response = push_manifest(client, base_url, repository, tag, artifact.manifest)
    assert response.status_code == 201, (response.status_code, response.text)
    assert response.headers["Docker-Content-Digest"] == artifact.digest
