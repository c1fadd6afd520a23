"""The container's HEALTHCHECK: is the registry answering, and is its storage healthy?

Reads the configuration the server reads (REGISTRY_CONFIGURATION_PATH, else
/etc/docker/registry/config.yml, with the same REGISTRY_* overrides) to find where it
listens, then asks ``/debug/health``: 200 is healthy; anything else, or no answer
within 4 seconds, is not. Exit status 0 or 1, as HEALTHCHECK wants. A registry that
requires client certificates (http.tls.clientcas) cannot be asked without one: for it,
accepting a connection counts as healthy.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys

from dockyard.config import Config, load_config

DEFAULT_CONFIG = "/etc/docker/registry/config.yml"
TIMEOUT = 4.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.unix_path)


def _config() -> Config:
    path = os.environ.get("REGISTRY_CONFIGURATION_PATH") or (
        DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None
    )
    return load_config(path).config


def _connection(config: Config) -> http.client.HTTPConnection:
    http_config = config.http
    if http_config.net == "unix":
        return _UnixConnection(http_config.addr)
    host, _, port = http_config.addr.rpartition(":")
    host = host.strip("[]")
    # The registry listens on every address (":5000", "0.0.0.0:5000", "[::]:5000"):
    # loopback reaches it. A specific address is used as it is.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if http_config.tls.certificate:
        # Only liveness is asked here: the certificate's names need not cover loopback.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, int(port), timeout=TIMEOUT, context=context)
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


def main() -> int:
    try:
        config = _config()
        connection = _connection(config)
        if isinstance(connection, http.client.HTTPSConnection) and config.http.tls.clientcas:
            with socket.create_connection((connection.host, connection.port), TIMEOUT):
                return 0
        connection.request("GET", "/debug/health")
        status = connection.getresponse().status
    except Exception as error:  # noqa: BLE001 - any failure means "unhealthy"
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: /debug/health answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
