"""Bearer-token support (``cryptography``, ``jwt``) is loaded only when it is configured.

It costs about 14 MiB in every process; an open or htpasswd registry, TLS included,
never needs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BUILD_APP = """
import sys
from dockyard.config import load_config
from dockyard.api.app import create_app
from dockyard.auth import check_security
config = load_config(sys.argv[1]).config
check_security(config)
create_app(config)
print(sorted(m for m in ("cryptography", "jwt") if m in sys.modules))
"""


def loaded_after_build(config_path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", BUILD_APP, str(config_path)], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def write_config(tmp_path: Path, auth: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        "http: {addr: 127.0.0.1:0}\n" + auth
    )
    return path


@pytest.mark.parametrize(
    "auth",
    ["", "auth: {htpasswd: {realm: r, path: HTPASSWD}}\n"],
    ids=["open", "htpasswd"],
)
def test_no_token_auth_loads_no_cryptography(tmp_path: Path, auth: str) -> None:
    config = write_config(tmp_path, auth.replace("HTPASSWD", str(tmp_path / "htpasswd")))
    assert loaded_after_build(config) == "[]"


def test_token_auth_loads_it(tmp_path: Path) -> None:
    auth = (
        "auth: {token: {realm: https://auth.example/token, service: registry, issuer: dockyard}}\n"
        "dockyard:\n"
        "  auth:\n"
        f"    tokenservice: {{enabled: true, key: {tmp_path / 'k.pem'}, certificate: {tmp_path / 'c.pem'}}}\n"
    )
    assert loaded_after_build(write_config(tmp_path, auth)) == "['cryptography', 'jwt']"
