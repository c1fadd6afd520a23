"""Bearer tokens as the Docker token spec and Distribution define them: JWTs.

Minting: claims ``iss``, ``sub``, ``aud`` (a string: Distribution 2.x reads it as one),
``exp``, ``nbf``, ``iat``, ``jti`` and ``access``; the header names the signing key both
by ``kid`` in libtrust's format (what Distribution 2.x looks up in its rootcertbundle)
and by ``x5c``, the signing certificate itself, which every Distribution version checks
against the rootcertbundle before anything else. So a registry given our certificate as
its ``rootcertbundle`` accepts our tokens, whichever version it is.

Verifying: as Distribution does, the signing key comes from the header's ``x5c`` chain
(verified up to a certificate of the rootcertbundle), or a ``jwk`` that is one of the
trusted keys, or a ``kid`` naming one (libtrust ID or RFC 7638 thumbprint of a bundle
certificate's key, or a key ID of the ``jwks`` file). Only asymmetric algorithms are
accepted: never ``none``, never HMAC (whose "secret" would be a public key).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)

from dockyard.auth.scopes import AccessSet, Scope

# Distribution's default leeway for clock skew on exp and nbf.
LEEWAY_SECONDS = 60.0
MAX_CHAIN_DEPTH = 5
SUPPORTED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class TokenError(Exception):
    """A token that cannot be used; the message says why (for the log, not the client)."""


class KeyFileError(ValueError):
    """A signing key or trust file that cannot be used."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int, length: int | None = None) -> bytes:
    size = length if length is not None else max((value.bit_length() + 7) // 8, 1)
    return value.to_bytes(size, "big")


def public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def libtrust_key_id(key: PublicKeyTypes) -> str:
    """The key ID Distribution 2.x computes for a rootcertbundle key (libtrust):
    SHA-256 of the DER public key, first 240 bits, base32, in colon-separated groups of 4."""
    digest = hashlib.sha256(public_der(key)).digest()[:30]
    encoded = base64.b32encode(digest).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


_CURVES = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}


def public_jwk(key: PublicKeyTypes) -> dict[str, str]:
    """The RFC 7517 JSON Web Key of a public key (the members RFC 7638 hashes)."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"e": _b64url(_int_bytes(numbers.e)), "kty": "RSA", "n": _b64url(_int_bytes(numbers.n))}
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve, size = _CURVES.get(key.curve.name, (key.curve.name, (key.curve.key_size + 7) // 8))
        point = key.public_numbers()
        return {
            "crv": curve,
            "kty": "EC",
            "x": _b64url(_int_bytes(point.x, size)),
            "y": _b64url(_int_bytes(point.y, size)),
        }
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    raise KeyFileError(f"unsupported key type {type(key).__name__}")


def jwk_thumbprint(key: PublicKeyTypes) -> str:
    """RFC 7638: SHA-256 of the required JWK members, sorted, without whitespace."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def algorithm_for(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise KeyFileError(f"unsupported signing key type {type(key).__name__}")


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise KeyFileError(f"cannot read certificate bundle {path}: {error.strerror or error}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise KeyFileError(f"{path}: no PEM certificate could be read ({error})") from None


def _valid_now(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    x5c: Sequence[str], roots: Sequence[x509.Certificate], now: datetime | None = None
) -> PublicKeyTypes:
    """The leaf's public key, once the chain is verified up to one of ``roots``.

    The leaf may itself be a root (a self-signed signing certificate listed in the
    bundle, the common case); otherwise each step must be signed by a CA certificate,
    from the chain or the roots, and every certificate on the way must be valid now.
    """
    now = now or datetime.now(UTC)
    try:
        chain = [
            x509.load_der_x509_certificate(base64.b64decode(item, validate=True)) for item in x5c
        ]
    except (ValueError, TypeError) as error:
        raise TokenError(f"unreadable x5c certificate: {error}") from None
    if not chain:
        raise TokenError("empty x5c chain")
    leaf, intermediates = chain[0], chain[1:]
    current = leaf
    for _ in range(MAX_CHAIN_DEPTH + 1):
        if not _valid_now(current, now):
            raise TokenError(f"certificate {current.subject.rfc4514_string()} is not valid now")
        if current in roots:
            return leaf.public_key()
        issuer = next(
            (c for c in (*roots, *intermediates) if _is_ca(c) and _issued_by(current, c)), None
        )
        if issuer is None:
            raise TokenError("x5c chain does not lead to a trusted certificate")
        if issuer in roots:
            if not _valid_now(issuer, now):
                raise TokenError("trusted root certificate is not valid now")
            return leaf.public_key()
        current = issuer
    raise TokenError("x5c chain too long")


# --- signing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A token signing key and its certificate (what other registries are given to trust)."""

    private_key: PrivateKeyTypes
    certificate: x509.Certificate

    @property
    def algorithm(self) -> str:
        return algorithm_for(self.private_key)

    @property
    def key_id(self) -> str:
        return libtrust_key_id(self.certificate.public_key())

    def header(self) -> dict[str, Any]:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {"kid": self.key_id, "x5c": [base64.b64encode(der).decode()]}

    @classmethod
    def load(cls, key_path: str | os.PathLike[str], cert_path: str | os.PathLike[str]) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except OSError as error:
            raise KeyFileError(f"cannot read token signing key {key_path}: {error.strerror or error}") from None
        except (ValueError, TypeError) as error:
            raise KeyFileError(f"{key_path}: not an unencrypted PEM private key ({error})") from None
        certificates = load_certificates(cert_path)
        mine = public_der(key.public_key())
        for certificate in certificates:
            if public_der(certificate.public_key()) == mine:
                algorithm_for(key)
                return cls(key, certificate)
        raise KeyFileError(f"{cert_path} holds no certificate for the key in {key_path}")

    @classmethod
    def load_or_create(
        cls, key_path: str | os.PathLike[str], cert_path: str | os.PathLike[str], name: str
    ) -> SigningKey:
        """Load the key and certificate, creating whichever is missing.

        Several worker processes may start at once: each file is created atomically
        and only if absent, and everyone then reads what is on disk.
        """
        from dockyard.auth.files import create_exclusive
        from dockyard.certs import generate_key, pem_certificate, pem_private_key, self_signed

        key_file, cert_file = Path(key_path), Path(cert_path)
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            create_exclusive(key_file, pem_private_key(generate_key("ec")), 0o600)
        key = cls._read_key(key_file)
        if not cert_file.exists():
            cert_file.parent.mkdir(parents=True, exist_ok=True)
            certificate = self_signed(key, name, days=3650, ca=False)
            create_exclusive(cert_file, pem_certificate(certificate), 0o644)
        return cls.load(key_file, cert_file)

    @staticmethod
    def _read_key(path: Path) -> PrivateKeyTypes:
        try:
            return serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise KeyFileError(f"cannot load token signing key {path}: {error}") from None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The token response body: ``token`` and, for OAuth 2 clients, ``access_token``."""
        return {
            "token": self.token,
            "access_token": self.token,
            "expires_in": self.expires_in,
            "issued_at": self.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


class TokenIssuer:
    def __init__(self, key: SigningKey, issuer: str, expiration: float) -> None:
        self.key = key
        self.issuer = issuer
        # Clients (Docker) treat anything under 60 s as 60 s anyway.
        self.expiration = max(int(expiration), 60)

    def mint(
        self,
        subject: str,
        audience: str,
        access: Sequence[Scope],
        now: float | None = None,
    ) -> IssuedToken:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": issued + self.expiration,
            "nbf": issued,
            "iat": issued,
            "jti": secrets.token_hex(16),
            "access": [scope.to_claim() for scope in access],
        }
        token = jwt.encode(
            claims, self.key.private_key, algorithm=self.key.algorithm, headers=self.key.header()  # type: ignore[arg-type]
        )
        return IssuedToken(token, self.expiration, datetime.fromtimestamp(issued, UTC))


# --- verifying ----------------------------------------------------------------------


@dataclass(slots=True)
class TrustStore:
    """The certificates and keys tokens may be signed with."""

    roots: list[x509.Certificate] = field(default_factory=list)
    keys: dict[str, PublicKeyTypes] = field(default_factory=dict)

    def add_certificate(self, certificate: x509.Certificate) -> None:
        self.roots.append(certificate)
        key = certificate.public_key()
        self.keys[libtrust_key_id(key)] = key
        try:
            self.keys[jwk_thumbprint(key)] = key
        except KeyFileError:
            pass

    def add_jwks(self, path: str | os.PathLike[str]) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            key_set = jwt.PyJWKSet.from_dict(data)
        except OSError as error:
            raise KeyFileError(f"cannot read jwks {path}: {error.strerror or error}") from None
        except (ValueError, jwt.PyJWTError) as error:
            raise KeyFileError(f"{path}: not a usable JSON Web Key Set ({error})") from None
        for item in key_set.keys:
            key = item.key
            if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
                raise KeyFileError(f"{path}: key {item.key_id!r} is not an RSA, EC or Ed25519 public key")
            self.keys[item.key_id or jwk_thumbprint(key)] = key

    def trusts(self, key: PublicKeyTypes) -> bool:
        der = public_der(key)
        return any(public_der(trusted) == der for trusted in self.keys.values())

    @classmethod
    def load(cls, rootcertbundle: str | None, jwks: str | None) -> TrustStore:
        store = cls()
        if rootcertbundle:
            for certificate in load_certificates(rootcertbundle):
                store.add_certificate(certificate)
        if jwks:
            store.add_jwks(jwks)
        return store


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    issuer: str
    access: AccessSet
    expires: int


class TokenVerifier:
    def __init__(
        self,
        trust: TrustStore,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = SUPPORTED_ALGORITHMS,
        leeway: float = LEEWAY_SECONDS,
    ) -> None:
        unknown = [a for a in algorithms if a not in SUPPORTED_ALGORITHMS]
        if unknown:
            raise KeyFileError(
                f"unsupported signing algorithm(s) {', '.join(unknown)}; "
                f"use {', '.join(SUPPORTED_ALGORITHMS)}"
            )
        if not trust.keys:
            raise KeyFileError("token auth requires at least one token signing key")
        self.trust = trust
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self.leeway = leeway

    def _signing_key(self, header: dict[str, Any]) -> PublicKeyTypes:
        x5c = header.get("x5c")
        raw_jwk = header.get("jwk")
        kid = header.get("kid")
        if x5c:
            if not isinstance(x5c, list) or not all(isinstance(c, str) for c in x5c):
                raise TokenError("malformed x5c header")
            return verify_chain(x5c, self.trust.roots)
        if raw_jwk is not None:
            if not isinstance(raw_jwk, dict):
                raise TokenError("malformed jwk header")
            try:
                key = jwt.PyJWK(raw_jwk).key
            except (jwt.PyJWTError, ValueError, TypeError) as error:
                raise TokenError(f"unusable jwk header: {error}") from None
            if isinstance(raw_jwk.get("x5c"), list):
                leaf = verify_chain(raw_jwk["x5c"], self.trust.roots)
                if public_der(leaf) != public_der(key):
                    raise TokenError("jwk does not match its certificate")
                return key  # type: ignore[no-any-return]
            if not self.trust.trusts(key):
                raise TokenError("token signed by an untrusted jwk")
            return key  # type: ignore[no-any-return]
        if isinstance(kid, str) and kid:
            trusted = self.trust.keys.get(kid)
            if trusted is None:
                raise TokenError(f"token signed by untrusted key with ID {kid!r}")
            return trusted
        raise TokenError("token header names no signing key (x5c, jwk or kid)")

    def verify(self, raw: str) -> VerifiedToken:
        if raw.count(".") != 2:
            raise TokenError("malformed token")
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError as error:
            raise TokenError(f"malformed token header: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise TokenError(f"signing algorithm {algorithm!r} is not accepted")
        key = self._signing_key(header)
        try:
            claims = jwt.decode(
                raw,
                key=key,  # type: ignore[arg-type]
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            raise TokenError(f"token rejected: {error}") from None
        try:
            access = AccessSet.from_claim(claims.get("access"))
        except ValueError as error:
            raise TokenError(f"malformed access claim: {error}") from None
        subject = claims.get("sub") or ""
        if not isinstance(subject, str):
            raise TokenError("malformed sub claim")
        return VerifiedToken(subject, str(claims["iss"]), access, int(claims["exp"]))

