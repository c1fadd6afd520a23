"""Dockyard's token service in front of Distribution: the proof that the token format is
the one Distribution expects.

Distribution (Debian's docker-registry 2.8) is configured with ``auth.token`` pointing
at Dockyard's ``/auth/token`` and trusting Dockyard's signing certificate as its
``rootcertbundle``; skopeo then pushes and pulls with credentials, following
Distribution's challenge to Dockyard for tokens. Everything runs over TLS with a CA
from ``dockyard cert``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from dockyard.auth.tokens import libtrust_key_id
from dockyard.cli import main
from tests.auth.support import ISSUER, PASSWORDS, SERVICE, token_config
from tests.support.images import make_image, skopeo, skopeo_fails, write_oci_layout
from tests.support.servers import ServerProcess

DISTRIBUTION_SERVICE = "distribution-test"


@dataclass
class Pair:
    dockyard: ServerProcess
    distribution: ServerProcess
    certs: Path
    token_key: Path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("interop")
    pki = base / "pki"
    result = CliRunner().invoke(main, ["cert", "--ip", "127.0.0.1", "--out", str(pki)])
    assert result.exit_code == 0, result.output
    tls = {"certificate": str(pki / "server.crt"), "key": str(pki / "server.key")}
    certs = base / "certs"
    certs.mkdir()
    shutil.copy(pki / "ca.crt", certs / "ca.crt")

    dockyard_dir = base / "dockyard"
    dockyard_dir.mkdir()
    config = token_config(dockyard_dir)
    config["dockyard"]["auth"]["tokenservice"]["services"] = [DISTRIBUTION_SERVICE]
    config["http"] = {"tls": tls}
    dockyard = ServerProcess("dockyard", dockyard_dir, config=config, ca=pki / "ca.crt")
    dockyard.start()

    distribution = ServerProcess(
        "distribution",
        base / "distribution",
        config={
            "http": {"tls": tls},
            "auth": {
                "token": {
                    "realm": f"{dockyard.url}/auth/token",
                    "service": DISTRIBUTION_SERVICE,
                    "issuer": ISSUER,
                    # The certificate Dockyard's token service created at start-up.
                    "rootcertbundle": str(dockyard_dir / "token.crt"),
                }
            },
        },
        ca=pki / "ca.crt",
    )
    try:
        distribution.start()
        yield Pair(dockyard, distribution, certs, dockyard_dir / "token.key")
    finally:
        distribution.stop()
        dockyard.stop()


def creds(user: str) -> str:
    return f"{user}:{PASSWORDS[user]}"


def test_distribution_accepts_dockyard_tokens(pair: Pair, tmp_path: Path) -> None:
    certs = str(pair.certs)
    image = make_image("interop-token")
    source = write_oci_layout(tmp_path / "src", {"v1": image})
    target = f"docker://{pair.distribution.host}/proj/app:v1"

    skopeo("copy", "--dest-cert-dir", certs, "--dest-creds", creds("writer"), f"oci:{source}:v1", target)
    raw = skopeo("inspect", "--raw", "--cert-dir", certs, "--creds", creds("reader"), target)
    assert raw == image.manifest.data

    # Dockyard's rules decide what Distribution allows.
    error = skopeo_fails(
        "copy", "--dest-cert-dir", certs, "--dest-creds", creds("reader"),
        f"oci:{source}:v1", f"docker://{pair.distribution.host}/proj/other:v1",
    )
    assert "denied" in error.lower() or "unauthorized" in error.lower(), error
    error = skopeo_fails("inspect", "--raw", "--cert-dir", certs, target)
    assert "unauthorized" in error.lower() or "denied" in error.lower(), error
    error = skopeo_fails("inspect", "--raw", "--cert-dir", certs, "--creds", "reader:wrong", target)
    assert "unauthorized" in error.lower() or "401" in error, error


def _token(pair: Pair, service: str, user: str, scope: str) -> str:
    response = httpx.get(
        f"{pair.dockyard.url}/auth/token",
        params={"service": service, "scope": scope},
        auth=(user, PASSWORDS[user]),
        verify=pair.dockyard.verify(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    return str(body["token"])


def test_audience_separates_the_registries(pair: Pair) -> None:
    scope = "repository:proj/app:pull"
    for_distribution = _token(pair, DISTRIBUTION_SERVICE, "reader", scope)
    for_dockyard = _token(pair, SERVICE, "reader", scope)
    distribution_url = f"{pair.distribution.url}/v2/proj/app/tags/list"
    dockyard_url = f"{pair.dockyard.url}/v2/proj/app/tags/list"
    verify = pair.distribution.verify()

    def status(url: str, token: str) -> int:
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, verify=verify).status_code

    assert status(distribution_url, for_distribution) in (200, 404)
    assert status(distribution_url, for_dockyard) == 401
    assert status(dockyard_url, for_dockyard) in (200, 404)
    assert status(dockyard_url, for_distribution) == 401


def test_key_id_matches_distributions(pair: Pair) -> None:
    # A token naming its key only by kid: Distribution finds the key by the libtrust ID
    # it computes for its rootcertbundle, so this passes only if ours is the same.
    key = serialization.load_pem_private_key(pair.token_key.read_bytes(), password=None)
    now = int(time.time())
    claims = {
        "iss": ISSUER, "sub": "reader", "aud": DISTRIBUTION_SERVICE,
        "exp": now + 60, "nbf": now, "iat": now, "jti": "kid-only",
        "access": [{"type": "repository", "name": "proj/app", "actions": ["pull"]}],
    }
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": libtrust_key_id(key.public_key())})  # type: ignore[arg-type]
    response = httpx.get(
        f"{pair.distribution.url}/v2/proj/app/tags/list",
        headers={"Authorization": f"Bearer {token}"},
        verify=pair.distribution.verify(),
    )
    assert response.status_code in (200, 404), response.text
    tampered = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "AAAA:" + libtrust_key_id(key.public_key())[5:]})  # type: ignore[arg-type]
    refused = httpx.get(
        f"{pair.distribution.url}/v2/proj/app/tags/list",
        headers={"Authorization": f"Bearer {tampered}"},
        verify=pair.distribution.verify(),
    )
    assert refused.status_code == 401
