"""Fixtures that start real registry servers on free loopback ports."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_server import redis_server
from tests.support.servers import ServerProcess

__all__ = ["redis_server"]

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session", autouse=True)
def run_temp_dir() -> Iterator[Path]:
    """A temp directory for this run and every process it starts, removed at its end:
    a server keeps a lock directory per store in the temp directory, and a run opens
    some two thousand stores. Short, unlike pytest's own: podman's run root, made in
    it, must stay under 50 characters."""
    directory = Path(tempfile.mkdtemp(prefix="dy-tests-"))
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(directory)
    try:
        yield directory
    finally:
        tempfile.tempdir = before[1]
        if before[0] is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before[0]
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start registry processes: ``server_factory(kind="dockyard", config={...})``."""
    started: list[ServerProcess] = []

    def start(
        kind: str = "dockyard",
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        root: Path | None = None,
        name: str | None = None,
    ) -> ServerProcess:
        workdir = tmp_path / (name or f"{kind}-{len(started)}")
        server = ServerProcess(kind, workdir, config=config, env=env, root=root)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def registry(server_factory: ServerFactory) -> ServerProcess:
    """A Dockyard server with filesystem storage and deletes enabled.

    ``DOCKYARD_TEST_TARGET=distribution`` runs the same tests against Distribution, to
    check what the tests expect against the reference implementation.
    """
    return server_factory(os.environ.get("DOCKYARD_TEST_TARGET", "dockyard"))


@pytest.fixture
def distribution(server_factory: ServerFactory) -> ServerProcess:
    """Distribution (Debian's docker-registry) with the same configuration."""
    return server_factory("distribution")
