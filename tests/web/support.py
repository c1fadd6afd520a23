"""Processes, images and a counting proxy for the web UI tests."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import httpx

from tests.support.images import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Blob,
    Image,
    make_image,
    make_index,
    push_artifact,
    serialise,
)
from tests.support.servers import free_port, stop_group

USER = "admin"
PASSWORD = "s3cret-pass"


def basic_auth_value(user: str = USER, password: str = PASSWORD) -> str:
    """What REGISTRY_BASIC_AUTH holds: base64 of user:password, as the seed passes it."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write_htpasswd(path: Path, user: str = USER, password: str = PASSWORD) -> Path:
    # Distribution's htpasswd accepts bcrypt only; a low cost keeps the tests quick.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


class UIProcess:
    """``dockyard ui`` on a free loopback port, configured by environment variables."""

    def __init__(self, workdir: Path, env: dict[str, str], args: list[str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = env
        self.args = args or []
        self.log_path = workdir / "ui.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> UIProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dockyard",
                    "ui",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockyard ui exited early:\n{self.log()}")
            try:
                httpx.get(self.url + "/ui/static/ui.css", timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dockyard ui did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.process)


class CountingProxy:
    """A plain HTTP reverse proxy that counts what passes through it.

    The UI's own count (its ``X-Registry-Requests`` header) is checked against what the
    registry actually received, so a bound on requests per page is measured, not taken
    on trust.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                with proxy.lock:
                    proxy.total += 1
                    proxy.counts[f"{self.command} {self.path.split('?')[0]}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                connection = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=120
                )
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    upstream = connection.getresponse()
                    data = upstream.read()
                    self.send_response(upstream.status)
                    for key, value in upstream.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    connection.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> CountingProxy:
        self.thread.start()
        return self

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.total = 0

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- test images ---------------------------------------------------------------------------

HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def hostile_image() -> Image:
    """An image whose labels, annotations, env and history carry HTML and script."""
    base = make_image("hostile", layers=2)
    document = json.loads(base.config.data)
    document["author"] = f"Mallory {HOSTILE}"
    document["config"]["Labels"] = {
        "org.example.description": HOSTILE,
        f"evil{HOSTILE}": "key with markup",
    }
    document["config"]["Env"] = [f"GREETING={HOSTILE}"]
    document["config"]["Cmd"] = ["/bin/sh", "-c", HOSTILE]
    document["history"] = [
        {"created": "2024-01-01T00:00:00Z", "created_by": f"/bin/sh -c echo '{HOSTILE}'"},
        {"created": "2024-01-01T00:00:00Z", "created_by": f"/bin/sh -c #(nop) LABEL x={HOSTILE}"},
    ]
    config = Blob(OCI_CONFIG, serialise(document))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in base.layers],
        "annotations": {
            "org.opencontainers.image.title": HOSTILE,
            "note": "</code></td><script>window.pwned=3</script>",
        },
    }
    return Image(config, base.layers, Blob(OCI_MANIFEST, serialise(manifest)), base.platform)


def rich_image() -> Image:
    """An image with the config fields the image page shows: ports, volumes, workdir..."""
    base = make_image("rich", layers=3)
    document = json.loads(base.config.data)
    document["created"] = "2024-03-01T10:00:00Z"
    document["author"] = "Dockyard tests"
    document["config"].update(
        {
            "Entrypoint": ["/docker-entrypoint.sh"],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "WorkingDir": "/usr/share/nginx/html",
            "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
            "Volumes": {"/var/cache/nginx": {}},
            "Labels": {
                "maintainer": "NGINX Docker Maintainers",
                "org.opencontainers.image.version": "1.17",
            },
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "NGINX_VERSION=1.17.10",
            ],
            "StopSignal": "SIGQUIT",
        }
    )
    document["history"] = [
        {
            "created": "2024-01-01T00:00:00Z",
            "created_by": "/bin/sh -c #(nop) ADD file:9b8be2b5 in / ",
        },
        {
            "created": "2024-01-01T00:00:01Z",
            "created_by": "/bin/sh -c #(nop)  LABEL maintainer=NGINX Docker Maintainers",
            "empty_layer": True,
        },
        {
            "created": "2024-01-01T00:00:02Z",
            "created_by": "/bin/sh -c apt-get update && apt-get install -y nginx",
        },
        {
            "created": "2024-01-01T00:00:03Z",
            "created_by": "COPY docker-entrypoint.sh / # buildkit",
            "comment": "buildkit.dockerfile.v0",
        },
        {
            "created": "2024-01-01T00:00:04Z",
            "created_by": '/bin/sh -c #(nop)  CMD ["nginx" "-g" "daemon off;"]',
            "empty_layer": True,
        },
    ]
    config = Blob(OCI_CONFIG, serialise(document))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in base.layers],
        "annotations": {"org.opencontainers.image.source": "https://example.com/nginx"},
    }
    return Image(config, base.layers, Blob(OCI_MANIFEST, serialise(manifest)), base.platform)


def signature_for(subject: Image) -> Image:
    """A cosign-like artifact whose ``subject`` is ``subject``: a referrer."""
    payload = Blob("application/vnd.dev.cosign.simplesigning.v1+json", b'{"critical":{}}')
    empty = Blob("application/vnd.oci.empty.v1+json", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "config": empty.descriptor(),
        "layers": [payload.descriptor()],
        "subject": subject.manifest.descriptor(),
        "annotations": {"org.opencontainers.image.created": "2024-02-02T00:00:00Z"},
    }
    return Image(empty, (payload,), Blob(OCI_MANIFEST, serialise(manifest)), {})


def seed(base_url: str, auth: tuple[str, str] | None = None) -> dict[str, Any]:
    """The repositories the browse tests look at, pushed over the HTTP API."""
    with httpx.Client(timeout=60, auth=auth) as client:
        rich = rich_image()
        older = make_image("older", layers=2)
        push_artifact(client, base_url, "zhang/nginx", "1.17", rich)
        push_artifact(client, base_url, "zhang/nginx", "latest", rich)
        push_artifact(client, base_url, "zhang/nginx", "1.16", older)
        push_artifact(client, base_url, "zhang/multi", "v1", make_index("multi"))
        push_artifact(client, base_url, "library/alpine", "3.19", make_image("alpine", layers=1))
        push_artifact(client, base_url, "xss/evil", "latest", hostile_image())
    return {"rich": rich, "older": older}
