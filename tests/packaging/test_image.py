"""The container image: built from the Dockerfile with buildah, pushed into Dockyard and
pulled back with identical digests, then run with podman as the registry:2 how-to runs
registry:2 (``docker run -d -p 5000:5000 -v /opt/data/registry:/var/lib/registry``).

The base image is a Debian 12 minbase made here (see ``containers.py``): this machine
cannot reach Docker Hub, where the Dockerfile's default base lives.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.packaging.containers import Container, Storage, build_image, make_base_image
from tests.support.images import ALL_MANIFEST_TYPES, make_image, skopeo, write_oci_layout
from tests.support.servers import ServerProcess, free_port

BUILT = "localhost/dockyard:test"
REPOSITORY = "dockyard/registry"
UID = 10000

pytestmark = pytest.mark.timeout(900)


@dataclass
class PulledImage:
    storage: Storage  # a storage that has only what podman pulled from Dockyard
    reference: str  # the image there, as pulled: 127.0.0.1:PORT/dockyard/registry:test
    digest: str
    config: dict[str, object]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulledImage]:
    """Built with buildah, pushed into a Dockyard server, pulled back by podman."""
    workdir = tmp_path_factory.mktemp("image")
    build = Storage(workdir / "build-storage")
    pulled = Storage(workdir / "pull-storage")
    registry = ServerProcess("dockyard", workdir / "registry")
    try:
        base = make_base_image(build, workdir)
        build_image(build, BUILT, base)
        registry.start()
        reference = f"{registry.host}/{REPOSITORY}:test"
        digest_file = workdir / "pushed.digest"
        build.buildah(
            "push",
            "--tls-verify=false",
            "--digestfile",
            str(digest_file),
            BUILT,
            f"docker://{reference}",
            timeout=300,
        )
        pushed = digest_file.read_text().strip()
        build.close()  # only the copy that went through Dockyard is used from here on
        stored = httpx.head(
            f"{registry.url}/v2/{REPOSITORY}/manifests/test",
            headers={"Accept": ALL_MANIFEST_TYPES},
        )
        assert stored.status_code == 200
        assert stored.headers["Docker-Content-Digest"] == pushed

        pulled.podman("pull", "--tls-verify=false", reference, timeout=300)
        listed = json.loads(pulled.podman("images", "--digests", "--format", "json"))
        assert [entry["Digest"] for entry in listed] == [pushed]
        config = json.loads(
            skopeo("inspect", "--tls-verify=false", "--config", "--raw", f"docker://{reference}")
        )
        yield PulledImage(pulled, reference, pushed, config)
    finally:
        registry.stop()
        build.close()
        pulled.close()


def test_image_is_laid_out_as_registry_2(image: PulledImage) -> None:
    config = image.config["config"]
    assert isinstance(config, dict)
    assert config["Entrypoint"] == ["/usr/local/bin/docker-entrypoint.sh"]
    assert config["Cmd"] == ["/etc/docker/registry/config.yml"]
    assert config["Volumes"] == {"/var/lib/registry": {}}
    assert config["ExposedPorts"] == {"5000/tcp": {}}
    assert config["Healthcheck"]["Test"][0] == "CMD"
    storage = image.storage
    # The image's files, read without starting a container (vfs copies the whole tree
    # for each one): registry:2's configuration file, which Dockyard reads as it is.
    rootfs = Path(storage.podman("image", "mount", image.reference).strip())
    try:
        shipped = (rootfs / "etc/docker/registry/config.yml").read_text()
        entrypoint = rootfs / "usr/local/bin/docker-entrypoint.sh"
        assert entrypoint.stat().st_mode & 0o111
        assert (rootfs / "opt/dockyard/bin/dockyard").exists()
        # The server's own files came with it: the web UI's templates and assets.
        site = next((rootfs / "opt/dockyard/lib").glob("python3*/site-packages"))
        assert (site / "dockyard/web/templates/base.html").exists()
        assert (site / "dockyard/web/static/ui.css").exists()
        # Nothing the build alone needed: no pip in the environment, no apt lists.
        assert not (site / "pip").exists()
        assert list((rootfs / "var/lib/apt/lists").glob("*Packages*")) == []
        passwd = (rootfs / "etc/passwd").read_text()
        assert f"dockyard:x:{UID}:{UID}:" in passwd
    finally:
        storage.podman("image", "unmount", image.reference)
    expected = yaml.safe_load((Path(__file__).parents[2] / "packaging/config.yml").read_text())
    assert yaml.safe_load(shipped) == expected
    assert expected["storage"]["filesystem"]["rootdirectory"] == "/var/lib/registry"
    assert "delete" not in expected["storage"]


def test_seed_docker_run_serves_pushes_as_a_non_root_user(
    image: PulledImage, tmp_path: Path
) -> None:
    # mkdir -p /opt/data/registry, as root, then the seed's docker run.
    data = tmp_path / "opt-data-registry"
    data.mkdir(mode=0o755)
    container = Container(image.storage, "dockyard-seed")
    try:
        container.start(image.reference, "--volume", f"{data}:/var/lib/registry")
        answer = httpx.get(container.url + "/v2/")
        assert answer.status_code == 200
        assert answer.headers["Docker-Distribution-Api-Version"] == "registry/2.0"

        # The server runs as the dockyard user, never as root.
        top = container.storage.podman("top", container.name, "user", "args")
        users = {line.split()[0] for line in top.splitlines()[1:] if line.strip()}
        assert users == {"dockyard"}, top
        # The HEALTHCHECK command passes (podman runs it on demand; timers need systemd).
        health = subprocess.run(
            container.storage.podman_command("healthcheck", "run", container.name),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert health.returncode == 0, health.stdout + health.stderr

        pushed = make_image("container-seed", layers=2)
        layout = write_oci_layout(tmp_path / "layout", {"v1": pushed})
        destination = f"docker://{container.host}/zhang/nginx:1.17"
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", destination)
        head = httpx.head(
            f"{container.url}/v2/zhang/nginx/manifests/1.17", headers={"Accept": ALL_MANIFEST_TYPES}
        )
        assert head.headers["Docker-Content-Digest"] == pushed.manifest.digest
        copied = tmp_path / "copied"
        skopeo("copy", "--src-tls-verify=false", destination, f"oci:{copied}:v1")
        index = json.loads((copied / "index.json").read_text())
        assert index["manifests"][0]["digest"] == pushed.manifest.digest
        # registry:2's configuration: deletes are off until the config turns them on.
        refused = httpx.delete(f"{container.url}/v2/zhang/nginx/manifests/{pushed.manifest.digest}")
        assert refused.status_code == 405

        check_compose_ui(image, container, tmp_path)

        # The images are in the host directory, owned by the dockyard user (uid 10000).
        blobs = data / "docker/registry/v2/blobs/sha256"
        assert blobs.is_dir()
        owners = {path.lstat().st_uid for path in data.rglob("*")} | {data.stat().st_uid}
        assert owners == {UID}

        # docker stop: SIGTERM, the server drains and exits 0 well before the SIGKILL.
        assert container.stop(grace=20) == 0
    finally:
        container.remove()


def test_seed_config_and_garbage_collect_on_a_store_written_as_root(
    image: PulledImage, tmp_path: Path
) -> None:
    # A store registry:2 filled running as root: here Distribution 2.8.2, as root.
    data = tmp_path / "opt-data-registry"
    old = ServerProcess("distribution", tmp_path / "distribution", root=data)
    old.start()
    try:
        kept, dropped = make_image("kept", layers=2), make_image("dropped", layers=2)
        layout = write_oci_layout(tmp_path / "layout", {"kept": kept, "dropped": dropped})
        for tag in ("kept", "dropped"):
            skopeo(
                "copy",
                "--dest-tls-verify=false",
                f"oci:{layout}:{tag}",
                f"docker://{old.host}/zhang/{tag}:1",
            )
    finally:
        old.stop()
    assert {path.stat().st_uid for path in data.rglob("*")} == {0}

    # The seed's config.yml (deletes on), mounted where registry:2 reads it.
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"fields": {"service": "registry"}},
                "storage": {
                    "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"},
                    "filesystem": {"rootdirectory": "/var/lib/registry"},
                },
                "http": {"addr": ":5000", "headers": {"X-Content-Type-Options": ["nosniff"]}},
                "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
            }
        )
    )
    os.chmod(config, 0o644)
    container = Container(image.storage, "dockyard-seed-config")
    try:
        container.start(
            image.reference,
            "--volume",
            f"{data}:/var/lib/registry",
            "--volume",
            f"{config}:/etc/docker/registry/config.yml:ro",
        )
        # What Distribution wrote pulls with the same digest, and pushes still work.
        head = httpx.head(
            f"{container.url}/v2/zhang/kept/manifests/1", headers={"Accept": ALL_MANIFEST_TYPES}
        )
        assert head.headers["Docker-Content-Digest"] == kept.manifest.digest
        fresh = make_image("fresh", layers=1)
        fresh_layout = write_oci_layout(tmp_path / "fresh", {"v1": fresh})
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{fresh_layout}:v1",
            f"docker://{container.host}/zhang/fresh:1",
        )

        deleted = httpx.delete(
            f"{container.url}/v2/zhang/dropped/manifests/{dropped.manifest.digest}"
        )
        assert deleted.status_code == 202
        # The seed's `docker exec registry registry garbage-collect CONFIG`, as the
        # dockyard user so that what it writes stays the server's. Blobs written in the
        # last 0.4 * settle seconds are left alone (a push may be about to use them).
        time.sleep(1.0)
        report = container.exec(
            "dockyard", "garbage-collect", "--settle", "1", "/etc/docker/registry/config.yml"
        )
        gone = dropped.all_digests
        for digest in gone:
            assert f"blob eligible for deletion: {digest}" in report, report
        blobs = data / "docker/registry/v2/blobs/sha256"
        for digest in gone:
            assert not (blobs / digest[7:9] / digest[7:]).exists()
        for blob in (*kept.layers, kept.config, *fresh.layers):
            assert (blobs / blob.digest[7:9] / blob.digest[7:] / "data").exists()
        assert {path.lstat().st_uid for path in data.rglob("*")} == {UID}
        assert container.stop() == 0
    finally:
        container.remove()


def test_compose_registry_service_is_the_seed_docker_run() -> None:
    compose = yaml.safe_load((Path(__file__).parents[2] / "compose.yaml").read_text())
    registry = compose["services"]["registry"]
    assert registry["build"] == "."
    assert registry["ports"] == ["5000:5000"]
    assert "/opt/data/registry:/var/lib/registry" in registry["volumes"]
    ui = compose["services"]["ui"]
    assert ui["image"] == registry["image"]
    assert ui["depends_on"]["registry"]["condition"] == "service_healthy"


def check_compose_ui(image: PulledImage, registry: Container, tmp_path: Path) -> None:
    """compose.yaml's ``ui`` service, run from the image as Compose would run it.

    Compose itself is not installed here, nor a network where containers find each other
    by name: the service's command, environment and health check come from compose.yaml,
    with the registry's address and the UI's port on the host's loopback in place of
    ``registry:5000`` and ``8080``.
    """
    compose = yaml.safe_load((Path(__file__).parents[2] / "compose.yaml").read_text())
    service = compose["services"]["ui"]
    assert service["environment"]["REGISTRY_URL"] == "http://registry:5000/v2"
    port = free_port()
    environment = {**service["environment"], "REGISTRY_URL": f"{registry.url}/v2"}
    command = [f"127.0.0.1:{port}" if arg == ":8080" else arg for arg in service["command"]]
    health = [
        arg.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for arg in service["healthcheck"]["test"]
    ]
    name = "dockyard-compose-ui"
    assert health[0] == "CMD"
    options = ["--detach", "--name", name, "--network", "host"]
    for key, value in environment.items():
        options += ["--env", f"{key}={value}"]
    try:
        image.storage.podman_run(*options, image.reference, *command)
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/ui/", timeout=2.0)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, image.storage.podman("logs", name)
                time.sleep(0.2)
        assert page.status_code == 200
        assert "zhang/nginx" in page.text
        # The health check's command, run in the container as Docker runs it (podman
        # 4.3 takes --health-cmd only as one string split at spaces).
        checked = subprocess.run(
            image.storage.podman_command("exec", name, *health[1:]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        top = image.storage.podman("top", name, "user", "args")
        assert "dockyard ui" in top and {
            line.split()[0] for line in top.splitlines()[1:] if line.strip()
        } == {"dockyard"}, top
    finally:
        subprocess.run(
            image.storage.podman_command("rm", "--force", name),
            capture_output=True,
            timeout=60,
            check=False,
        )
