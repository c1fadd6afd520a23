"""oras-py (the ``oras`` package) against a running registry: OCI artifacts.

Artifacts are not container images: arbitrary config and layer media types, files
named by annotations, OCI 1.1's ``artifactType`` with the empty config. A registry
that only copes with images breaks here. ``insecure=True`` makes oras-py talk plain
HTTP, which is what the fixture serves.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import httpx
import oras.client
import pytest

from tests.support.images import sha256_digest
from tests.support.servers import ServerProcess

DATA_TYPE = "application/vnd.dockyard.test.data.v1"
TEXT_TYPE = "text/plain"
CONFIG_TYPE = "application/vnd.dockyard.test.config.v1+json"
ARTIFACT_TYPE = "application/vnd.dockyard.test.sbom.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"


@pytest.fixture
def client(registry: ServerProcess) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=registry.host, insecure=True)


def make_files(directory: Path, seed: str) -> dict[str, bytes]:
    """A binary and a text file, their contents a function of the seed."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    files = {
        "payload.bin": rng.randbytes(rng.randint(10_000, 20_000)),
        "notes.txt": f"artifact {seed}\n".encode() * 50,
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return files


def raw_manifest(registry: ServerProcess, repository: str, reference: str) -> httpx.Response:
    response = httpx.get(
        f"{registry.url}/v2/{repository}/manifests/{reference}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert response.status_code == 200, response.text
    return response


def test_push_pull_files_round_trip(
    client: oras.client.OrasClient, registry: ServerProcess, tmp_path: Path
) -> None:
    files = make_files(tmp_path / "src", "files")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"purpose": "dockyard test"}))
    target = f"{registry.host}/oras/files:v1"

    response = client.push(
        target,
        files=[
            f"{tmp_path / 'src' / 'payload.bin'}:{DATA_TYPE}",
            f"{tmp_path / 'src' / 'notes.txt'}:{TEXT_TYPE}",
        ],
        manifest_config=f"{config}:{CONFIG_TYPE}",
        manifest_annotations={"org.opencontainers.image.description": "two files"},
        disable_path_validation=True,
    )
    assert response.status_code == 201
    pushed_digest = response.headers["Docker-Content-Digest"]

    # The digest the registry announced is the sha256 of the bytes it serves, by tag
    # and by digest alike.
    by_tag = raw_manifest(registry, "oras/files", "v1")
    assert sha256_digest(by_tag.content) == pushed_digest
    assert by_tag.headers["Docker-Content-Digest"] == pushed_digest
    assert raw_manifest(registry, "oras/files", pushed_digest).content == by_tag.content

    manifest = client.get_manifest(target)
    assert manifest == json.loads(by_tag.content)
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert manifest["config"]["digest"] == sha256_digest(config.read_bytes())
    assert [(l["mediaType"], l["annotations"][TITLE]) for l in manifest["layers"]] == [
        (DATA_TYPE, "payload.bin"),
        (TEXT_TYPE, "notes.txt"),
    ]

    outdir = tmp_path / "out"
    pulled = client.pull(target, outdir=str(outdir))
    assert sorted(Path(p).name for p in pulled) == sorted(files)
    for name, content in files.items():
        assert (outdir / name).read_bytes() == content


def test_chunked_push(client: oras.client.OrasClient, registry: ServerProcess, tmp_path: Path) -> None:
    """oras-py's chunked mode: POST, several PATCHes with Content-Range, PUT."""
    big = random.Random("chunked").randbytes(1_300_000)
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(big)
    target = f"{registry.host}/oras/chunked:v1"

    response = client.push(
        target,
        files=[f"{source / 'big.bin'}:{DATA_TYPE}"],
        disable_path_validation=True,
        do_chunked=True,
        chunk_size=256 * 1024,
    )
    assert response.status_code == 201

    manifest = client.get_manifest(target)
    assert manifest["layers"][0]["digest"] == "sha256:" + hashlib.sha256(big).hexdigest()
    outdir = tmp_path / "out"
    client.pull(target, outdir=str(outdir))
    assert (outdir / "big.bin").read_bytes() == big


def test_artifact_type_with_empty_config(
    client: oras.client.OrasClient, registry: ServerProcess, tmp_path: Path
) -> None:
    """An OCI 1.1 artifact: ``artifactType`` set, config is the empty descriptor."""
    files = make_files(tmp_path / "src", "sbom")
    container = client.get_container(f"{registry.host}/oras/sbom:v1")

    empty = tmp_path / "empty.json"
    empty.write_bytes(b"{}")
    config = {"mediaType": EMPTY_TYPE, "digest": sha256_digest(b"{}"), "size": 2}
    client._check_200_response(client.upload_blob(str(empty), container, config))

    layers = []
    for name, content in files.items():
        layer = {
            "mediaType": DATA_TYPE,
            "digest": sha256_digest(content),
            "size": len(content),
            "annotations": {TITLE: name},
        }
        client._check_200_response(
            client.upload_blob(str(tmp_path / "src" / name), container, layer)
        )
        layers.append(layer)

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
    }
    response = client.upload_manifest(manifest, container)
    assert response.status_code == 201, response.text
    digest = response.headers["Docker-Content-Digest"]
    # oras-py sends the manifest as requests' JSON encoding of the dict.
    assert digest == sha256_digest(response.request.body)

    served = raw_manifest(registry, "oras/sbom", digest)
    assert served.content == response.request.body
    assert json.loads(served.content)["artifactType"] == ARTIFACT_TYPE

    outdir = tmp_path / "out"
    client.pull(f"{registry.host}/oras/sbom:v1", outdir=str(outdir))
    for name, content in files.items():
        assert (outdir / name).read_bytes() == content
