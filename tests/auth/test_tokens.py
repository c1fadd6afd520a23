"""Dockyard behind an existing token server: which tokens it accepts, and which not.

The test plays the token server: it has its own signing key, gives Dockyard the key's
certificate as ``auth.token.rootcertbundle`` (or a JWKS file as ``auth.token.jwks``),
and mints tokens with PyJWT directly, so nothing of Dockyard's minting code is trusted
here. Every broken variant (expired, not yet valid, wrong issuer or audience, wrong
signature, ``alg: none``, HMAC with the public key, an untrusted key in the header,
scopes for another repository) must be refused with 401 and a fresh challenge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dockyard.auth.tokens import jwk_thumbprint, libtrust_key_id, public_jwk
from dockyard.certs import pem_certificate, self_signed
from tests.auth.support import error_code, parse_challenge
from tests.support.images import ALL_MANIFEST_TYPES, make_image, push_artifact
from tests.support.servers import ServerProcess

SERVICE = "registry.test"
ISSUER = "test-token-server"
REPO = "team/app"


class TokenServer:
    """The test's stand-in for an external token server."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: str) -> None:
        self.key = key
        self.certificate = self_signed(key, name, days=30, ca=False)
        self.kid = libtrust_key_id(key.public_key())
        self.alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"

    def x5c(self) -> list[str]:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return [base64.b64encode(der).decode()]

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "alice",
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 5,
            "iat": now - 5,
            "jti": "test",
            "access": [{"type": "repository", "name": REPO, "actions": ["pull", "push"]}],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        header = {"kid": self.kid} if headers is None else headers
        return jwt.encode(self.claims(**overrides), self.key, algorithm=self.alg, headers=header)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


@pytest.fixture(scope="module")
def issuer() -> TokenServer:
    return TokenServer(ec.generate_private_key(ec.SECP256R1()), "test token server")


@pytest.fixture(scope="module")
def attacker() -> TokenServer:
    return TokenServer(ec.generate_private_key(ec.SECP256R1()), "test token server")


def _start(workdir: Path, token: dict[str, Any]) -> ServerProcess:
    config = {"auth": {"token": {"realm": "https://auth.invalid/token", "service": SERVICE, "issuer": ISSUER, **token}}}
    server = ServerProcess("dockyard", workdir, config=config)
    server.start()
    return server


@pytest.fixture(scope="module")
def registry(issuer: TokenServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("token-bundle")
    bundle = workdir / "bundle.crt"
    bundle.write_bytes(pem_certificate(issuer.certificate))
    server = _start(workdir, {"rootcertbundle": str(bundle)})
    token = issuer.mint(access=[{"type": "repository", "name": REPO, "actions": ["pull", "push"]}])
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client:
        push_artifact(client, "", REPO, "v1", make_image("tokens"))
    yield server
    server.stop()


def get(server: ServerProcess, token: str, repo: str = REPO) -> httpx.Response:
    return httpx.get(
        f"{server.url}/v2/{repo}/manifests/v1",
        headers={"Authorization": f"Bearer {token}", "Accept": ALL_MANIFEST_TYPES},
    )


def assert_refused(response: httpx.Response, error: str = "invalid_token") -> None:
    # A valid token of a signed-in user that lacks the scope is 403 (RFC 6750); every
    # token that is not valid at all, 401.
    status = 403 if error == "insufficient_scope" else 401
    assert response.status_code == status, response.text
    assert error_code(response) == ("DENIED" if status == 403 else "UNAUTHORIZED")
    scheme, params = parse_challenge(response.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == "https://auth.invalid/token"
    assert params["service"] == SERVICE
    assert params["scope"] == f"repository:{REPO}:pull"
    assert params["error"] == error


def test_no_token_gets_a_challenge_with_the_scope(registry: ServerProcess) -> None:
    response = httpx.get(f"{registry.url}/v2/{REPO}/tags/list")
    assert response.status_code == 401
    scheme, params = parse_challenge(response.headers["WWW-Authenticate"])
    assert (scheme, params) == (
        "bearer",
        {"realm": "https://auth.invalid/token", "service": SERVICE, "scope": f"repository:{REPO}:pull"},
    )
    base = httpx.get(f"{registry.url}/v2/")
    assert base.status_code == 401
    assert "scope" not in parse_challenge(base.headers["WWW-Authenticate"])[1]


@pytest.mark.parametrize("how", ["kid", "x5c", "jwk", "kid-thumbprint"])
def test_valid_token_is_accepted_however_it_names_its_key(
    registry: ServerProcess, issuer: TokenServer, how: str
) -> None:
    headers: dict[str, Any] = {
        "kid": {"kid": issuer.kid},
        "x5c": {"x5c": issuer.x5c()},
        "jwk": {"jwk": public_jwk(issuer.key.public_key())},
        "kid-thumbprint": {"kid": jwk_thumbprint(issuer.key.public_key())},
    }[how]
    response = get(registry, issuer.mint(headers))
    assert response.status_code == 200, response.text


def test_audience_as_a_list_is_accepted(registry: ServerProcess, issuer: TokenServer) -> None:
    assert get(registry, issuer.mint(aud=["other", SERVICE])).status_code == 200


def test_expired_token(registry: ServerProcess, issuer: TokenServer) -> None:
    # Past Distribution's 60 s leeway.
    now = int(time.time())
    assert_refused(get(registry, issuer.mint(exp=now - 120, iat=now - 600, nbf=now - 600)))


def test_token_without_expiry(registry: ServerProcess, issuer: TokenServer) -> None:
    assert_refused(get(registry, issuer.mint(exp=None)))


def test_not_yet_valid_token(registry: ServerProcess, issuer: TokenServer) -> None:
    assert_refused(get(registry, issuer.mint(nbf=int(time.time()) + 600)))


def test_wrong_issuer(registry: ServerProcess, issuer: TokenServer) -> None:
    assert_refused(get(registry, issuer.mint(iss="someone-else")))


def test_wrong_audience(registry: ServerProcess, issuer: TokenServer) -> None:
    assert_refused(get(registry, issuer.mint(aud="another-registry")))


def test_wrong_signature(registry: ServerProcess, issuer: TokenServer, attacker: TokenServer) -> None:
    # Signed by another key while naming the trusted one.
    assert_refused(get(registry, attacker.mint({"kid": issuer.kid})))
    # Or a valid token with its signature swapped for another's.
    good, bad = issuer.mint(), attacker.mint({"kid": issuer.kid})
    assert_refused(get(registry, good.rsplit(".", 1)[0] + "." + bad.rsplit(".", 1)[1]))


def test_alg_none(registry: ServerProcess, issuer: TokenServer) -> None:
    claims = issuer.claims()
    assert_refused(get(registry, unsigned({"alg": "none", "typ": "JWT", "kid": issuer.kid}, claims)))
    assert_refused(get(registry, unsigned({"alg": "none", "typ": "JWT"}, claims)))


def test_hmac_with_the_public_key_as_secret(registry: ServerProcess, issuer: TokenServer) -> None:
    # The classic algorithm confusion: HS256 "signed" with the trusted public key.
    secret = issuer.certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}).encode())
    body = _b64(json.dumps(issuer.claims()).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert_refused(get(registry, f"{head}.{body}.{_b64(signature)}"))


def test_untrusted_key_in_the_header(
    registry: ServerProcess, issuer: TokenServer, attacker: TokenServer
) -> None:
    # The attacker's own key as jwk, its own self-signed certificate as x5c, its own kid.
    assert_refused(get(registry, attacker.mint({"jwk": public_jwk(attacker.key.public_key())})))
    assert_refused(get(registry, attacker.mint({"x5c": attacker.x5c()})))
    assert_refused(get(registry, attacker.mint({"kid": attacker.kid})))
    assert_refused(get(registry, issuer.mint({})))


def test_malformed_tokens(registry: ServerProcess, issuer: TokenServer) -> None:
    for token in ("abc", "a.b.c", "e30.e30.", issuer.mint() + ".x"):
        response = get(registry, token)
        assert response.status_code == 401, token
    bad_access = issuer.mint(access=[{"type": "repository", "name": REPO, "actions": "pull"}])
    assert_refused(get(registry, bad_access))


def test_scope_for_another_repository(registry: ServerProcess, issuer: TokenServer) -> None:
    token = issuer.mint(access=[{"type": "repository", "name": "team/other", "actions": ["pull", "push", "delete"]}])
    assert_refused(get(registry, token), error="insufficient_scope")
    # Nor does pull on the repository grant push or delete.
    pull_only = issuer.mint(access=[{"type": "repository", "name": REPO, "actions": ["pull"]}])
    assert get(registry, pull_only).status_code == 200
    response = httpx.post(
        f"{registry.url}/v2/{REPO}/blobs/uploads/", headers={"Authorization": f"Bearer {pull_only}"}
    )
    assert response.status_code == 403
    assert parse_challenge(response.headers["WWW-Authenticate"])[1]["scope"] == f"repository:{REPO}:pull,push"
    # "*" grants every action, as in Distribution.
    everything = issuer.mint(access=[{"type": "repository", "name": REPO, "actions": ["*"]}])
    assert get(registry, everything).status_code == 200


def test_catalog_needs_the_catalog_scope(registry: ServerProcess, issuer: TokenServer) -> None:
    without = httpx.get(f"{registry.url}/v2/_catalog", headers={"Authorization": f"Bearer {issuer.mint()}"})
    assert without.status_code == 403
    anonymous = httpx.get(f"{registry.url}/v2/_catalog", headers={"Authorization": f"Bearer {issuer.mint(sub='')}"})
    assert anonymous.status_code == 401
    assert parse_challenge(without.headers["WWW-Authenticate"])[1]["scope"] == "registry:catalog:*"
    token = issuer.mint(access=[{"type": "registry", "name": "catalog", "actions": ["*"]}])
    listed = httpx.get(f"{registry.url}/v2/_catalog", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200
    # Another issuer's tokens say nothing about who the caller is: unfiltered, as in
    # Distribution.
    assert listed.json()["repositories"] == [REPO]


def test_jwks_instead_of_a_certificate_bundle(
    tmp_path: Path, issuer: TokenServer, attacker: TokenServer
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public_jwk(issuer.key.public_key()), "kid": "key-1", "use": "sig"}]}))
    server = _start(tmp_path, {"jwks": str(jwks)})
    try:
        assert get(server, issuer.mint({"kid": "key-1"})).status_code == 404  # authorized; no such manifest
        assert_refused(get(server, issuer.mint({"kid": "key-2"})))
        assert_refused(get(server, attacker.mint({"kid": "key-1"})))
    finally:
        server.stop()


def test_rsa_tokens_and_signing_algorithm_limits(tmp_path: Path) -> None:
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_issuer = TokenServer(server_key, "rsa token server")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(pem_certificate(rsa_issuer.certificate))
    server = _start(tmp_path, {"rootcertbundle": str(bundle), "signingalgorithms": ["ES256"]})
    try:
        # RS256 is not in the configured list, so even a correctly signed token fails.
        assert_refused(get(server, rsa_issuer.mint()))
    finally:
        server.stop()
    other = tmp_path / "second"
    other.mkdir()
    server = _start(other, {"rootcertbundle": str(bundle)})
    try:
        assert get(server, rsa_issuer.mint()).status_code == 404
    finally:
        server.stop()
