from __future__ import annotations

import json
from typing import Any

import pytest

from dockyard.errors import ManifestInvalid
from dockyard.registry.digest import Digest
from dockyard.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)

CONFIG = {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": str(Digest.of(b"{}")),
    "size": 2,
}
LAYER = {
    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
    "digest": str(Digest.of(b"l")),
    "size": 1,
}


def oci_manifest(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": CONFIG,
        "layers": [LAYER],
        **extra,
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_oci_manifest_references() -> None:
    manifest = parse_manifest(encode(oci_manifest()), OCI_MANIFEST)
    assert manifest.media_type == OCI_MANIFEST
    assert [str(d) for d in manifest.required_blobs()] == [CONFIG["digest"], LAYER["digest"]]
    assert manifest.subject is None


def test_media_type_from_body_when_header_is_generic() -> None:
    assert parse_manifest(encode(oci_manifest()), "application/json").media_type == OCI_MANIFEST
    body = oci_manifest()
    del body["mediaType"]
    assert parse_manifest(encode(body), "").media_type == OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": []}
    assert parse_manifest(encode(index), "").media_type == OCI_INDEX


def test_docker_types() -> None:
    body = oci_manifest(mediaType=DOCKER_MANIFEST)
    assert parse_manifest(encode(body), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST
    child = {
        "mediaType": DOCKER_MANIFEST,
        "digest": LAYER["digest"],
        "size": 1,
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    listing = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [child]}
    parsed = parse_manifest(encode(listing), DOCKER_MANIFEST_LIST)
    assert parsed.is_index and [str(c.digest) for c in parsed.children] == [LAYER["digest"]]


def test_subject_and_artifact_type() -> None:
    subject = {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(b"s")), "size": 1}
    body = oci_manifest(
        subject=subject,
        artifactType="application/vnd.example+type",
        annotations={"org.example": "<script>"},
    )
    parsed = parse_manifest(encode(body), OCI_MANIFEST)
    assert parsed.subject is not None and str(parsed.subject.digest) == subject["digest"]
    descriptor = parsed.referrer_descriptor().to_json()
    assert descriptor["artifactType"] == "application/vnd.example+type"
    assert descriptor["annotations"] == {"org.example": "<script>"}


def test_referrer_artifact_type_falls_back_to_config_media_type() -> None:
    subject = {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(b"s")), "size": 1}
    parsed = parse_manifest(encode(oci_manifest(subject=subject)), OCI_MANIFEST)
    assert parsed.referrer_descriptor().artifact_type == CONFIG["mediaType"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", OCI_MANIFEST),
        (b"[]", OCI_MANIFEST),
        (b"\xff\xfe", OCI_MANIFEST),
        (encode({**oci_manifest(), "schemaVersion": 1}), OCI_MANIFEST),
        (encode({**oci_manifest(), "schemaVersion": True}), OCI_MANIFEST),
        (encode(oci_manifest()), DOCKER_MANIFEST),  # body says OCI, header says Docker
        (encode(oci_manifest()), "application/vnd.unknown+json"),
        (encode({**oci_manifest(), "layers": "x"}), OCI_MANIFEST),
        (
            encode(
                {**oci_manifest(), "config": {"mediaType": "x", "digest": "sha256:bad", "size": 1}}
            ),
            OCI_MANIFEST,
        ),
        (encode({**oci_manifest(), "config": {**CONFIG, "size": -1}}), OCI_MANIFEST),
        (encode({**oci_manifest(), "config": {**CONFIG, "size": True}}), OCI_MANIFEST),
        (
            encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"digest": "x"}]}),
            OCI_INDEX,
        ),
        (
            encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []}),
            OCI_INDEX,
        ),
        (encode({**oci_manifest(), "annotations": {"a": 1}}), OCI_MANIFEST),
        (
            encode({"schemaVersion": 2, "config": CONFIG, "layers": []}),
            DOCKER_MANIFEST,
        ),  # no mediaType
        (
            encode({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
    ],
)
def test_invalid_manifests(data: bytes, content_type: str) -> None:
    with pytest.raises(ManifestInvalid):
        parse_manifest(data, content_type)
