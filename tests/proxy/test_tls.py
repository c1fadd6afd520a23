"""A mirror of an upstream served over TLS by a private CA, with token auth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from click.testing import CliRunner

from dockyard.cli import main
from tests.auth.support import token_config
from tests.proxy.test_mirror import assert_same_image, pull_image
from tests.support.images import make_image, read_oci_layout, skopeo, write_oci_layout
from tests.support.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]


def test_upstream_over_tls_with_a_private_ca_and_tokens(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    made = CliRunner().invoke(main, ["cert", "--ip", "127.0.0.1", "--out", str(pki)])
    assert made.exit_code == 0, made.output
    workdir = tmp_path / "upstream"
    workdir.mkdir()
    config = token_config(workdir)
    config["http"] = {
        "tls": {"certificate": str(pki / "server.crt"), "key": str(pki / "server.key")}
    }
    upstream = ServerProcess("dockyard", workdir, config=config, ca=pki / "ca.crt")
    upstream.start()
    try:
        image = make_image("tls")
        certs = tmp_path / "certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
        layout = write_oci_layout(tmp_path / "src", {"v": image})
        skopeo(
            "copy",
            f"--dest-cert-dir={certs}",
            "--dest-creds=writer:writer-pw",
            f"oci:{layout}:v",
            f"docker://{upstream.host}/proj/app:v1",
        )
        entry = {"remoteurl": upstream.url, "username": "reader", "password": "reader-pw"}
        trusting = server_factory(
            "dockyard",
            config={"dockyard": {"proxy": [{**entry, "cafile": str(pki / "ca.crt")}]}},
            name="trusting",
        )
        assert_same_image(pull_image(trusting, tmp_path / "out", "proj/app:v1"), image)

        # Without the CA the upstream's certificate is not trusted: nothing is served.
        untrusting = server_factory(
            "dockyard", config={"dockyard": {"proxy": [entry]}}, name="untrusting"
        )
        response = httpx.get(f"{untrusting.url}/v2/proj/app/manifests/v1")
        assert response.status_code == 503
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        upstream.stop()


def test_a_mirror_over_tls_streams_layers_of_megabytes_from_an_upstream_over_tls(
    tmp_path: Path,
) -> None:
    # Layers far larger than one receive: the mirror takes each body off aiohttp's
    # parser on a TLS connection, and serves its pieces over TLS itself (copied, since
    # a TLS transport may keep what it is given queued).
    pki = tmp_path / "pki"
    made = CliRunner().invoke(main, ["cert", "--ip", "127.0.0.1", "--out", str(pki)])
    assert made.exit_code == 0, made.output
    tls = {"tls": {"certificate": str(pki / "server.crt"), "key": str(pki / "server.key")}}
    upstream = ServerProcess(
        "dockyard", tmp_path / "upstream", config={"http": tls}, ca=pki / "ca.crt"
    )
    mirror = ServerProcess(
        "dockyard",
        tmp_path / "mirror",
        config={
            "http": tls,
            "dockyard": {"proxy": [{"remoteurl": upstream.url, "cafile": str(pki / "ca.crt")}]},
        },
        ca=pki / "ca.crt",
    )
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    upstream.start()
    try:
        mirror.start()
        image = make_image("tls-large", layers=2, files_per_layer=3, file_size=1 << 20)
        assert all(len(layer.data) > 2 << 20 for layer in image.layers)
        layout = write_oci_layout(tmp_path / "src", {"v": image})
        skopeo(
            "copy",
            f"--dest-cert-dir={certs}",
            f"oci:{layout}:v",
            f"docker://{upstream.host}/proj/large:v1",
        )
        out = tmp_path / "out"
        pulled = f"docker://{mirror.host}/proj/large:v1"
        skopeo("copy", f"--src-cert-dir={certs}", pulled, f"oci:{out}:v")
        assert_same_image(read_oci_layout(out).blobs, image)
    finally:
        mirror.stop()
        upstream.stop()
