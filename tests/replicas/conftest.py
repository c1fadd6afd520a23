"""The replica group of every test here: moto, Redis, three replicas, nginx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replicas.harness import Cluster, start_cluster
from tests.s3.fixtures import moto_server
from tests.s3.moto_server import MotoServer

__all__ = ["cluster", "moto_server"]


@pytest.fixture
def cluster(moto_server: MotoServer, tmp_path: Path) -> Iterator[Cluster]:
    group = start_cluster(moto_server, tmp_path / "cluster")
    try:
        yield group
    finally:
        group.stop()
        moto_server.reset()
