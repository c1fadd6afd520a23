"""The seed's last part, end to end: delete a manifest with curl, ``du`` unchanged,
``registry garbage-collect``, ``du`` shrinks.

Two images share a base layer (the seed's nginx and centos both sit on a distribution's
base), are pushed with skopeo into two repositories, and one is deleted by digest. The
collection must free exactly what only the deleted image used (its own layers, its
config, its manifest) and nothing the other image needs, whether the registry keeps
serving during the collection (Dockyard's promise) or is stopped (Distribution's rule).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dockyard.cli import ALONE_NOTICE
from tests.support.gc_images import error_code, get_manifest, image_with_layers, make_layer
from tests.support.gc_store import (
    LINK_SIZE,
    V2,
    dockyard_gc,
    store_size,
    stored_blobs,
    wait_until_indexed,
    wait_until_quiet,
    wait_until_settled,
)
from tests.support.images import Image, read_oci_layout, skopeo, skopeo_fails, write_oci_layout
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]

PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"
REMOTE = "--tls-verify=false"

NGINX, NGINX_TAG = "zhang/nginx", "1.17"
CENTOS, CENTOS_TAG = "zhang/centos", "7.7.1908"


def seed_images() -> tuple[Image, Image]:
    """nginx: base + two layers of its own; centos: the same base + one of its own."""
    base = make_layer("seed-base", files=4, file_size=16384)
    nginx = image_with_layers(
        "nginx", [base, make_layer("seed-nginx-1", file_size=8192), make_layer("seed-nginx-2")]
    )
    centos = image_with_layers("centos", [base, make_layer("seed-centos-1", file_size=8192)])
    assert nginx.layers[0].digest == centos.layers[0].digest
    return nginx, centos


def assert_pulls_intact(server: ServerProcess, reference: str, image: Image, into: Path) -> None:
    """skopeo pulls the image with every digest equal to what was pushed."""
    skopeo("copy", PULL, f"docker://{server.host}/{reference}", f"oci:{into}:pulled")
    pulled = read_oci_layout(into)  # checks every blob hashes to its name
    assert pulled.tags == {"pulled": image.digest}
    assert set(pulled.blobs) == image.all_digests
    assert pulled.blobs[image.digest] == image.manifest.data


@pytest.mark.parametrize("server_running", [True, False], ids=["while-serving", "server-stopped"])
def test_delete_then_garbage_collect_frees_exactly_the_deleted_image(
    server_factory: ServerFactory, tmp_path: Path, server_running: bool
) -> None:
    server = server_factory("dockyard")  # storage.delete.enabled: true, gc defaults (delay 1h)
    nginx, centos = seed_images()
    layout = write_oci_layout(tmp_path / "src", {"nginx": nginx, "centos": centos})
    skopeo("copy", PUSH, f"oci:{layout}:nginx", f"docker://{server.host}/{NGINX}:{NGINX_TAG}")
    skopeo("copy", PUSH, f"oci:{layout}:centos", f"docker://{server.host}/{CENTOS}:{CENTOS_TAG}")

    root = server.root
    blobs_before = stored_blobs(root)
    # The shared base is stored once: 3 + 2 layers, 2 configs, 2 manifests, minus one.
    assert set(blobs_before) == nginx.all_digests | centos.all_digests
    assert len(blobs_before) == 8
    wait_until_settled(root)
    size_before = store_size(root)

    # The seed's step: `curl -I -X DELETE .../manifests/<digest>` → 202.
    response = httpx.delete(f"{server.url}/v2/{NGINX}/manifests/{nginx.digest}")
    assert response.status_code == 202, response.text
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"

    # "du unchanged": the blobs are all still there; only link files went: the tag's
    # current link, and the revision link, whose file the tag's history entry shares.
    wait_until_indexed(root, NGINX)
    assert stored_blobs(root) == blobs_before
    assert store_size(root) == size_before - 2 * LINK_SIZE
    with httpx.Client() as client:
        assert get_manifest(client, server.url, NGINX, nginx.digest).status_code == 404

    unique = nginx.all_digests - centos.all_digests  # two layers, config, manifest
    assert len(unique) == 4
    freed = sum(blobs_before[d] for d in unique)
    assert freed == sum(b.size for b in nginx.layers[1:]) + nginx.config.size + nginx.manifest.size

    if not server_running:
        server.stop()
    # Blob data touched less than 0.4 * settle ago may be held by a push: wait just past it.
    wait_until_quiet(root / V2 / "blobs", 0.5)
    run = dockyard_gc(server.config_path, "--settle", "1")
    # Stopped, the server holds nothing: the collection has the store alone and deletes
    # in place; serving, it is not alone and sets candidates aside.
    assert (ALONE_NOTICE in run.stdout) == (not server_running), run.stdout

    # The output names exactly the deleted image's blobs, as the seed's run does.
    assert run.eligible_blobs == unique, run.stdout
    assert run.deleted_blobs == unique, run.stdout
    for digest in unique:
        hex_ = digest.removeprefix("sha256:")
        assert f"Deleting blob: /docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}" in run.stdout
    assert f"{len(unique)} blobs and 0 manifests deleted" in run.summary, run.summary
    assert f"{freed} bytes freed" in run.summary, run.summary

    # "du shrinks" by exactly those bytes, plus the four layer links of the now empty
    # repository (nothing in zhang/nginx uses its base, config or layer links any more),
    # less the small record of this collection kept for the API and the UI.
    assert stored_blobs(root) == {d: s for d, s in blobs_before.items() if d not in unique}
    bookkeeping = store_size(root / V2 / "_dockyard" / "gc")
    assert 0 < bookkeeping < 4096
    assert store_size(root) - bookkeeping == (size_before - 2 * LINK_SIZE - freed - 4 * LINK_SIZE)
    assert list((root / V2 / "repositories" / NGINX).rglob("link")) == []

    if not server_running:
        server.start()
    assert_pulls_intact(server, f"{CENTOS}:{CENTOS_TAG}", centos, tmp_path / "centos")
    with httpx.Client() as client:
        gone = get_manifest(client, server.url, NGINX, nginx.digest)
        assert (gone.status_code, error_code(gone)) == (404, "MANIFEST_UNKNOWN"), gone.text
        for layer in nginx.layers[1:]:
            blob = client.get(f"{server.url}/v2/{NGINX}/blobs/{layer.digest}")
            assert (blob.status_code, error_code(blob)) == (404, "BLOB_UNKNOWN"), blob.text
    error = skopeo_fails("inspect", "--raw", REMOTE, f"docker://{server.host}/{NGINX}:{NGINX_TAG}")
    assert "manifest unknown" in error

    # A second collection finds nothing more: the kept image is complete and referenced.
    wait_until_quiet(root / V2 / "blobs", 0.5)
    again = dockyard_gc(server.config_path, "--settle", "1")
    assert again.eligible_blobs == set(), again.stdout
    assert stored_blobs(root) == {d: s for d, s in blobs_before.items() if d not in unique}
