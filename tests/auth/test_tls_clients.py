"""Real clients over TLS with the CA ``dockyard cert`` makes, and with credentials.

No ``--tls-verify=false`` anywhere: skopeo trusts the registry through a certificate
directory holding the CA as ``ca.crt`` (what ``/etc/containers/certs.d/HOST:PORT/``
holds on a client machine), oras-py through the CA file. Credentials go the way each
client sends them: Basic for htpasswd, and for the token service the full dance
(challenge, token from the realm with Basic credentials, retry with the token).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import oras.client
import pytest
from click.testing import CliRunner
from cryptography import x509

from dockyard.cli import main
from tests.auth.support import PASSWORDS, htpasswd_config, token_config
from tests.support.images import make_image, read_oci_layout, skopeo, skopeo_fails, write_oci_layout
from tests.support.servers import ServerProcess


@dataclass(frozen=True)
class Pki:
    directory: Path
    output: str

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def tls(self) -> dict[str, Any]:
        return {"certificate": str(self.directory / "server.crt"), "key": str(self.directory / "server.key")}

    def cert_dir(self, parent: Path, client: bool = False) -> Path:
        """A containers/image certificate directory: ``ca.crt`` (and a client pair)."""
        target = parent / ("certs-client" if client else "certs")
        target.mkdir(exist_ok=True)
        shutil.copy(self.ca, target / "ca.crt")
        if client:
            shutil.copy(self.directory / "client.cert", target / "client.cert")
            shutil.copy(self.directory / "client.key", target / "client.key")
        return target


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    result = CliRunner().invoke(
        main,
        ["cert", "--ip", "127.0.0.1", "--dns", "localhost", "--out", str(out), "--client", "client"],
    )
    assert result.exit_code == 0, result.output
    return Pki(out, result.output)


def start(workdir: Path, pki: Pki, config: dict[str, Any], **extra: Any) -> ServerProcess:
    merged = {**config, "http": {"tls": {**pki.tls, **extra.pop("tls", {})}}}
    server = ServerProcess("dockyard", workdir, config=merged, ca=pki.ca, **extra)
    server.start()
    return server


@pytest.fixture
def basic_registry(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    # Distribution's plain htpasswd semantics: no rules, every user may do everything.
    server = start(tmp_path / "srv", pki, htpasswd_config(_mkdir(tmp_path / "srv"), rules=None))
    yield server
    server.stop()


@pytest.fixture
def token_registry(tmp_path: Path, pki: Pki) -> Iterator[ServerProcess]:
    server = start(tmp_path / "srv", pki, token_config(_mkdir(tmp_path / "srv")))
    yield server
    server.stop()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def creds(user: str) -> str:
    return f"{user}:{PASSWORDS[user]}"


# --- dockyard cert -----------------------------------------------------------------------


def test_cert_writes_a_ca_and_a_server_certificate(pki: Pki) -> None:
    d = pki.directory
    for name in ("ca.crt", "ca.key", "server.crt", "server.key", "client.cert", "client.key"):
        assert (d / name).is_file(), name
    for secret in ("ca.key", "server.key", "client.key"):
        assert (d / secret).stat().st_mode & 0o077 == 0, secret
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificates((d / "server.crt").read_bytes())[0]
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # What the operator is told: the config lines and every client's CA location.
    out = pki.output
    assert f"certificate: {d / 'server.crt'}" in out
    assert f"key: {d / 'server.key'}" in out
    for host in ("127.0.0.1:5000", "localhost:5000"):
        assert f"/etc/docker/certs.d/{host}/ca.crt" in out
        assert f"/etc/containers/certs.d/{host}/ca.crt" in out
    assert "/usr/local/share/ca-certificates/" in out and "update-ca-certificates" in out
    assert "insecure-registries" in out


def test_cert_reuses_the_ca(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["cert", "--ip", "10.0.0.31", "--out", str(tmp_path), "--port", "443"])
    assert first.exit_code == 0, first.output
    ca_before = (tmp_path / "ca.crt").read_bytes()
    server_before = (tmp_path / "server.crt").read_bytes()
    second = runner.invoke(main, ["cert", "--dns", "registry.example", "--out", str(tmp_path)])
    assert second.exit_code == 0, second.output
    assert "kept from before" in second.output
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "server.crt").read_bytes() != server_before
    assert "/etc/docker/certs.d/10.0.0.31:443/ca.crt" in first.output
    bad = runner.invoke(main, ["cert", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1
    assert "--ip or --dns" in bad.output


# --- skopeo ---------------------------------------------------------------------------------


def test_skopeo_with_htpasswd_over_tls(basic_registry: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    certs = pki.cert_dir(tmp_path)
    image = make_image("tls-basic")
    source = write_oci_layout(tmp_path / "src", {"v1": image})
    target = f"docker://{basic_registry.host}/tls/basic:v1"

    error = skopeo_fails("copy", "--dest-cert-dir", str(certs), f"oci:{source}:v1", target)
    assert "unauthorized" in error.lower() or "authentication required" in error.lower(), error
    error = skopeo_fails(
        "copy", "--dest-cert-dir", str(certs), "--dest-creds", "writer:wrong", f"oci:{source}:v1", target
    )
    assert "unauthorized" in error.lower() or "authentication required" in error.lower(), error

    skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", creds("writer"), f"oci:{source}:v1", target)
    raw = skopeo("inspect", "--raw", "--cert-dir", str(certs), "--creds", creds("reader"), target)
    assert raw == image.manifest.data
    skopeo(
        "copy", "--src-cert-dir", str(certs), "--src-creds", creds("reader"), target, f"oci:{tmp_path / 'out'}:v1"
    )
    assert read_oci_layout(tmp_path / "out").tags == {"v1": image.digest}


def test_skopeo_without_the_ca_refuses_the_certificate(
    basic_registry: ServerProcess, tmp_path: Path
) -> None:
    empty = tmp_path / "no-ca"
    empty.mkdir()
    error = skopeo_fails(
        "inspect", "--cert-dir", str(empty), "--creds", creds("reader"), f"docker://{basic_registry.host}/x/y:v1"
    )
    assert "certificate" in error.lower(), error


def test_skopeo_login_then_copy(basic_registry: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    certs = pki.cert_dir(tmp_path)
    authfile = tmp_path / "auth.json"
    failed = subprocess.run(
        ["skopeo", "login", "--authfile", str(authfile), "--cert-dir", str(certs),
         "-u", "writer", "-p", "wrong", basic_registry.host],
        capture_output=True, text=True, timeout=60,
    )
    assert failed.returncode != 0
    skopeo("login", "--authfile", str(authfile), "--cert-dir", str(certs),
           "-u", "writer", "-p", PASSWORDS["writer"], basic_registry.host)
    assert basic_registry.host in json.loads(authfile.read_text())["auths"]
    source = write_oci_layout(tmp_path / "src", {"v1": make_image("login")})
    skopeo("copy", "--authfile", str(authfile), "--dest-cert-dir", str(certs),
           f"oci:{source}:v1", f"docker://{basic_registry.host}/login/app:v1")


def test_podman_login(basic_registry: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    certs = pki.cert_dir(tmp_path)
    authfile = tmp_path / "auth.json"
    base = ["podman", "login", "--authfile", str(authfile), "--cert-dir", str(certs)]
    wrong = subprocess.run([*base, "-u", "reader", "-p", "wrong", basic_registry.host],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0
    right = subprocess.run([*base, "-u", "reader", "-p", PASSWORDS["reader"], basic_registry.host],
                           capture_output=True, text=True, timeout=60)
    assert right.returncode == 0, right.stderr
    assert "Login Succeeded" in right.stdout


def test_skopeo_with_the_token_service_over_tls(
    token_registry: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    certs = pki.cert_dir(tmp_path)
    image = make_image("tls-token")
    source = write_oci_layout(tmp_path / "src", {"v1": image})
    target = f"docker://{token_registry.host}/proj/app:v1"

    # The writer pushes: skopeo follows the Bearer challenge to /auth/token over TLS.
    skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", creds("writer"), f"oci:{source}:v1", target)
    # The reader pulls but may not push.
    assert skopeo("inspect", "--raw", "--cert-dir", str(certs), "--creds", creds("reader"), target) == image.manifest.data
    error = skopeo_fails(
        "copy", "--dest-cert-dir", str(certs), "--dest-creds", creds("reader"),
        f"oci:{source}:v1", f"docker://{token_registry.host}/proj/other:v1",
    )
    assert "denied" in error.lower() or "unauthorized" in error.lower(), error
    # Anonymous callers get anonymous tokens: public/** may be pulled, nothing else.
    skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", creds("admin"),
           f"oci:{source}:v1", f"docker://{token_registry.host}/public/app:v1")
    skopeo("inspect", "--raw", "--cert-dir", str(certs), f"docker://{token_registry.host}/public/app:v1")
    error = skopeo_fails("inspect", "--raw", "--cert-dir", str(certs), target)
    assert "unauthorized" in error.lower() or "denied" in error.lower(), error
    # A deleter deletes; skopeo resolves the tag (pull) and deletes by digest.
    skopeo("delete", "--cert-dir", str(certs), "--creds", creds("deleter"), target)
    error = skopeo_fails("inspect", "--raw", "--cert-dir", str(certs), "--creds", creds("reader"), target)
    assert "manifest unknown" in error.lower(), error
    # The catalog, as listed by the token service's rules.
    listed = json.loads(
        skopeo("list-tags", "--cert-dir", str(certs), "--creds", creds("admin"),
               f"docker://{token_registry.host}/public/app")
    )
    assert listed["Tags"] == ["v1"]


# --- oras-py ----------------------------------------------------------------------------------


def _oras_round_trip(client: oras.client.OrasClient, host: str, tmp_path: Path, repo: str) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("dockyard over TLS\n" * 100)
    target = f"{host}/{repo}:v1"
    response = client.push(target, files=[f"{payload}:text/plain"], disable_path_validation=True)
    assert response.status_code == 201
    out = tmp_path / "pulled"
    files = client.pull(target, outdir=str(out))
    assert [Path(f).read_text() for f in files] == [payload.read_text()]


def test_oras_with_htpasswd_over_tls(basic_registry: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    client = oras.client.OrasClient(hostname=basic_registry.host, tls_verify=str(pki.ca), auth_backend="basic")
    client.auth.set_basic_auth("writer", PASSWORDS["writer"])
    _oras_round_trip(client, basic_registry.host, tmp_path, "oras/basic")


def test_oras_with_the_token_service_over_tls(
    token_registry: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    client = oras.client.OrasClient(hostname=token_registry.host, tls_verify=str(pki.ca))
    client.auth.set_basic_auth("writer", PASSWORDS["writer"])
    _oras_round_trip(client, token_registry.host, tmp_path, "proj/oras")
    # Without credentials oras-py asks for an anonymous token, which grants no push.
    anonymous = oras.client.OrasClient(hostname=token_registry.host, tls_verify=str(pki.ca))
    payload = tmp_path / "anon.txt"
    payload.write_text("x")
    with pytest.raises(Exception):
        anonymous.push(f"{token_registry.host}/proj/anon:v1", files=[f"{payload}:text/plain"],
                       disable_path_validation=True)


# --- TLS settings -------------------------------------------------------------------------------


def _handshake(server: ServerProcess, pki: Pki, version: ssl.TLSVersion) -> bool:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.minimum_version = version
    context.maximum_version = version
    try:
        httpx.get(server.url + "/v2/", verify=context, timeout=5)
    except httpx.ConnectError:
        return False
    return True


def test_minimum_tls_version(tmp_path: Path, pki: Pki) -> None:
    default = start(tmp_path / "a", pki, {})
    try:
        assert _handshake(default, pki, ssl.TLSVersion.TLSv1_2)
        assert _handshake(default, pki, ssl.TLSVersion.TLSv1_3)
    finally:
        default.stop()
    strict = start(tmp_path / "b", pki, {}, tls={"minimumtls": "tls1.3"})
    try:
        assert not _handshake(strict, pki, ssl.TLSVersion.TLSv1_2)
        assert _handshake(strict, pki, ssl.TLSVersion.TLSv1_3)
    finally:
        strict.stop()


def test_client_certificates_are_required_with_clientcas(tmp_path: Path, pki: Pki) -> None:
    client_pair = (pki.directory / "client.cert", pki.directory / "client.key")
    server = start(tmp_path / "srv", pki, {}, tls={"clientcas": [str(pki.ca)]}, client_cert=client_pair)
    try:
        with pytest.raises(httpx.HTTPError):
            no_client_cert = ssl.create_default_context(cafile=str(pki.ca))
            httpx.get(server.url + "/v2/", verify=no_client_cert, timeout=5).raise_for_status()
        assert httpx.get(server.url + "/v2/", verify=server.verify(), timeout=5).status_code == 200
        source = write_oci_layout(tmp_path / "src", {"v1": make_image("mtls")})
        skopeo("copy", "--dest-cert-dir", str(pki.cert_dir(tmp_path, client=True)),
               f"oci:{source}:v1", f"docker://{server.host}/mtls/app:v1")
        skopeo_fails("inspect", "--cert-dir", str(pki.cert_dir(tmp_path)), f"docker://{server.host}/mtls/app:v1")
    finally:
        server.stop()


def test_unusable_tls_settings_stop_start_up(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "config.yml"
    for tls, message in (
        ({"certificate": str(tmp_path / "missing.crt"), "key": str(pki.directory / "server.key")}, "missing.crt"),
        ({**pki.tls, "minimumtls": "tls9"}, "minimumtls"),
        ({"certificate": pki.tls["certificate"]}, "certificate and key"),
        ({**pki.tls, "ciphersuites": ["TLS_NOT_A_SUITE"]}, "ciphersuites"),
    ):
        config.write_text(json.dumps({
            "version": "0.1",
            "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
            "http": {"addr": "127.0.0.1:0", "tls": tls},
        }))
        result = subprocess.run(
            [sys.executable, "-m", "dockyard", "serve", str(config)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stderr
        assert message in result.stderr, result.stderr


