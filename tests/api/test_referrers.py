"""The referrers API (OCI distribution spec 1.1): manifests whose subject is a digest."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.api_helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    assert_error,
    make_config,
    oci_index,
    oci_manifest,
    push_artifact,
    push_blob,
    push_image,
    push_manifest,
    put_manifest,
)

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"


def referrers(client: httpx.Client, repo: str, digest: str, **params: str) -> httpx.Response:
    response = client.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == OCI_INDEX
    return response


def descriptors(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    manifests = body["manifests"]
    assert isinstance(manifests, list)
    for descriptor in manifests:
        # No annotations and an empty map say the same thing.
        if descriptor.get("annotations") == {}:
            del descriptor["annotations"]
    # The order of referrers is unspecified; compare sorted by digest.
    return sorted(manifests, key=lambda descriptor: str(descriptor["digest"]))


def expected(*entries: tuple[Manifest, str | None]) -> list[dict[str, Any]]:
    """Descriptors as the spec requires: artifactType when known, every annotation."""
    result = []
    for manifest, artifact_type in entries:
        descriptor: dict[str, Any] = manifest.descriptor()
        if artifact_type is not None:
            descriptor["artifactType"] = artifact_type
        if manifest.annotations:
            descriptor["annotations"] = dict(manifest.annotations)
        result.append(descriptor)
    return sorted(result, key=lambda descriptor: str(descriptor["digest"]))


def test_referrers_lists_manifests_with_that_subject(api: httpx.Client) -> None:
    subject = push_image(api, "refs/image", "v1").manifest
    sbom = push_artifact(api, "refs/image", subject, SBOM, {"org.example.format": "spdx"})
    signature = push_artifact(api, "refs/image", subject, SIGNATURE, {"org.example.key": "abc"})
    # Without artifactType, the descriptor takes the config's media type (spec).
    config_typed = push_artifact(
        api,
        "refs/image",
        subject,
        None,
        {"org.example.kind": "config"},
        config_media_type="application/vnd.example.config.v1+json",
    )
    # An index can be a referrer too.
    child = push_image(api, "refs/image").manifest
    index = oci_index(
        [child],
        artifact_type="application/vnd.example.bundle.v1",
        subject=subject,
        annotations={"org.example.kind": "index"},
    )
    response = put_manifest(api, "refs/image", index.digest, index)
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject.digest
    # Not referrers: an unrelated image and an artifact about another subject.
    push_artifact(api, "refs/image", child, SBOM)

    response = referrers(api, "refs/image", subject.digest)
    assert descriptors(response) == expected(
        (sbom, SBOM),
        (signature, SIGNATURE),
        (config_typed, "application/vnd.example.config.v1+json"),
        (index, "application/vnd.example.bundle.v1"),
    )
    for descriptor in descriptors(response):
        assert descriptor["mediaType"] in (OCI_MANIFEST, OCI_INDEX)


def test_referrers_of_a_subject_never_pushed(api: httpx.Client) -> None:
    """A dangling subject is allowed: the referrer is listed before its subject exists."""
    phantom = oci_manifest(make_config(), [])
    push_image(api, "refs/dangling", "v1")
    artifact = push_artifact(api, "refs/dangling", phantom, SBOM)
    assert descriptors(referrers(api, "refs/dangling", phantom.digest)) == expected(
        (artifact, SBOM)
    )
    # Pushing the subject afterwards changes nothing about its referrers.
    push_blob(api, "refs/dangling", make_config())
    assert descriptors(referrers(api, "refs/dangling", phantom.digest)) == expected(
        (artifact, SBOM)
    )


def test_referrers_artifact_type_filter(api: httpx.Client) -> None:
    subject = push_image(api, "refs/filter", "v1").manifest
    sbom = push_artifact(api, "refs/filter", subject, SBOM)
    push_artifact(api, "refs/filter", subject, SIGNATURE)
    response = referrers(api, "refs/filter", subject.digest, artifactType=SBOM)
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    assert descriptors(response) == expected((sbom, SBOM))
    none = referrers(api, "refs/filter", subject.digest, artifactType="application/vnd.none")
    assert none.headers["OCI-Filters-Applied"] == "artifactType"
    assert descriptors(none) == []
    unfiltered = referrers(api, "refs/filter", subject.digest)
    assert "OCI-Filters-Applied" not in unfiltered.headers
    assert len(descriptors(unfiltered)) == 2


def test_referrers_of_unknown_subject_is_empty_index(api: httpx.Client) -> None:
    push_image(api, "refs/empty", "v1")
    response = referrers(api, "refs/empty", "sha256:" + "12" * 32)
    assert json.loads(response.content) == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    }


def test_referrers_invalid_digest_is_400(api: httpx.Client) -> None:
    push_image(api, "refs/invalid", "v1")
    for digest in ("sha256:zz", "notadigest", "sha256:" + "a" * 63):
        response = api.get(f"/v2/refs/invalid/referrers/{digest}")
        assert_error(response, 400, "DIGEST_INVALID")


def test_referrers_index_without_artifact_type(api: httpx.Client) -> None:
    """An index referrer without artifactType has none in its descriptor (spec)."""
    subject = push_image(api, "refs/plainindex", "v1").manifest
    child = push_image(api, "refs/plainindex").manifest
    index = oci_index([child], subject=subject)
    push_manifest(api, "refs/plainindex", index.digest, index)
    found = descriptors(referrers(api, "refs/plainindex", subject.digest))
    assert found == expected((index, None))
    assert "artifactType" not in found[0]


def test_referrers_are_scoped_to_the_repository(api: httpx.Client) -> None:
    subject = push_image(api, "refs/here", "v1").manifest
    push_image(api, "refs/there", "v1")
    push_artifact(api, "refs/there", subject, SBOM)
    assert descriptors(referrers(api, "refs/here", subject.digest)) == []
    assert len(descriptors(referrers(api, "refs/there", subject.digest))) == 1


def test_deleted_referrer_disappears(api: httpx.Client) -> None:
    subject = push_image(api, "refs/deleted", "v1").manifest
    kept = push_artifact(api, "refs/deleted", subject, SBOM)
    gone = push_artifact(api, "refs/deleted", subject, SIGNATURE)
    assert api.delete(f"/v2/refs/deleted/manifests/{gone.digest}").status_code == 202
    assert descriptors(referrers(api, "refs/deleted", subject.digest)) == expected((kept, SBOM))
