"""Fixtures that start real registry servers on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import os

import pytest

from tests.support.redis_server import redis_server
from tests.support.servers import ServerProcess

__all__ = ["redis_server"]

ServerFactory = Callable[..., ServerProcess]


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
