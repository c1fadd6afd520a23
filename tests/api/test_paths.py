"""Repository names, and requests that try to reach outside the storage root.

Whatever the name, digest, reference or upload id, nothing may be read from or written
to the filesystem outside ``<root>/docker/registry/v2``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.support.api_helpers import (
    OCI_MANIFEST,
    RawResponse,
    assert_error,
    make_blob,
    push_blob,
    push_image,
    raw_request,
    registry_v2,
    sha256_digest,
    snapshot,
)
from tests.support.servers import ServerProcess

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")

INVALID_NAMES = {
    # The spec's grammar is lower case only (Distribution 2.8 takes "Upper" for a host).
    "upper-case": "Upper/case",
    "double-slash": "a//b",
    "leading-dash": "-a",
    "component-leading-dash": "a/-b",
    "double-dot": "a..b",
    "dot-segment": "a/../b",
    "trailing-separator": "a_",
    "too-long": "a" * 256,
    "too-long-components": "/".join(["a" * 100, "b" * 100, "c" * 54]),
}


def stored_repositories(root: Path) -> set[str]:
    """Repository names as Distribution recognises them: directories holding ``_layers``,
    ``_manifests`` or ``_uploads``."""
    base = registry_v2(root) / "repositories"
    if not base.exists():
        return set()
    names = set()
    for marker in ("_layers", "_manifests", "_uploads"):
        for path in base.rglob(marker):
            names.add(path.parent.relative_to(base).as_posix())
    return names


def assert_contained(registry: ServerProcess, outside_before: set[Path], workdir: Path) -> None:
    """Nothing changed outside the data root; nothing in it outside docker/registry/v2."""
    assert snapshot(workdir, exclude=registry.root) == outside_before
    v2 = registry_v2(registry.root)
    allowed = {registry.root / "docker", registry.root / "docker" / "registry"}
    for path in registry.root.rglob("*"):
        assert path in allowed or v2 == path or v2 in path.parents, path


@pytest.mark.parametrize("name", sorted(INVALID_NAMES))
def test_invalid_names_are_refused(registry: ServerProcess, tmp_path: Path, name: str) -> None:
    repo = INVALID_NAMES[name]
    before = snapshot(tmp_path, exclude=registry.root)
    blob = make_blob(20)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
    responses = [
        raw_request(registry.url, "POST", f"/v2/{repo}/blobs/uploads/"),
        raw_request(
            registry.url, "POST", f"/v2/{repo}/blobs/uploads/?digest={blob.digest}", blob.data
        ),
        raw_request(registry.url, "GET", f"/v2/{repo}/tags/list"),
        raw_request(registry.url, "GET", f"/v2/{repo}/blobs/{blob.digest}"),
        raw_request(
            registry.url,
            "PUT",
            f"/v2/{repo}/manifests/latest",
            manifest,
            {"Content-Type": OCI_MANIFEST},
        ),
    ]
    for response in responses:
        assert_refused_name(response)
    assert stored_repositories(registry.root) == set()
    assert_contained(registry, before, tmp_path)


def test_unusual_valid_names_are_accepted(api: httpx.Client, registry: ServerProcess) -> None:
    names = ["a.b-c_d/e__f", "x--y/0/z9", "/".join(["a" * 100, "b" * 100, "c" * 53])]
    for name in names:
        assert len(name) <= 255
        push_image(api, name, "v1", layer_count=1, layer_size=16)
    assert api.get("/v2/_catalog").json()["repositories"] == sorted(names)
    assert stored_repositories(registry.root) == set(names)


def is_safe_redirect(response: RawResponse) -> bool:
    """Go's ServeMux (Distribution) answers a path with ``..`` or ``//`` segments with a
    redirect to the cleaned path: safe, since nothing was read or written."""
    return response.status in (301, 307, 308) and response.headers["location"].startswith("/v2/")


def assert_refused_name(response: RawResponse) -> None:
    """A name the router cannot match is a 404; a matched but invalid one NAME_INVALID."""
    if is_safe_redirect(response):
        return
    assert response.status in (400, 404), (response.status, response.body[:200])
    if response.status == 400:
        assert json.loads(response.body)["errors"][0]["code"] == "NAME_INVALID"


def _check(response: RawResponse, secret: bytes) -> None:
    assert secret not in response.body
    assert response.status < 500, (response.status, response.body[:300])


def test_traversal_attempts_stay_inside_the_root(
    registry: ServerProcess, api: httpx.Client, tmp_path: Path
) -> None:
    secret = b"secret-" + make_blob(16).data.hex().encode()
    (tmp_path / "secret.txt").write_bytes(secret)
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "data").write_bytes(secret)
    image = push_image(api, "paths/repo", "v1")
    push_blob(api, "paths/other", make_blob(32))
    before = snapshot(tmp_path, exclude=registry.root)
    repos_before = stored_repositories(registry.root)

    blob = make_blob(64)
    upload = blob.data
    manifest_body = image.manifest.body
    up = "..%2F" * 8
    writes = [
        ("POST", "/v2/%2e%2e/%2e%2e/%2e%2e/escape/blobs/uploads/", b""),
        ("POST", f"/v2/a%2F{up}escape/blobs/uploads/", b""),
        ("POST", f"/v2/%2e%2e%2f%2e%2e%2fescape/blobs/uploads/?digest={blob.digest}", upload),
        ("POST", "/v2/paths/repo/../../../../escape/blobs/uploads/", b""),
        ("PUT", "/v2/%2e%2e%2f%2e%2e%2fescape/manifests/latest", manifest_body),
        ("PUT", f"/v2/paths/repo/manifests/{up}escape", manifest_body),
        ("PUT", "/v2/paths/repo/manifests/%2e%2e", manifest_body),
        ("PATCH", f"/v2/paths/repo/blobs/uploads/{up}escape", upload),
        ("PATCH", "/v2/paths/repo/blobs/uploads/%2e%2e", upload),
        ("PUT", f"/v2/paths/repo/blobs/uploads/{up}escape?digest={blob.digest}", upload),
        ("PUT", f"/v2/paths/repo/blobs/uploads/..%2F..%2F_layers?digest={blob.digest}", upload),
        ("DELETE", f"/v2/paths/repo/blobs/uploads/{up}escape", b""),
        ("DELETE", f"/v2/paths/repo/blobs/sha256:{up}escape", b""),
        ("DELETE", f"/v2/paths/repo/manifests/sha256:{up}escape", b""),
        ("DELETE", f"/v2/paths/repo/manifests/{up}escape", b""),
    ]
    layer = image.layers[0].digest
    # A mount the registry cannot do may start a plain upload (202, spec); never 201.
    mounts = [
        f"/v2/paths/repo/blobs/uploads/?mount=sha256:{up}escape&from=paths%2Fother",
        f"/v2/paths/target/blobs/uploads/?mount={layer}&from=..%2F..%2Fpaths%2Frepo",
        f"/v2/paths/target/blobs/uploads/?mount={layer}&from=paths%2F..%2Fpaths%2Frepo",
        f"/v2/paths/target/blobs/uploads/?mount={layer}&from=%2Fpaths%2Frepo",
    ]
    reads = [
        ("GET", f"/v2/paths/repo/blobs/sha256:{up}secret.txt"),
        ("GET", f"/v2/paths/repo/blobs/{up}secret.txt"),
        ("GET", f"/v2/paths/repo/blobs/sha256:%2e%2e%2f%2e%2e%2f{'%2e%2e%2f' * 6}secret.txt"),
        ("GET", f"/v2/paths/repo/manifests/{up}secret.txt"),
        ("GET", f"/v2/paths/repo/manifests/sha256:{up}escape%2Fdata"),
        ("GET", f"/v2/paths/repo/blobs/uploads/{up}escape"),
        ("GET", "/v2/paths/repo/blobs/uploads/%2e%2e%2f%2e%2e%2f%2e%2e"),
        ("GET", f"/v2/{up}escape/tags/list"),
        ("GET", "/v2/paths/repo/../../../../escape/tags/list"),
        ("GET", f"/v2/paths/repo/referrers/sha256:{up}escape"),
        ("HEAD", f"/v2/paths/repo/blobs/sha256:{up}secret.txt"),
    ]
    for method, path, body in writes:
        response = raw_request(
            registry.url, method, path, body, {"Content-Type": "application/octet-stream"}
        )
        _check(response, secret)
        assert not 200 <= response.status < 300, (method, path, response.status)
    for path in mounts:
        response = raw_request(registry.url, "POST", path)
        _check(response, secret)
        assert response.status != 201, path
    for method, path in reads:
        response = raw_request(registry.url, method, path)
        _check(response, secret)
        assert not 200 <= response.status < 300, (method, path, response.status)
    # Listing parameters are data, never paths.
    for path in (f"/v2/paths/repo/tags/list?last={up}escape", f"/v2/_catalog?last={up}escape"):
        _check(raw_request(registry.url, "GET", path), secret)

    # Only "paths/target" may have appeared: as a place for upload sessions of refused mounts.
    after = stored_repositories(registry.root)
    assert after - repos_before <= {"paths/target"}, after
    assert all(NAME_PATTERN.fullmatch(name) for name in after), after
    assert api.head(f"/v2/paths/target/blobs/{layer}").status_code == 404
    assert (tmp_path / "secret.txt").read_bytes() == secret
    assert (tmp_path / "escape" / "data").read_bytes() == secret
    assert_contained(registry, before, tmp_path)
    assert api.head(f"/v2/paths/repo/blobs/{blob.digest}").status_code == 404
    assert api.get(f"/v2/paths/repo/blobs/{image.layers[0].digest}").content == image.layers[0].data
    assert not any((registry_v2(registry.root) / "repositories").rglob("*escape*")), (
        "an 'escape' path was created inside the repositories tree"
    )


def test_blob_paths_are_derived_from_valid_digests_only(
    registry: ServerProcess, api: httpx.Client
) -> None:
    """A digest-shaped path component never names a file that is not a stored blob."""
    push_image(api, "paths/digests", "v1")
    blobs = registry_v2(registry.root) / "blobs" / "sha256"
    for entry in blobs.rglob("data"):
        hex_digest = entry.parent.name
        assert re.fullmatch(r"[a-f0-9]{64}", hex_digest), entry
        assert entry.parent.parent.name == hex_digest[:2]
        assert sha256_digest(entry.read_bytes()) == f"sha256:{hex_digest}"
    for digest in ("sha256:" + "a" * 64 + "/../x", "sha256:" + "A" * 64):
        response = raw_request(registry.url, "GET", f"/v2/paths/digests/blobs/{digest}")
        if is_safe_redirect(response):
            continue
        assert response.status in (400, 404), (digest, response.status)
        if response.status == 400:
            assert json.loads(response.body)["errors"][0]["code"] == "DIGEST_INVALID"


def test_name_invalid_error_body(registry: ServerProcess) -> None:
    """Where a name reaches a handler, the refusal is the spec's NAME_INVALID body."""
    with httpx.Client(base_url=registry.url) as client:
        response = client.post("/v2/" + "a" * 256 + "/blobs/uploads/")
        assert_error(response, 400, "NAME_INVALID")
