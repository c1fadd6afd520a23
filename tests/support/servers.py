"""Real registry server processes for tests: Dockyard and Distribution on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

DISTRIBUTION_BINARY = "/usr/bin/docker-registry"


# Ports already handed out in this test process. A port is free when asked for but not
# held, so the kernel may offer it again to the next caller (a server's own port equal to
# the debug port a test chose a moment before): each is handed out once.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ServerProcess:
    """A registry process with its own config file and data directory.

    ``kind`` is "dockyard" or "distribution"; both read the same config format, which
    is the point of the comparison.
    """

    def __init__(
        self,
        kind: str,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        root: Path | None = None,
        ca: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        # ``ca``: the server speaks HTTPS (its config sets http.tls) and this CA file
        # verifies it; ``client_cert``: (certificate, key) the readiness probe presents
        # when the server requires client certificates (http.tls.clientcas).
        self.ca = ca
        self.client_cert = client_cert
        self.kind = kind
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = root or workdir / "data"
        self.port = free_port()
        base: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "fields": {"service": "registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        self.config = _merge(base, config or {})
        self.config_path = workdir / "config.yml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.env = dict(env or {})
        self.log_path = workdir / f"{kind}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ca is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def verify(self) -> Any:
        """What httpx's ``verify`` needs to trust this server (True for plain HTTP)."""
        if self.ca is None:
            return True
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None:
            context.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
        return context

    @property
    def host(self) -> str:
        """host:port as clients such as skopeo name the registry."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "distribution":
            return [DISTRIBUTION_BINARY, "serve", str(self.config_path)]
        return [sys.executable, "-m", "dockyard", "serve", str(self.config_path)]

    def start(self, timeout: float = 20.0) -> None:
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v2/", timeout=1.0, verify=self.verify()).status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        stop_group(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


def stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a server started in its own session, SIGKILL it if it lingers."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def distribution_available() -> bool:
    return shutil.which(DISTRIBUTION_BINARY) is not None
