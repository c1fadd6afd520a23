"""A mirror of an upstream served over TLS by a private CA, with token auth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from click.testing import CliRunner

from dockyard.cli import main
from tests.auth.support import token_config
from tests.proxy.test_mirror import assert_same_image, pull_image
from tests.support.images import make_image, skopeo, write_oci_layout
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
