"""The session's S3 servers: moto, shared by the driver suite and the registry tests on
S3, and Ceph's RADOS Gateway, started only when a test asks for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.s3.moto_server import MotoServer, S3Endpoint
from tests.s3.rgw_server import RgwServer
from tests.support.servers import ServerProcess

Start = Callable[..., ServerProcess]

_RGW_SERVER = pytest.StashKey[RgwServer]()
_RGW_FAILURE = pytest.StashKey[Exception]()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


def session_rgw_server(request: pytest.FixtureRequest) -> RgwServer:
    """The session's RGW cluster: started on first use, stopped when the session ends.

    The ``rgw_server`` fixture returns it; test modules that cannot see that fixture
    (it is not in their conftest) call this with their ``request`` for the same one.
    """
    stash = request.config.stash
    if _RGW_FAILURE in stash:
        # One failed start is enough: later tests fail at once with its error.
        raise RuntimeError("the RGW cluster failed to start") from stash[_RGW_FAILURE]
    if _RGW_SERVER not in stash:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        server = RgwServer(factory.mktemp("rgw"))
        try:
            server.start()
        except Exception as error:
            stash[_RGW_FAILURE] = error
            raise
        stash[_RGW_SERVER] = server
        request.config.add_cleanup(server.stop)
    return stash[_RGW_SERVER]


@pytest.fixture(scope="session")
def rgw_server(request: pytest.FixtureRequest) -> RgwServer:
    return session_rgw_server(request)


@contextmanager
def registries_on(endpoint: S3Endpoint, workdir: Path) -> Iterator[Start]:
    """``start(kind, bucket, ...)``: a registry whose storage is ``bucket`` at ``endpoint``."""
    started: list[ServerProcess] = []

    def start(
        kind: str,
        bucket: str,
        redirect: bool = True,
        workers: int = 2,
        blobdescriptor: str | None = None,
        **s3: Any,
    ) -> ServerProcess:
        # Distribution's AWS SDK refuses to start when AWS_CA_BUNDLE names a bundle it
        # cannot attach to its HTTP transport; empty means none.
        env = {"AWS_CA_BUNDLE": ""} if kind == "distribution" else {}
        server = ServerProcess(kind, workdir / f"{kind}-{len(started)}", env=env)
        storage = server.config["storage"]
        del storage["filesystem"]
        storage["s3"] = endpoint.driver_params(bucket, **s3)
        if kind == "distribution":
            # Distribution 2.8 takes these as given; secure decides the endpoint's scheme.
            storage["s3"].update({"secure": False, "v4auth": True, "forcepathstyle": True})
        storage["redirect"] = {"disable": not redirect}
        if blobdescriptor is not None:
            storage["cache"] = {"blobdescriptor": blobdescriptor}
        if kind == "dockyard":
            server.config["dockyard"] = {"workers": workers}
        server.config_path.write_text(yaml.safe_dump(server.config))
        server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
