"""buildah and podman on a private containers-storage, for the image tests.

Both run as root on the vfs storage driver (no overlay support or daemon needed) in a
storage root and run root of their own, so nothing outside the test's directories is
touched and everything goes when the test ends.

This machine reaches Debian's mirrors and PyPI but not Docker Hub, so the Dockerfile's
default base (``docker.io/library/debian:bookworm-slim``) cannot be pulled here. The
tests build a Debian 12 minbase with mmdebstrap from the host's apt sources instead and
pass it as the Dockerfile's ``BASE``: the same distribution and packages the Docker Hub
image is made from (by debootstrap's minbase variant), without its docs and locales.
The CA certificates the host adds in /usr/local/share/ca-certificates (a
TLS-intercepting proxy's, where there is one) are put into that base where Debian's
``ca-certificates`` picks them up, as an organisation's own base image carries its CA;
that is what lets pip inside the build reach PyPI from here.
"""

from __future__ import annotations

import json
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/dockyard-test/debian:bookworm"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def run(command: list[str], timeout: float, cwd: Path | None = None) -> str:
    """Run a command; a failure raises with its output."""
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result.stdout


class Storage:
    """A containers-storage (vfs) that buildah and podman share."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # podman refuses a run root longer than 50 characters; pytest's paths are longer.
        self.run_root = Path(tempfile.mkdtemp(prefix="dockyard-ctr-"))

    def _global(self) -> list[str]:
        return [
            "--root",
            str(self.root),
            "--runroot",
            str(self.run_root),
            "--storage-driver",
            "vfs",
        ]

    def buildah(self, *args: str, timeout: float = 120.0) -> str:
        return run(["buildah", *self._global(), *args], timeout)

    def podman_command(self, *args: str) -> list[str]:
        # runc: Debian 12's crun refuses to start containers where cgroup v1 and v2 are
        # mounted side by side (this machine); runc runs there and on cgroup v2 alike.
        return ["podman", *self._global(), "--runtime", "runc", *args]

    def podman(self, *args: str, timeout: float = 120.0) -> str:
        return run(self.podman_command(*args), timeout)

    def podman_run(self, *args: str, timeout: float = 120.0) -> str:
        """``podman run`` with resource limits this machine grants (see resource_limits)."""
        return self.podman("run", *resource_limits(), *args, timeout=timeout)

    def reference(self, image: str) -> str:
        """How skopeo names ``image`` in this storage."""
        return f"containers-storage:[vfs@{self.root}+{self.run_root}]{image}"

    def close(self) -> None:
        for command in (["podman", "rm", "--all", "--force"], ["buildah", "rm", "--all"]):
            tool, *rest = command
            subprocess.run(
                [tool, *self._global(), *rest], capture_output=True, timeout=120, check=False
            )
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.run_root, ignore_errors=True)


def make_base_image(storage: Storage, workdir: Path) -> str:
    """A Debian 12 minbase image in ``storage``, standing in for debian:bookworm-slim."""
    tarball = workdir / "bookworm-minbase.tar"
    command = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--quiet",
        # What the Docker Hub image leaves out too.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
    ]
    cas = sorted(LOCAL_CAS.glob("*.crt"))
    if cas:
        target = '"$1"' + shlex.quote(str(LOCAL_CAS))
        command.append(
            f"--customize-hook=mkdir -p {target} && cp "
            + " ".join(shlex.quote(str(ca)) for ca in cas)
            + f" {target}/"
        )
    # No mirror given: mmdebstrap uses the host's apt sources (the suite is the host's).
    command += ["bookworm", str(tarball)]
    run(command, timeout=300)
    container = storage.buildah("from", "scratch").strip()
    storage.buildah("add", container, str(tarball), "/", timeout=300)
    storage.buildah("config", "--cmd", "/bin/bash", container)
    storage.buildah("commit", "--rm", container, BASE_IMAGE, timeout=300)
    tarball.unlink()
    return BASE_IMAGE


def build_image(storage: Storage, tag: str, base: str) -> None:
    """``buildah build`` of the repository's Dockerfile, as ``docker build`` would."""
    storage.buildah(
        "build",
        "--isolation",
        "chroot",
        # HEALTHCHECK exists only in Docker's image format; OCI's has no field for it.
        "--format",
        "docker",
        "--pull=never",
        "--build-arg",
        f"BASE={base}",
        "--tag",
        tag,
        str(ROOT),
        timeout=400,
    )


def resource_limits() -> list[str]:
    """``--ulimit`` options well within this process's own limits.

    podman asks the kernel for higher open-file and process limits than a machine
    without CAP_SYS_RESOURCE for containers (as this one) grants; lower ones pass.
    """
    nofile, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    nproc = 16384 if nproc == resource.RLIM_INFINITY else min(nproc // 2, 16384)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


class Container:
    """A registry container started as ``docker run -d -p 5000:5000 -v DATA:/var/lib/registry``."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, image: str, *options: str, timeout: float = 60.0) -> None:
        self.storage.podman_run(
            "--detach",
            "--name",
            self.name,
            # The seed's -p 5000:5000, on loopback only.
            "--publish",
            f"127.0.0.1:{self.port}:5000",
            *options,
            image,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect()["State"]["Status"] not in ("running", "created", "configured"):
                raise AssertionError(f"the container stopped:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/v2/", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"no answer on {self.url}/v2/ within {timeout}s:\n{self.logs()}")

    def inspect(self) -> dict[str, Any]:
        inspected: list[dict[str, Any]] = json.loads(
            self.storage.podman("container", "inspect", self.name)
        )
        return inspected[0]

    def logs(self) -> str:
        result = subprocess.run(
            self.storage.podman_command("logs", self.name),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout + result.stderr

    def exec(self, *args: str, user: str = "dockyard", timeout: float = 120.0) -> str:
        return self.storage.podman("exec", "--user", user, self.name, *args, timeout=timeout)

    def stop(self, grace: int = 20) -> int:
        """``podman stop`` (SIGTERM, then SIGKILL after ``grace`` s); the exit code."""
        self.storage.podman("stop", "--time", str(grace), self.name, timeout=grace + 60)
        return int(self.inspect()["State"]["ExitCode"])

    def remove(self) -> None:
        subprocess.run(
            self.storage.podman_command("rm", "--force", self.name),
            capture_output=True,
            timeout=60,
            check=False,
        )
