"""The wheel, and the systemd unit that runs what it installs.

``pip wheel .`` on a copy of the checkout's files (without build output, caches or
environments that may lie around in the working tree), installed
with pip into a fresh virtual environment at ``<root>/opt/dockyard``, where
packaging/dockyard.service expects it under ``<root>``: then ``dockyard serve`` from it,
and ``systemd-analyze verify --root=<root>`` on the unit. systemd does not run here (no
init system in this container), so the unit is verified, not started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.packaging.containers import ROOT, run
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(600)


@dataclass
class Installed:
    wheel: Path
    root: Path  # a filesystem root holding the environment at opt/dockyard
    venv: Path
    sources: list[str]  # the checkout's files the wheel was built from

    @property
    def dockyard(self) -> Path:
        return self.venv / "bin" / "dockyard"


def tracked_files() -> list[str]:
    """The checkout's files: tracked, and new ones not ignored (what a commit would hold)."""
    listed = run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        timeout=60,
    )
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    workdir = tmp_path_factory.mktemp("wheel")
    source = workdir / "source"
    sources = tracked_files()
    for name in sources:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    dist = workdir / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(source)],
        timeout=300,
    )
    [wheel] = dist.glob("dockyard-*.whl")
    root = workdir / "root"
    venv = root / "opt" / "dockyard"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], timeout=400)
    yield Installed(wheel, root, venv, sources)
    shutil.rmtree(workdir, ignore_errors=True)


def test_wheel_holds_the_package_and_what_the_server_reads(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = {
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        }
    tracked = [name for name in installed.sources if name.startswith("dockyard/")]
    modules = {name for name in tracked if name.endswith(".py")}
    assert modules <= names, sorted(modules - names)
    # The web UI's templates and assets, which the server loads from the package.
    ui_files = {
        name
        for name in tracked
        if name.startswith(("dockyard/web/templates/", "dockyard/web/static/"))
    }
    assert ui_files and ui_files <= names, sorted(ui_files - names)
    # Nor is any other file of the package left behind but its READMEs.
    data = {name for name in tracked if not name.endswith((".py", ".md", ".pyc"))}
    assert data <= names, sorted(data - names)
    # The runtime dependencies, pinned as in pyproject.toml; not the test tools.
    pinned = {line.replace(" ", "") for line in requires}
    for dependency in ("aiohttp==", "pydantic==", "PyYAML==", "click==", "Jinja2=="):
        assert any(pin.startswith(dependency) for pin in pinned), pinned
    assert not any(pin.startswith("pytest") for pin in pinned)


def test_installed_command_serves_the_registry_and_ui(installed: Installed, tmp_path: Path) -> None:
    # Run from a directory with no checkout in it: only the installed package is found.
    help_text = run([str(installed.dockyard), "--help"], timeout=60, cwd=tmp_path)
    for command in ("serve", "garbage-collect", "ui", "usage", "cert", "passwd", "token"):
        assert command in help_text

    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": "0.1",
                "log": {"level": "info", "fields": {"service": "registry"}},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "dockyard": {"workers": 1},
            }
        )
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(installed.dockyard), "serve", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                answer = httpx.get(url + "/v2/", timeout=1.0)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert answer.status_code == 200
        assert answer.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        assert httpx.get(url + "/debug/health").status_code == 200
        # The UI renders its templates and serves its assets from the installed package.
        page = httpx.get(url + "/ui/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(url + "/ui/static/ui.css").status_code == 200
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log.read_text()
    # What ran was the environment's copy, not this checkout.
    imported = run(
        [str(installed.venv / "bin" / "python"), "-c", "import dockyard; print(dockyard.__file__)"],
        timeout=60,
        cwd=tmp_path,
    )
    assert imported.strip().startswith(str(installed.venv))


def test_systemd_unit_verifies_against_the_installed_layout(installed: Installed) -> None:
    unit = ROOT / "packaging" / "dockyard.service"
    root = installed.root
    # The root systemd-analyze looks at: the system's own units (targets the unit
    # orders itself after), this unit in /etc/systemd/system, and the environment at
    # /opt/dockyard, the path ExecStart names.
    units = root / "usr" / "lib" / "systemd" / "system"
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    installed_unit = root / "etc" / "systemd" / "system" / "dockyard.service"
    installed_unit.parent.mkdir(parents=True)
    shutil.copy(unit, installed_unit)
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            "--generators=no",
            f"--root={root}",
            "/etc/systemd/system/dockyard.service",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # systemd-analyze exits 0 on directives it ignores: those are errors here too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    # The sandboxing: systemd's own rating of what the service is exposed to.
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert security.returncode == 0, security.stderr
    overall = next(line for line in security.stdout.splitlines() if "Overall exposure" in line)
    level = float(overall.split(":")[1].split()[0])
    assert level <= 2.0, security.stdout


def test_systemd_unit_matches_the_image_layout() -> None:
    unit = (ROOT / "packaging" / "dockyard.service").read_text()
    assert "ExecStart=/opt/dockyard/bin/dockyard serve /etc/docker/registry/config.yml" in unit
    assert "StateDirectory=registry\n" in unit
    sysusers = (ROOT / "packaging" / "dockyard.sysusers").read_text()
    assert "u dockyard - " in sysusers and "/var/lib/registry" in sysusers
    config = yaml.safe_load((ROOT / "packaging" / "config.yml").read_text())
    assert config["storage"]["filesystem"]["rootdirectory"] == "/var/lib/registry"
