"""Pushing, pulling and deleting manifests of every kind the registry stores."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx

from tests.support.api_helpers import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Manifest,
    assert_error,
    docker_manifest,
    docker_manifest_list,
    get_manifest,
    make_blob,
    make_config,
    oci_index,
    oci_manifest,
    push_blob,
    push_image,
    push_manifest,
    put_manifest,
    sha256_digest,
)

UNKNOWN_DIGEST = "sha256:" + "cd" * 32


def assert_serves(client: httpx.Client, repo: str, reference: str, manifest: Manifest) -> None:
    """GET and HEAD by ``reference`` give the pushed bytes with the stored media type."""
    response = get_manifest(client, repo, reference)
    assert response.status_code == 200, response.text
    assert response.content == manifest.body
    assert response.headers["Content-Type"] == manifest.media_type
    assert response.headers["Docker-Content-Digest"] == manifest.digest
    assert response.headers["Content-Length"] == str(manifest.size)
    head = get_manifest(client, repo, reference, method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Type"] == manifest.media_type
    assert head.headers["Docker-Content-Digest"] == manifest.digest
    assert head.headers["Content-Length"] == str(manifest.size)


def test_put_oci_manifest_by_tag(api: httpx.Client) -> None:
    config = make_config()
    layers = [make_blob(1000), make_blob(1200)]
    for blob in (config, *layers):
        push_blob(api, "manifests/oci", blob)
    manifest = oci_manifest(config, layers)
    response = put_manifest(api, "manifests/oci", "v1", manifest)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == manifest.digest
    # Any pullable URL will do (spec); Distribution names the digest.
    location = urlsplit(response.headers["Location"]).path
    assert location in (
        f"/v2/manifests/oci/manifests/{manifest.digest}",
        "/v2/manifests/oci/manifests/v1",
    )
    assert get_manifest(api, "manifests/oci", location.rsplit("/", 1)[1]).content == manifest.body
    assert_serves(api, "manifests/oci", "v1", manifest)
    assert_serves(api, "manifests/oci", manifest.digest, manifest)


def test_oci_manifest_without_media_type_field(api: httpx.Client) -> None:
    """``mediaType`` is optional in an OCI manifest; Content-Type then says what it is."""
    config = make_config()
    push_blob(api, "manifests/nomediatype", config)
    body = json.dumps({"schemaVersion": 2, "config": config.descriptor(), "layers": []}).encode()
    manifest = Manifest(body, OCI_MANIFEST)
    push_manifest(api, "manifests/nomediatype", "v1", manifest)
    assert_serves(api, "manifests/nomediatype", "v1", manifest)


def test_docker_schema2_manifest(api: httpx.Client) -> None:
    image = push_image(api, "manifests/docker", "latest", docker=True)
    assert image.manifest.media_type == DOCKER_MANIFEST
    assert_serves(api, "manifests/docker", "latest", image.manifest)
    assert_serves(api, "manifests/docker", image.manifest.digest, image.manifest)


def test_docker_manifest_list(api: httpx.Client) -> None:
    children = [push_image(api, "manifests/dockerlist", docker=True).manifest for _ in range(2)]
    manifest_list = docker_manifest_list(children)
    push_manifest(api, "manifests/dockerlist", "multi", manifest_list)
    assert_serves(api, "manifests/dockerlist", "multi", manifest_list)
    assert manifest_list.media_type == DOCKER_MANIFEST_LIST
    for child in children:
        assert_serves(api, "manifests/dockerlist", child.digest, child)


def test_oci_index(api: httpx.Client) -> None:
    children = [push_image(api, "manifests/index").manifest for _ in range(2)]
    index = oci_index(children, annotations={"org.example.note": "two platforms"})
    push_manifest(api, "manifests/index", "multi", index)
    assert_serves(api, "manifests/index", "multi", index)
    assert_serves(api, "manifests/index", index.digest, index)


def test_nested_index(api: httpx.Client) -> None:
    inner = oci_index([push_image(api, "manifests/nested").manifest])
    push_manifest(api, "manifests/nested", inner.digest, inner)
    outer = oci_index([inner])
    push_manifest(api, "manifests/nested", "outer", outer)
    assert_serves(api, "manifests/nested", "outer", outer)


def test_put_by_digest_is_tagless(api: httpx.Client) -> None:
    push_image(api, "manifests/tagless", "keep")
    image = push_image(api, "manifests/tagless")
    assert_serves(api, "manifests/tagless", image.manifest.digest, image.manifest)
    tags = api.get("/v2/manifests/tagless/tags/list").json()["tags"]
    assert tags == ["keep"]


def test_manifest_with_no_layers(api: httpx.Client) -> None:
    config = make_config()
    push_blob(api, "manifests/nolayers", config)
    manifest = oci_manifest(config, [])
    push_manifest(api, "manifests/nolayers", "empty", manifest)
    assert_serves(api, "manifests/nolayers", "empty", manifest)


def test_artifact_manifests(api: httpx.Client) -> None:
    """OCI 1.1 artifacts: a custom config media type, or artifactType with the empty config."""
    custom_config = Blob(b'{"kind":"example"}', "application/vnd.example.config.v1+json")
    empty_config = Blob(EMPTY_JSON, OCI_EMPTY)
    layer = make_blob(100, "application/vnd.example.data.v1")
    for blob in (custom_config, empty_config, layer):
        push_blob(api, "manifests/artifacts", blob)
    by_config = oci_manifest(custom_config, [layer])
    by_artifact_type = oci_manifest(
        empty_config, [layer], artifact_type="application/vnd.example.sbom.v1"
    )
    push_manifest(api, "manifests/artifacts", "config-type", by_config)
    push_manifest(api, "manifests/artifacts", "artifact-type", by_artifact_type)
    assert_serves(api, "manifests/artifacts", "config-type", by_config)
    assert_serves(api, "manifests/artifacts", "artifact-type", by_artifact_type)


def test_same_manifest_pushed_twice(api: httpx.Client) -> None:
    image = push_image(api, "manifests/twice", "a")
    push_manifest(api, "manifests/twice", "a", image.manifest)
    push_manifest(api, "manifests/twice", "b", image.manifest)
    assert_serves(api, "manifests/twice", "b", image.manifest)


def test_retagging_moves_the_tag(api: httpx.Client) -> None:
    first = push_image(api, "manifests/retag", "stable")
    second = push_image(api, "manifests/retag", "other")
    push_manifest(api, "manifests/retag", "stable", second.manifest)
    assert_serves(api, "manifests/retag", "stable", second.manifest)
    # The old manifest stays reachable by digest.
    assert_serves(api, "manifests/retag", first.manifest.digest, first.manifest)


def test_missing_layer_is_manifest_blob_unknown(api: httpx.Client) -> None:
    config = make_config()
    present, missing = make_blob(100), make_blob(100)
    push_blob(api, "manifests/missinglayer", config)
    push_blob(api, "manifests/missinglayer", present)
    manifest = oci_manifest(config, [present, missing])
    response = put_manifest(api, "manifests/missinglayer", "v1", manifest)
    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
    assert get_manifest(api, "manifests/missinglayer", "v1").status_code == 404
    assert get_manifest(api, "manifests/missinglayer", manifest.digest).status_code == 404


def test_missing_config_is_manifest_blob_unknown(api: httpx.Client) -> None:
    config = make_config()
    layer = make_blob(100)
    push_blob(api, "manifests/missingconfig", layer)
    response = put_manifest(api, "manifests/missingconfig", "v1", oci_manifest(config, [layer]))
    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


def test_layer_from_another_repository_is_manifest_blob_unknown(api: httpx.Client) -> None:
    """Blobs are linked per repository: a layer pushed elsewhere does not count."""
    config = make_config()
    layer = make_blob(100)
    push_blob(api, "manifests/elsewhere", layer)
    push_blob(api, "manifests/here", config)
    response = put_manifest(api, "manifests/here", "v1", oci_manifest(config, [layer]))
    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


def test_docker_manifest_with_missing_layer(api: httpx.Client) -> None:
    config = make_config()
    push_blob(api, "manifests/dockermissing", config)
    manifest = docker_manifest(config, [make_blob(100)])
    response = put_manifest(api, "manifests/dockermissing", "v1", manifest)
    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_with_unknown_child_is_manifest_blob_unknown(api: httpx.Client) -> None:
    known = push_image(api, "manifests/badindex").manifest
    unknown = oci_manifest(make_config(), [make_blob(10)])
    response = put_manifest(api, "manifests/badindex", "v1", oci_index([known, unknown]))
    # Distribution uses MANIFEST_BLOB_UNKNOWN for a missing child manifest too.
    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
    listing = docker_manifest_list([unknown])
    response = put_manifest(api, "manifests/badindex", "v2", listing)
    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")


def test_malformed_json_is_manifest_invalid(api: httpx.Client) -> None:
    push_image(api, "manifests/malformed", "ok")
    for body in (b"{not json", b"", b"[]", b'"a string"'):
        response = api.put(
            "/v2/manifests/malformed/manifests/v1",
            content=body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert_error(response, 400, "MANIFEST_INVALID")
    assert get_manifest(api, "manifests/malformed", "v1").status_code == 404


def test_media_type_disagreeing_with_content_type_is_manifest_invalid(api: httpx.Client) -> None:
    image = push_image(api, "manifests/mismatch")
    response = put_manifest(api, "manifests/mismatch", "v1", image.manifest, DOCKER_MANIFEST)
    assert_error(response, 400, "MANIFEST_INVALID")
    docker_image = push_image(api, "manifests/mismatch", docker=True)
    response = put_manifest(api, "manifests/mismatch", "v2", docker_image.manifest, OCI_MANIFEST)
    assert_error(response, 400, "MANIFEST_INVALID")
    assert get_manifest(api, "manifests/mismatch", "v1").status_code == 404
    assert get_manifest(api, "manifests/mismatch", "v2").status_code == 404


def test_put_by_digest_that_does_not_match_body_is_digest_invalid(api: httpx.Client) -> None:
    image = push_image(api, "manifests/wrongdigest")
    other = sha256_digest(image.manifest.body + b" ")
    response = put_manifest(api, "manifests/wrongdigest", other, image.manifest)
    assert_error(response, 400, "DIGEST_INVALID")
    assert get_manifest(api, "manifests/wrongdigest", other).status_code == 404


def _padded_manifest(config: Blob, size: int) -> Manifest:
    """An OCI manifest of exactly ``size`` bytes, padded with an annotation."""

    def build(padding: int) -> bytes:
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [],
            "annotations": {"org.example.padding": "x" * padding},
        }
        return json.dumps(document).encode()

    overhead = len(build(0))
    body = build(size - overhead)
    assert len(body) == size
    return Manifest(body, OCI_MANIFEST)


def test_manifest_of_four_mebibytes_is_accepted(api: httpx.Client) -> None:
    """The spec asks registries to accept manifests of at least 4 MiB."""
    config = make_config()
    push_blob(api, "manifests/big", config)
    manifest = _padded_manifest(config, 4 * 1024 * 1024)
    push_manifest(api, "manifests/big", "v1", manifest)
    assert_serves(api, "manifests/big", "v1", manifest)


def test_oversized_manifest_is_413(api: httpx.Client) -> None:
    config = make_config()
    push_blob(api, "manifests/toobig", config)
    manifest = _padded_manifest(config, 4 * 1024 * 1024 + 1)
    response = put_manifest(api, "manifests/toobig", "v1", manifest)
    # The spec names the status (413) but no code; Distribution's code for it (with its
    # own 400) is MANIFEST_INVALID.
    assert_error(response, 413, "MANIFEST_INVALID")
    assert get_manifest(api, "manifests/toobig", "v1").status_code == 404


def test_invalid_tags_are_tag_invalid(api: httpx.Client) -> None:
    image = push_image(api, "manifests/badtags")
    for tag in ("-bad", ".bad", "a" * 129, "a%2Fb", "bad%20tag"):
        response = put_manifest(api, "manifests/badtags", tag, image.manifest)
        assert_error(response, 400, "TAG_INVALID")
    tags = api.get("/v2/manifests/badtags/tags/list").json()["tags"]
    assert not tags


def test_longest_valid_tag(api: httpx.Client) -> None:
    image = push_image(api, "manifests/longtag")
    tag = "_" + "a" * 127
    push_manifest(api, "manifests/longtag", tag, image.manifest)
    assert_serves(api, "manifests/longtag", tag, image.manifest)


def test_unknown_tag_is_manifest_unknown(api: httpx.Client) -> None:
    push_image(api, "manifests/unknowntag", "present")
    assert_error(get_manifest(api, "manifests/unknowntag", "absent"), 404, "MANIFEST_UNKNOWN")
    head = get_manifest(api, "manifests/unknowntag", "absent", method="HEAD")
    assert head.status_code == 404
    assert head.content == b""


def test_unknown_digest_is_manifest_unknown(api: httpx.Client) -> None:
    push_image(api, "manifests/unknowndigest", "present")
    response = get_manifest(api, "manifests/unknowndigest", UNKNOWN_DIGEST)
    assert_error(response, 404, "MANIFEST_UNKNOWN")


def test_unknown_repository(api: httpx.Client) -> None:
    response = get_manifest(api, "manifests/never/pushed", "latest")
    # The conformance suite accepts either code for a repository that does not exist.
    assert_error(response, 404, "NAME_UNKNOWN", "MANIFEST_UNKNOWN")


def test_delete_by_digest(api: httpx.Client) -> None:
    push_image(api, "manifests/delete", "survivor")
    image = push_image(api, "manifests/delete", "doomed")
    push_manifest(api, "manifests/delete", "doomed-too", image.manifest)
    response = api.delete(f"/v2/manifests/delete/manifests/{image.manifest.digest}")
    assert response.status_code == 202
    for reference in (image.manifest.digest, "doomed", "doomed-too"):
        assert_error(get_manifest(api, "manifests/delete", reference), 404, "MANIFEST_UNKNOWN")
    tags = api.get("/v2/manifests/delete/tags/list").json()["tags"]
    assert tags == ["survivor"]
    # Its layers are untouched: only garbage collection removes blobs.
    assert api.head(f"/v2/manifests/delete/blobs/{image.layers[0].digest}").status_code == 200


def test_delete_unknown_manifest_is_manifest_unknown(api: httpx.Client) -> None:
    push_image(api, "manifests/deleteunknown", "v1")
    response = api.delete(f"/v2/manifests/deleteunknown/manifests/{UNKNOWN_DIGEST}")
    assert_error(response, 404, "MANIFEST_UNKNOWN")


def test_delete_by_tag_removes_only_the_tag(api: httpx.Client) -> None:
    image = push_image(api, "manifests/deletetag", "gone")
    push_manifest(api, "manifests/deletetag", "kept", image.manifest)
    response = api.delete("/v2/manifests/deletetag/manifests/gone")
    assert response.status_code == 202
    assert_error(get_manifest(api, "manifests/deletetag", "gone"), 404, "MANIFEST_UNKNOWN")
    assert_serves(api, "manifests/deletetag", image.manifest.digest, image.manifest)
    assert_serves(api, "manifests/deletetag", "kept", image.manifest)
    assert api.get("/v2/manifests/deletetag/tags/list").json()["tags"] == ["kept"]
    again = api.delete("/v2/manifests/deletetag/manifests/gone")
    assert_error(again, 404, "MANIFEST_UNKNOWN")


def test_put_with_subject_returns_oci_subject_header(api: httpx.Client) -> None:
    subject = push_image(api, "manifests/subject", "base").manifest
    config = Blob(EMPTY_JSON, OCI_EMPTY)
    layer = make_blob(50, "application/vnd.example.signature.v1")
    push_blob(api, "manifests/subject", config)
    push_blob(api, "manifests/subject", layer)
    artifact = oci_manifest(
        config, [layer], artifact_type="application/vnd.example.signature.v1", subject=subject
    )
    response = put_manifest(api, "manifests/subject", artifact.digest, artifact)
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject.digest
    assert_serves(api, "manifests/subject", artifact.digest, artifact)


def test_put_without_subject_has_no_oci_subject_header(api: httpx.Client) -> None:
    config = make_config()
    push_blob(api, "manifests/nosubject", config)
    response = put_manifest(api, "manifests/nosubject", "v1", oci_manifest(config))
    assert response.status_code == 201
    assert "OCI-Subject" not in response.headers


def test_index_media_type_is_served(api: httpx.Client) -> None:
    child = push_image(api, "manifests/indextype").manifest
    index = oci_index([child])
    push_manifest(api, "manifests/indextype", "idx", index)
    response = get_manifest(api, "manifests/indextype", "idx")
    assert response.headers["Content-Type"] == OCI_INDEX


def test_manifest_is_not_readable_from_another_repository(api: httpx.Client) -> None:
    """Manifests are linked per repository, like blobs: a digest alone opens nothing."""
    image = push_image(api, "manifests/private", "v1")
    push_image(api, "manifests/public", "v1")
    response = get_manifest(api, "manifests/public", image.manifest.digest)
    assert_error(response, 404, "MANIFEST_UNKNOWN")
    response = api.delete(f"/v2/manifests/public/manifests/{image.manifest.digest}")
    assert_error(response, 404, "MANIFEST_UNKNOWN")
    assert_serves(api, "manifests/private", image.manifest.digest, image.manifest)
