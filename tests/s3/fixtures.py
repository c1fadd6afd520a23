"""The session's moto server, shared by the driver suite and the registry tests on S3."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3.moto_server import MotoServer


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()
