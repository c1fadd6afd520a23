"""Graceful shutdown: SIGTERM stops accepting, lets requests in flight finish, exits 0.

The signal goes to the parent process only, as a service manager or ``docker stop``
sends it; upload sessions live in storage, so one started before the stop continues
after a restart on the same data directory.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from dockyard.metrics import metric_samples
from tests.support.images import patch_chunk, sha256_digest, start_upload, with_digest
from tests.support.servers import ServerProcess, free_port

ServerFactory = Callable[..., ServerProcess]


def terminate(server: ServerProcess) -> None:
    """SIGTERM to the parent process alone (not its group)."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGTERM)


def wait_exit(server: ServerProcess, timeout: float = 60) -> int:
    assert server.process is not None
    return server.process.wait(timeout)


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Accepted into the backlog of a listener closing at that moment: the next try
        # tells whether it is gone.
        return False


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def uploads_in_flight(debug_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{debug_port}/metrics", timeout=10).text
    return sum(
        v for name, _, v in metric_samples(text) if name == "registry_blob_uploads_in_flight"
    )


def read_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {buffer!r}")
        buffer += chunk
    head = buffer.split(b"\r\n\r\n", 1)[0].decode()
    status_line, *header_lines = head.split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def test_sigterm_lets_a_slow_request_finish(server_factory: ServerFactory) -> None:
    debug_port = free_port()
    config: dict[str, Any] = {
        "log": {"level": "info"},
        "http": {
            "draintimeout": "60s",
            "debug": {"addr": f"127.0.0.1:{debug_port}", "prometheus": {"enabled": True}},
        },
        "dockyard": {"workers": 2, "ui": {"enabled": False}},
    }
    server = server_factory(config=config)
    data = random.Random("drain").randbytes(1 << 20)
    half = len(data) // 2
    with httpx.Client(timeout=30) as client:
        url = start_upload(client, server.url, "drain/slow")
    target = urlsplit(url)
    path = target.path + (f"?{target.query}" if target.query else "")

    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            (
                f"PATCH {path} HTTP/1.1\r\n"
                f"Host: {server.host}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Range: 0-{len(data) - 1}\r\n"
                f"Content-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + data[:half]
        )
        # The handler is receiving the body: the request is in flight.
        wait_for(lambda: uploads_in_flight(debug_port) == 1, "the upload to be in flight")
        terminate(server)
        # New connections are refused at once, while the request goes on.
        wait_for(lambda: refuses_connections(server.port), "the listener to close")
        assert server.process is not None and server.process.poll() is None
        sock.sendall(data[half:])
        status, headers = read_response(sock)
    assert status == 202
    assert headers["range"] == f"0-{len(data) - 1}"
    assert wait_exit(server) == 0
    assert "stopping: draining requests in flight" in server.log()

    # What the drained request wrote is there after a restart: the upload completes.
    server.start()
    with httpx.Client(timeout=30) as client:
        location = server.url + path if headers["location"].startswith("/") else headers["location"]
        done = client.put(with_digest(location, sha256_digest(data)))
        assert done.status_code == 201, done.text
        blob = client.get(f"{server.url}/v2/drain/slow/blobs/{sha256_digest(data)}")
        assert blob.content == data


@pytest.mark.parametrize("workers", [1, 2])
def test_upload_resumes_after_sigterm_and_restart(
    server_factory: ServerFactory, workers: int
) -> None:
    server = server_factory(config={"dockyard": {"workers": workers, "ui": {"enabled": False}}})
    chunk = 256 * 1024
    data = random.Random(f"resume-{workers}").randbytes(3 * chunk + 777)
    with httpx.Client(timeout=30) as client:
        url = start_upload(client, server.url, "drain/resume")
        url = patch_chunk(client, server.url, url, data[:chunk], 0)
        url = patch_chunk(client, server.url, url, data[chunk : 2 * chunk], chunk)

    terminate(server)
    assert wait_exit(server) == 0
    assert refuses_connections(server.port)
    server.start()

    with httpx.Client(timeout=30) as client:
        status = client.get(url)
        assert status.status_code == 204, status.text
        assert status.headers["Range"] == f"0-{2 * chunk - 1}"
        url = patch_chunk(client, server.url, url, data[2 * chunk :], 2 * chunk)
        digest = sha256_digest(data)
        done = client.put(with_digest(url, digest))
        assert done.status_code == 201, done.text
        assert done.headers["Docker-Content-Digest"] == digest
        blob = client.get(f"{server.url}/v2/drain/resume/blobs/{digest}")
        assert blob.content == data


@pytest.mark.parametrize("workers", [1, 2])
def test_a_request_that_never_finishes_is_cut_at_the_drain_timeout(
    server_factory: ServerFactory, workers: int
) -> None:
    debug_port = free_port()
    server = server_factory(
        config={
            "log": {"level": "info"},
            "http": {
                "draintimeout": "1s",
                "debug": {"addr": f"127.0.0.1:{debug_port}", "prometheus": {"enabled": True}},
            },
            "dockyard": {"workers": workers, "ui": {"enabled": False}},
        }
    )
    with httpx.Client(timeout=30) as client:
        url = start_upload(client, server.url, "drain/stalled")
    target = urlsplit(url)
    path = target.path + (f"?{target.query}" if target.query else "")
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        # A body announced and never sent in full: the client has stalled.
        sock.sendall(
            (
                f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\n"
                "Content-Type: application/octet-stream\r\n"
                "Content-Length: 1000000\r\n\r\n"
            ).encode()
            + b"x" * 1000
        )
        wait_for(lambda: uploads_in_flight(debug_port) == 1, "the upload to be in flight")
        terminate(server)
        # The server does not wait past the drain timeout, and still exits cleanly;
        # the stalled connection is closed.
        assert wait_exit(server) == 0
        try:
            rest = sock.recv(65536)
        except ConnectionResetError:
            rest = b""
        assert not rest.startswith(b"HTTP/1.1 2")
    assert "still in flight after draining for 1.0s" in server.log()
