"""Several worker processes on one port behave as one registry."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ServerFactory
from tests.support.servers import stop_group

CHUNK = 256 * 1024


def pids_in_log(log: str, method: str) -> set[str]:
    return set(re.findall(rf'msg="{method} [^"]*" .*?pid=(\d+)', log))


def test_a_chunked_upload_continues_on_any_worker(server_factory: ServerFactory) -> None:
    server = server_factory(config={"dockyard": {"workers": 2}, "log": {"level": "info"}})
    data = os.urandom(CHUNK * 24)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = httpx.post(f"{server.url}/v2/spread/blobs/uploads/").headers["Location"]
    for offset in range(0, len(data), CHUNK):
        # A new connection per chunk, so the kernel may hand each to either worker.
        with httpx.Client() as client:
            response = client.patch(
                location,
                content=data[offset : offset + CHUNK],
                headers={"Content-Range": f"{offset}-{offset + CHUNK - 1}"},
            )
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
    response = httpx.put(location, params={"digest": digest})
    assert response.status_code == 201, response.text
    pulled = httpx.get(f"{server.url}/v2/spread/blobs/{digest}")
    assert hashlib.sha256(pulled.content).hexdigest() == digest.split(":")[1]
    # The test only means something if the chunks really were served by both workers.
    assert len(pids_in_log(server.log(), "PATCH")) == 2


@pytest.mark.parametrize("event_loop", [None, "uvloop", "asyncio"])
def test_the_workers_run_the_event_loop_configured(
    server_factory: ServerFactory, event_loop: str | None
) -> None:
    section: dict[str, object] = {"workers": 2}
    if event_loop is not None:
        section["eventloop"] = event_loop
    server = server_factory(config={"dockyard": section, "log": {"level": "info"}})
    # Large enough to be sent with sendfile, not read whole.
    data = os.urandom(3 * 1024 * 1024 + 5)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    pushed = httpx.post(
        f"{server.url}/v2/loops/blobs/uploads/", params={"digest": digest}, content=data
    )
    assert pushed.status_code == 201, pushed.text
    for _ in range(4):
        with httpx.Client() as client:
            pulled = client.get(f"{server.url}/v2/loops/blobs/{digest}")
            ranged = client.get(
                f"{server.url}/v2/loops/blobs/{digest}", headers={"Range": "bytes=70000-"}
            )
        assert hashlib.sha256(pulled.content).hexdigest() == digest.split(":")[1]
        assert ranged.status_code == 206 and ranged.content == data[70000:]
    pids = pids_in_log(server.log(), "GET")
    assert pids
    for pid in pids:
        libraries = Path(f"/proc/{pid}/maps").read_text()
        assert ("uvloop" in libraries) == (event_loop == "uvloop"), pid


def test_a_tag_moved_on_one_worker_is_seen_by_the_others(server_factory: ServerFactory) -> None:
    server = server_factory(config={"dockyard": {"workers": 2}, "log": {"level": "info"}})
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    assert (
        httpx.post(
            f"{server.url}/v2/moving/blobs/uploads/",
            params={"digest": config_digest},
            content=config,
        ).status_code
        == 201
    )
    digests = []
    for index in range(2):
        manifest = (
            '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},'
            f'"layers":[],"annotations":{{"n":"{index}"}}}}'
        ).encode()
        response = httpx.put(
            f"{server.url}/v2/moving/manifests/v{index}",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        digests.append(response.headers["Docker-Content-Digest"])
    for round_ in range(12):
        target = digests[round_ % 2]
        manifest = httpx.get(
            f"{server.url}/v2/moving/manifests/{target}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).content
        with httpx.Client() as client:
            client.put(
                f"{server.url}/v2/moving/manifests/latest",
                content=manifest,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            )
        for _ in range(4):
            with httpx.Client() as client:
                seen = client.head(f"{server.url}/v2/moving/manifests/latest")
            assert seen.headers["Docker-Content-Digest"] == target
    assert len(pids_in_log(server.log(), "HEAD")) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_server_on_a_taken_port_exits_and_the_first_serves_on(
    server_factory: ServerFactory, tmp_path: Path, workers: int
) -> None:
    first = server_factory(config={"dockyard": {"workers": 2}})
    second = tmp_path / "second"
    second.mkdir()
    config = {
        "version": "0.1",
        "storage": {"filesystem": {"rootdirectory": str(second / "data")}},
        "http": {"addr": f"127.0.0.1:{first.port}"},
        "dockyard": {"workers": workers},
    }
    (second / "config.yml").write_text(yaml.safe_dump(config))
    # The workers' sockets share the port among themselves (SO_REUSEPORT), which any
    # process of the same user may join: this one must not.
    process = subprocess.Popen(
        [sys.executable, "-m", "dockyard", "serve", str(second / "config.yml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop_group(process)
        pytest.fail("a second server started on the first one's port")
    assert process.returncode == 1, (out + err).decode()
    assert f"cannot listen on 127.0.0.1:{first.port}" in err.decode()
    assert not (second / "data").exists()
    # Every connection still reaches the first server.
    for _ in range(20):
        with httpx.Client() as client:
            assert client.get(f"{first.url}/v2/_catalog").status_code == 200
            assert client.get(f"{first.url}/v2/").headers["Docker-Distribution-API-Version"]
