"""``dockyard cert``: the registry's own CA and server certificate.

``dockyard cert`` makes a small private CA and a server certificate for the addresses
and names clients use, so that clients trust the registry by installing one file (the
CA) instead of turning verification off with ``insecure-registries``. The CA is kept
and reused by later runs, so re-issuing the server certificate (a new IP, a renewal)
needs nothing new on the clients.

The listening socket's ``SSLContext`` is in ``dockyard.tls``, which needs no
``cryptography``: a registry without token auth never loads it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["ec", "rsa"]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
# Clients and servers disagree on clocks; a certificate valid from a few minutes ago
# works on a client whose clock is a little behind.
BACKDATE = timedelta(minutes=5)


# --- keys and certificates ------------------------------------------------------------


def generate_key(kind: KeyKind = "ec") -> CertificateIssuerPrivateKeyTypes:
    # P-256 is accepted by every TLS client in use and signs quickly; RSA for the rare
    # device that wants it.
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def pem_private_key(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_certificate(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dockyard"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _signing_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate hash.
    return hashes.SHA256() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else None


def self_signed(
    key: PrivateKeyTypes, common_name: str, days: int, ca: bool
) -> x509.Certificate:
    """A self-signed certificate: a CA, or a standalone key's certificate (token signing)."""
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"cannot certify a {type(key).__name__}")
    now = datetime.now(UTC)
    public = key.public_key()
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, _signing_hash(key))


def _alt_names(ips: Sequence[str], dns: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for text in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text.strip("[]"))))
        except ValueError:
            raise ValueError(f"--ip {text!r} is not an IP address") from None
    for name in dns:
        if not name or any(c.isspace() for c in name) or ":" in name:
            raise ValueError(f"--dns {name!r} is not a host name")
        names.append(x509.DNSName(name.lower()))
    return names


def issue(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    key: PrivateKeyTypes,
    common_name: str,
    days: int,
    purpose: Literal["server", "client"],
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
) -> x509.Certificate:
    """A leaf certificate signed by the CA, for a server (SANs) or a client."""
    now = datetime.now(UTC)
    public = key.public_key()
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise TypeError(f"cannot certify a {type(public).__name__}")
    is_rsa = isinstance(public, rsa.RSAPublicKey)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        # RSA key exchange (TLS 1.2 without ECDHE) encrypts with the certificate key.
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    eku = ExtendedKeyUsageOID.SERVER_AUTH if purpose == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    alt_names = _alt_names(ips, dns)
    if alt_names:
        # Modern clients (Go since 1.15) ignore the common name: the SANs are the names.
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, _signing_hash(ca_key))


def _write(path: Path, data: bytes, mode: int) -> None:
    from dockyard.auth.files import write_private

    write_private(path, data, mode)


@dataclass(frozen=True, slots=True)
class CertificateSet:
    directory: Path
    ca_created: bool
    hosts: tuple[str, ...]
    clients: tuple[str, ...]

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY


def load_or_create_ca(directory: Path, kind: KeyKind, days: int) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate, bool]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: unsupported CA key type")
        return key, certificate, False
    if cert_path.exists() or key_path.exists():
        raise ValueError(
            f"{directory} holds only one of {CA_CERT} and {CA_KEY}; "
            "restore the other or remove both to make a new CA"
        )
    key = generate_key(kind)
    label = socket.gethostname() or "registry"
    certificate = self_signed(key, f"Dockyard CA ({label})", days=days, ca=True)
    _write(key_path, pem_private_key(key), 0o600)
    _write(cert_path, pem_certificate(certificate), 0o644)
    return key, certificate, True


def create_certificates(
    directory: str | os.PathLike[str],
    ips: Sequence[str],
    dns: Sequence[str],
    *,
    kind: KeyKind = "ec",
    days: int = 825,
    ca_days: int = 3650,
    clients: Sequence[str] = (),
) -> CertificateSet:
    """Write ``ca.crt``/``ca.key`` (kept if present), ``server.crt``/``server.key``, and
    ``<client>.cert``/``<client>.key`` per client name (the names Docker and
    containers/image look for in a ``certs.d`` directory)."""
    if not ips and not dns:
        raise ValueError("name at least one --ip or --dns the clients use to reach the registry")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _alt_names(ips, dns)  # validate before anything is written
    ca_key, ca_cert, created = load_or_create_ca(out, kind, ca_days)
    server_key = generate_key(kind)
    common_name = (list(dns) + list(ips))[0]
    server_cert = issue(ca_key, ca_cert, server_key, common_name, days, "server", ips, dns)
    _write(out / SERVER_KEY, pem_private_key(server_key), 0o600)
    # The chain a server sends: its certificate, then the CA's, so clients that only
    # hold the CA can always build the path.
    _write(out / SERVER_CERT, pem_certificate(server_cert) + pem_certificate(ca_cert), 0o644)
    for client in clients:
        if not client or "/" in client or client.startswith("."):
            raise ValueError(f"--client {client!r} must be a plain name")
        client_key = generate_key(kind)
        client_cert = issue(ca_key, ca_cert, client_key, client, days, "client")
        _write(out / f"{client}.key", pem_private_key(client_key), 0o600)
        _write(out / f"{client}.cert", pem_certificate(client_cert), 0o644)
    hosts = tuple(f"[{ip}]" if ":" in ip else ip for ip in ips) + tuple(dns)
    return CertificateSet(out.resolve(), created, hosts, tuple(clients))


def instructions(result: CertificateSet, port: int, clientcas: bool = False) -> str:
    """What to do next: the config lines, and where each client installs the CA."""
    d = result.directory
    lines = [
        "Wrote:",
        f"  {result.ca_cert}   the CA certificate: install it on every client (below)"
        + ("" if result.ca_created else " (kept from before)"),
        f"  {result.ca_key}   the CA's private key: keep it secret and offline if you can;",
        "      `dockyard cert` reuses it to issue new server certificates that clients already trust",
        f"  {result.server_cert}   the registry's certificate, for: {', '.join(result.hosts)}",
        f"  {result.server_key}   the registry's private key (mode 0600)",
    ]
    for client in result.clients:
        lines.append(f"  {d / (client + '.cert')}, {d / (client + '.key')}   client certificate {client!r}")
    lines += [
        "",
        "Enable TLS in config.yml:",
        "  http:",
        f"    addr: :{port}",
        "    tls:",
        f"      certificate: {result.server_cert}",
        f"      key: {result.server_key}",
    ]
    if clientcas or result.clients:
        lines += ["      clientcas:", f"        - {result.ca_cert}"]
    lines += [
        "",
        f"Install the CA on each client machine (copy {CA_CERT} there first), once for every",
        "HOST:PORT the machine uses to reach the registry:",
    ]
    for host in result.hosts:
        where = f"{host}:{port}"
        lines += [
            f"  # {where}",
            "  # Docker (no daemon restart needed):",
            f"  mkdir -p /etc/docker/certs.d/{where}",
            f"  cp {result.ca_cert} /etc/docker/certs.d/{where}/ca.crt",
            "  # Podman, Buildah, Skopeo, CRI-O:",
            f"  mkdir -p /etc/containers/certs.d/{where}",
            f"  cp {result.ca_cert} /etc/containers/certs.d/{where}/ca.crt",
        ]
        for client in result.clients:
            lines += [
                f"  cp {d / (client + '.cert')} /etc/docker/certs.d/{where}/client.cert",
                f"  cp {d / (client + '.key')} /etc/docker/certs.d/{where}/client.key",
                f"  cp {d / (client + '.cert')} /etc/containers/certs.d/{where}/client.cert",
                f"  cp {d / (client + '.key')} /etc/containers/certs.d/{where}/client.key",
            ]
    lines += [
        "  # The system store (containerd, helm, oras, curl, the web UI's browser):",
        "  # Debian, Ubuntu:",
        f"  cp {result.ca_cert} /usr/local/share/ca-certificates/dockyard-ca.crt && update-ca-certificates",
        "  # RHEL, CentOS, Fedora:",
        f"  cp {result.ca_cert} /etc/pki/ca-trust/source/anchors/dockyard-ca.crt && update-ca-trust",
        "",
        "No client needs \"insecure-registries\" (or --tls-verify=false) after that.",
    ]
    return "\n".join(lines)
