"""Manifests and image configs parsed into what the pages show.

Every value here comes from an image and is untrusted: it is kept as plain text and
escaped by the templates (autoescape), never marked safe. Parsing is forgiving: a
field of the wrong type is shown as missing rather than failing the page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dockyard.web.client import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    OCI_INDEX,
    OCI_MANIFEST,
)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_CONFIGS = frozenset({DOCKER_CONFIG, OCI_CONFIG})
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

KIND_LABELS = {
    OCI_MANIFEST: "OCI image manifest",
    DOCKER_MANIFEST: "Docker image manifest (schema 2)",
    OCI_INDEX: "OCI image index",
    DOCKER_LIST: "Docker manifest list",
    DOCKER_SCHEMA1: "Docker schema 1 manifest",
    "application/vnd.docker.distribution.manifest.v1+json": "Docker schema 1 manifest",
}

# Friendlier names for media types people meet often; the full type is always shown too.
MEDIA_TYPE_NAMES = {
    "application/vnd.oci.image.layer.v1.tar+gzip": "layer, tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "layer, tar+zstd",
    "application/vnd.oci.image.layer.v1.tar": "layer, tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "layer, tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "foreign layer",
    DOCKER_CONFIG: "image config",
    OCI_CONFIG: "image config",
    OCI_EMPTY: "empty",
    "application/vnd.dev.cosign.simplesigning.v1+json": "cosign signature",
    "application/vnd.dev.sigstore.bundle.v0.3+json": "sigstore bundle",
    "application/spdx+json": "SPDX SBOM",
    "application/vnd.cyclonedx+json": "CycloneDX SBOM",
    "application/vnd.in-toto+json": "in-toto attestation",
    "application/vnd.cncf.notary.signature": "Notary signature",
    "application/vnd.cncf.helm.config.v1+json": "Helm chart",
}

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 as Go writes it (nanoseconds, ``Z``) → an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Go's zero time ("0001-01-01T00:00:00Z") and reproducible builds' epoch mean "unknown".
    if parsed.year <= 1970:
        return None
    return parsed


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return None
    return [item if isinstance(item, str) else json.dumps(item) for item in value]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def platform_text(platform: Any) -> str | None:
    """``{"os": "linux", "architecture": "arm", "variant": "v7"}`` → ``linux/arm/v7``."""
    if not isinstance(platform, dict):
        return None
    parts = [_str(platform.get("os")), _str(platform.get("architecture"))]
    variant = _str(platform.get("variant"))
    if variant:
        parts.append(variant)
    text = "/".join(part for part in parts if part)
    version = _str(platform.get("os.version"))
    return f"{text} ({version})" if text and version else (text or None)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def type_name(self) -> str | None:
        return MEDIA_TYPE_NAMES.get(self.artifact_type or self.media_type)

    @property
    def is_attestation(self) -> bool:
        # BuildKit puts provenance and SBOMs in an index as "unknown/unknown" entries.
        return self.annotations.get("vnd.docker.reference.type") == "attestation-manifest"


def _descriptor(value: Any) -> Descriptor | None:
    if not isinstance(value, dict):
        return None
    digest = _str(value.get("digest")) or _str(value.get("blobSum"))
    if not digest:
        return None
    return Descriptor(
        media_type=_str(value.get("mediaType")) or "",
        digest=digest,
        size=_int(value.get("size")),
        platform=platform_text(value.get("platform")),
        artifact_type=_str(value.get("artifactType")),
        annotations=_str_map(value.get("annotations")),
    )


@dataclass(frozen=True, slots=True)
class ManifestDoc:
    """A manifest of any kind, as served (``raw`` are the exact bytes)."""

    digest: str
    media_type: str
    raw: bytes
    document: dict[str, Any]
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in (OCI_INDEX, DOCKER_LIST)

    @property
    def is_schema1(self) -> bool:
        return self.document.get("schemaVersion") == 1

    @property
    def is_image(self) -> bool:
        """An image manifest whose config is an image config (not an OCI artifact)."""
        return (
            not self.is_index
            and self.config is not None
            and self.config.media_type in IMAGE_CONFIGS
            and not self.artifact_type
        )

    @property
    def kind(self) -> str:
        if self.is_index:
            return KIND_LABELS.get(self.media_type, "index")
        if self.is_image or self.is_schema1:
            return KIND_LABELS.get(self.media_type, "manifest")
        kind = self.artifact_type or (self.config.media_type if self.config else "")
        return f"OCI artifact ({kind})" if kind else KIND_LABELS.get(self.media_type, "manifest")

    @property
    def image_size(self) -> int:
        """Bytes a pull of this one manifest transfers: itself, its config and layers."""
        total = len(self.raw)
        if self.config is not None:
            total += self.config.size
        return total + sum(layer.size for layer in self.layers)

    def pretty(self) -> str:
        """The manifest re-indented for reading; the digest is of ``raw``, not this."""
        try:
            return json.dumps(json.loads(self.raw), indent=2, ensure_ascii=False)
        except ValueError:
            return self.raw.decode("utf-8", "replace")


def parse_manifest(digest: str, content_type: str, raw: bytes) -> ManifestDoc:
    try:
        document = json.loads(raw)
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    media_type = _str(document.get("mediaType")) or content_type.split(";")[0].strip()
    if not media_type and "manifests" in document:
        media_type = OCI_INDEX
    elif not media_type and "config" in document:
        media_type = OCI_MANIFEST
    layers_field = document.get("layers")
    if document.get("schemaVersion") == 1:
        # schema1 lists layers newest first, as fsLayers with blobSum.
        layers_field = list(reversed(document.get("fsLayers") or []))
        media_type = media_type or DOCKER_SCHEMA1
    layers = tuple(d for d in map(_descriptor, layers_field or []) if d)
    children = tuple(d for d in map(_descriptor, document.get("manifests") or []) if d)
    return ManifestDoc(
        digest=digest,
        media_type=media_type,
        raw=raw,
        document=document,
        config=_descriptor(document.get("config")),
        layers=layers,
        children=children,
        subject=_descriptor(document.get("subject")),
        artifact_type=_str(document.get("artifactType")),
        annotations=_str_map(document.get("annotations")),
    )


@dataclass(frozen=True, slots=True)
class HistoryStep:
    created: datetime | None
    instruction: str
    command: str
    comment: str | None
    empty_layer: bool
    size: int | None
    layer_digest: str | None


_NOP = re.compile(r"^/bin/sh -c #\(nop\)\s*")
_SHELL = re.compile(r"^(?:\|\d+ (?:\S+=\S* )*)?/bin/(?:ba)?sh -c\s+")
_BUILDKIT = re.compile(r"\s*# buildkit$")


def dockerfile_step(created_by: str | None) -> tuple[str, str]:
    """A history entry's ``created_by`` as the Dockerfile line it came from.

    The classic builder writes ``/bin/sh -c #(nop) CMD [...]`` for metadata steps and
    ``/bin/sh -c apt-get ...`` for RUN; BuildKit writes ``RUN /bin/sh -c ... # buildkit``.
    Returns (instruction, rest).
    """
    text = (created_by or "").strip()
    if not text:
        return "", ""
    text = _BUILDKIT.sub("", text)
    if _NOP.match(text):
        text = _NOP.sub("", text)
    elif _SHELL.match(text):
        text = "RUN " + _SHELL.sub("", text)
    elif text.startswith("RUN /bin/sh -c "):
        text = "RUN " + text[len("RUN /bin/sh -c ") :]
    word, _, rest = text.partition(" ")
    if word.isupper() and word.isalpha():
        return word, rest.strip()
    return "", text


@dataclass(frozen=True, slots=True)
class ImageConfig:
    created: datetime | None = None
    author: str | None = None
    architecture: str | None = None
    os: str | None = None
    variant: str | None = None
    os_version: str | None = None
    user: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str | None = None
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    history: tuple[HistoryStep, ...] = ()
    diff_ids: int = 0

    @property
    def platform(self) -> str | None:
        parts = [p for p in (self.os, self.architecture, self.variant) if p]
        return "/".join(parts) or None


def parse_config(raw: bytes, layers: tuple[Descriptor, ...] = ()) -> ImageConfig:
    try:
        document = json.loads(raw)
    except ValueError:
        return ImageConfig()
    if not isinstance(document, dict):
        return ImageConfig()
    container = document.get("config")
    if not isinstance(container, dict):
        container = {}
    env: list[tuple[str, str]] = []
    for item in _str_list(container.get("Env")) or []:
        key, _, value = item.partition("=")
        env.append((key, value))
    history: list[HistoryStep] = []
    layer_index = 0
    for entry in document.get("history") or []:
        if not isinstance(entry, dict):
            continue
        empty = bool(entry.get("empty_layer"))
        layer = None
        if not empty and layer_index < len(layers):
            layer = layers[layer_index]
        if not empty:
            layer_index += 1
        instruction, command = dockerfile_step(_str(entry.get("created_by")))
        history.append(
            HistoryStep(
                created=parse_time(entry.get("created")),
                instruction=instruction,
                command=command,
                comment=_str(entry.get("comment")),
                empty_layer=empty,
                size=layer.size if layer else (0 if empty else None),
                layer_digest=layer.digest if layer else None,
            )
        )
    rootfs = document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    ports = container.get("ExposedPorts")
    volumes = container.get("Volumes")
    return ImageConfig(
        created=parse_time(document.get("created")),
        author=_str(document.get("author")),
        architecture=_str(document.get("architecture")),
        os=_str(document.get("os")),
        variant=_str(document.get("variant")),
        os_version=_str(document.get("os.version")),
        user=_str(container.get("User")) or None,
        env=tuple(env),
        entrypoint=_str_list(container.get("Entrypoint")),
        cmd=_str_list(container.get("Cmd")),
        working_dir=_str(container.get("WorkingDir")) or None,
        exposed_ports=tuple(sorted(ports)) if isinstance(ports, dict) else (),
        volumes=tuple(sorted(volumes)) if isinstance(volumes, dict) else (),
        labels=_str_map(container.get("Labels")),
        stop_signal=_str(container.get("StopSignal")) or None,
        history=tuple(history),
        diff_ids=len(diff_ids) if isinstance(diff_ids, list) else 0,
    )


# --- formatting ------------------------------------------------------------------------


def human_size(count: int | None) -> str:
    """Bytes in IEC units, as ``dockyard usage`` prints them."""
    if count is None:
        return "—"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def short_digest(digest: str | None, length: int = 12) -> str:
    if not digest:
        return ""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:length]}" if hexpart else digest[:length]


def ago(moment: datetime | float | None, now: datetime | None = None) -> str:
    """ "3 days ago": coarse on purpose, the exact time is in the title."""
    if moment is None:
        return "—"
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    now = now or datetime.now(UTC)
    seconds = (now - moment).total_seconds()
    if seconds >= 30 * 86_400:
        # Past a month "2 years ago" tells apart nothing in a table of old builds.
        return moment.astimezone(UTC).strftime("%Y-%m-%d")
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in (
        (31_536_000, "year"),
        (2_592_000, "month"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
    ):
        if seconds >= size:
            count = int(seconds // size)
            text = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def duration(seconds: float | None) -> str:
    """A ttl as a person says it: "7 days", "1 hour 30 minutes", "45 seconds"."""
    if seconds is None:
        return "—"
    left = int(seconds)
    parts = []
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return " ".join(parts[:2]) or "0 seconds"


def iso(moment: datetime | float | None) -> str:
    if moment is None:
        return ""
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
