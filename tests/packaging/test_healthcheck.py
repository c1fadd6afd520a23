"""packaging/healthcheck.py, the image's HEALTHCHECK, against real servers on the host.

The image test runs it once in a container with the image's configuration; here it
meets the other configurations it reads: an address from REGISTRY_HTTP_ADDR, HTTPS,
HTTPS with client certificates required, and a registry that is not there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from dockyard.certs import create_certificates
from tests.packaging.containers import ROOT
from tests.support.servers import ServerProcess, free_port

HEALTHCHECK = ROOT / "packaging" / "healthcheck.py"


def healthcheck(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment: Mapping[str, str] = {
        **{key: value for key, value in os.environ.items() if not key.startswith("REGISTRY_")},
        "REGISTRY_CONFIGURATION_PATH": str(config),
        **env,
    }
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=dict(environment),
    )


def test_healthy_registry_on_the_configured_address(tmp_path: Path) -> None:
    server = ServerProcess("dockyard", tmp_path / "server")
    server.start()
    try:
        assert healthcheck(server.config_path).returncode == 0
        # An environment override of the address is followed, as the server follows it.
        elsewhere = healthcheck(server.config_path, REGISTRY_HTTP_ADDR=f":{free_port()}")
        assert elsewhere.returncode == 1
        assert "unhealthy" in elsewhere.stderr
    finally:
        server.stop()
    gone = healthcheck(server.config_path)
    assert gone.returncode == 1 and "unhealthy" in gone.stderr


def test_https_and_client_certificates(tmp_path: Path) -> None:
    certs = create_certificates(tmp_path / "certs", ["127.0.0.1"], [], clients=["probe"])
    tls = {"certificate": str(certs.server_cert), "key": str(certs.server_key)}
    server = ServerProcess(
        "dockyard", tmp_path / "tls", config={"http": {"tls": tls}}, ca=certs.ca_cert
    )
    server.start()
    try:
        assert healthcheck(server.config_path).returncode == 0
    finally:
        server.stop()

    mutual = {**tls, "clientcas": [str(certs.ca_cert)]}
    server = ServerProcess(
        "dockyard",
        tmp_path / "mutual",
        config={"http": {"tls": mutual}},
        ca=certs.ca_cert,
        client_cert=(certs.directory / "probe.cert", certs.directory / "probe.key"),
    )
    server.start()
    try:
        assert healthcheck(server.config_path).returncode == 0
    finally:
        server.stop()
    assert healthcheck(server.config_path).returncode == 1
