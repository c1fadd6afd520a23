"""Manifest parsing and validation: Docker schema2 and OCI image manifests and indexes.

A manifest is stored as the exact bytes pushed; what is parsed here is what the registry
must know about it: its media type, the blobs and child manifests it references, and
its ``subject`` for the referrers API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dockyard.errors import ManifestInvalid
from dockyard.registry.digest import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_MEDIA_TYPES = IMAGE_MANIFESTS + INDEXES
# Content types that say nothing about the manifest: the body's mediaType decides.
GENERIC_CONTENT_TYPES = ("", "application/json", "application/octet-stream", "text/plain")
# Layers of these types may live elsewhere (their ``urls``); the registry need not hold them.
NON_DISTRIBUTABLE_LAYERS = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()
    platform: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            body["artifactType"] = self.artifact_type
        if self.annotations:
            body["annotations"] = self.annotations
        if self.platform:
            body["platform"] = self.platform
        return body


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    digest: Digest
    size: int
    raw: dict[str, Any]
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEXES

    def required_blobs(self) -> list[Digest]:
        """Blobs that must be in the repository for this manifest to be accepted."""
        blobs = [self.config.digest] if self.config else []
        for layer in self.layers:
            if layer.urls and layer.media_type in NON_DISTRIBUTABLE_LAYERS:
                continue
            blobs.append(layer.digest)
        return blobs

    def referenced_blobs(self) -> list[Digest]:
        """Every blob this manifest points at, for garbage collection."""
        blobs = [self.config.digest] if self.config else []
        blobs.extend(layer.digest for layer in self.layers)
        return blobs

    def referrer_descriptor(self) -> Descriptor:
        """How this manifest appears in its subject's referrers list (OCI 1.1)."""
        artifact_type = self.artifact_type
        if artifact_type is None and self.config is not None:
            artifact_type = self.config.media_type
        return Descriptor(
            self.media_type,
            self.digest,
            self.size,
            artifact_type=artifact_type,
            annotations=self.annotations or None,
        )


def _invalid(what: str, **detail: Any) -> ManifestInvalid:
    return ManifestInvalid(f"manifest invalid: {what}", detail=detail or None)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor")
    media_type = value.get("mediaType")
    digest_text = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType is missing")
    if not isinstance(digest_text, str) or not Digest.is_valid(digest_text):
        raise _invalid(f"{where}.digest is invalid", digest=str(digest_text)[:200])
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size is invalid")
    artifact_type = value.get("artifactType")
    annotations = value.get("annotations")
    urls = value.get("urls") or []
    platform = value.get("platform")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid(f"{where}.artifactType is not a string")
    if annotations is not None and not _is_string_map(annotations):
        raise _invalid(f"{where}.annotations is not a map of strings")
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise _invalid(f"{where}.urls is not a list of strings")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}.platform is not an object")
    return Descriptor(
        media_type,
        Digest.parse(digest_text),
        size,
        artifact_type=artifact_type,
        annotations=annotations,
        urls=tuple(urls),
        platform=platform,
    )


def _is_string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _media_type(content_type: str, body: dict[str, Any]) -> str:
    declared = body.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType is not a string")
    header = content_type.split(";", 1)[0].strip().lower()
    if header in GENERIC_CONTENT_TYPES:
        header = ""
    if header in DOCKER_SCHEMA1 or declared in DOCKER_SCHEMA1:
        raise _invalid("Docker schema1 manifests are not supported; push schema2 or OCI")
    if header and declared and header != declared:
        raise _invalid(
            "mediaType does not match Content-Type", mediaType=declared, contentType=header
        )
    media_type = declared or header or infer_media_type(body)
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise _invalid("unsupported manifest media type", mediaType=media_type[:200])
    if media_type.startswith("application/vnd.docker.") and not declared:
        raise _invalid("Docker manifests must carry their mediaType")
    return media_type


def infer_media_type(body: dict[str, Any]) -> str:
    """What a manifest without ``mediaType`` is: the OCI type its shape says."""
    declared = body.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return OCI_INDEX if "manifests" in body else OCI_MANIFEST


def parse_manifest(data: bytes, content_type: str, digest: Digest | None = None) -> Manifest:
    """Parse pushed bytes; raise ``MANIFEST_INVALID`` on anything malformed."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid("not valid JSON", reason=str(exc)[:200]) from None
    if not isinstance(body, dict):
        raise _invalid("not a JSON object")
    if body.get("schemaVersion") != 2 or isinstance(body.get("schemaVersion"), bool):
        raise _invalid("schemaVersion must be 2")
    media_type = _media_type(content_type, body)
    digest = digest or Digest.of(data)
    subject = _descriptor(body["subject"], "subject") if body.get("subject") is not None else None
    artifact_type = body.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType is not a string")
    annotations = body.get("annotations") or {}
    if not _is_string_map(annotations):
        raise _invalid("annotations is not a map of strings")
    if media_type in INDEXES:
        if "config" in body or "layers" in body:
            raise _invalid("an index has no config or layers")
        children = body.get("manifests")
        if not isinstance(children, list):
            raise _invalid("manifests is not a list")
        return Manifest(
            media_type,
            digest,
            len(data),
            body,
            children=tuple(_descriptor(c, f"manifests[{i}]") for i, c in enumerate(children)),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if "manifests" in body:
        raise _invalid("an image manifest has no manifests list")
    layers = body.get("layers")
    if not isinstance(layers, list):
        raise _invalid("layers is not a list")
    return Manifest(
        media_type,
        digest,
        len(data),
        body,
        config=_descriptor(body.get("config"), "config"),
        layers=tuple(_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def parse_stored(data: bytes, digest: Digest) -> Manifest:
    """Parse a manifest read back from storage, whose type is in its body or its shape."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid("stored manifest is not JSON", digest=str(digest)) from None
    media_type = infer_media_type(body) if isinstance(body, dict) else ""
    return parse_manifest(data, media_type, digest)
