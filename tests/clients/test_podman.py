"""podman against a running registry: pull an image, push it elsewhere, pull it back.

podman runs here as root with the vfs storage driver in a private root, so the test
needs no daemon, no overlay support and leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import ALL_MANIFEST_TYPES, make_image, skopeo, write_oci_layout
from tests.support.servers import ServerProcess


@pytest.fixture
def podman_root(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    # podman refuses a run root longer than 50 characters, and pytest's are longer.
    run_root = Path(tempfile.mkdtemp(prefix="podman-"))
    yield tmp_path / "storage", run_root
    shutil.rmtree(run_root, ignore_errors=True)


def podman(roots: tuple[Path, Path], *args: str) -> str:
    storage, run_root = roots
    command = [
        "podman",
        "--storage-driver",
        "vfs",
        "--root",
        str(storage),
        "--runroot",
        str(run_root),
        *args,
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def manifest_digest(registry: ServerProcess, repository: str, tag: str) -> str:
    response = httpx.head(
        f"{registry.url}/v2/{repository}/manifests/{tag}", headers={"Accept": ALL_MANIFEST_TYPES}
    )
    assert response.status_code == 200
    return response.headers["Docker-Content-Digest"]


def test_podman_pull_push_and_pull_again(
    registry: ServerProcess, tmp_path: Path, podman_root: tuple[Path, Path]
) -> None:
    image = make_image("podman", layers=3)
    layout = write_oci_layout(tmp_path / "layout", {"v1": image})
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout}:v1",
        f"docker://{registry.host}/src/app:v1",
    )

    podman(podman_root, "pull", "--tls-verify=false", f"{registry.host}/src/app:v1")
    listed = json.loads(podman(podman_root, "images", "--digests", "--format", "json"))
    assert [entry["Digest"] for entry in listed] == [image.manifest.digest]

    podman(podman_root, "tag", f"{registry.host}/src/app:v1", f"{registry.host}/copy/app:v2")
    podman(podman_root, "push", "--tls-verify=false", f"{registry.host}/copy/app:v2")
    pushed = manifest_digest(registry, "copy/app", "v2")
    # podman may rewrite the manifest (it recompresses layers), but what it pushed must
    # be what it pulls back.
    podman(podman_root, "rmi", "--all", "--force")
    podman(podman_root, "pull", "--tls-verify=false", f"{registry.host}/copy/app:v2")
    listed = json.loads(podman(podman_root, "images", "--digests", "--format", "json"))
    assert [entry["Digest"] for entry in listed] == [pushed]
    config = json.loads(podman(podman_root, "image", "inspect", f"{registry.host}/copy/app:v2"))
    assert config[0]["Labels"]["dockyard.test.seed"] == "podman"
