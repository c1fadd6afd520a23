"""TLS terminated at nginx, configured as the README says: clients speak HTTPS to nginx,
the replicas plain HTTP behind it, and every URL the registry hands out is https://.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dockyard.cli import main
from tests.replicas.harness import Cluster, start_cluster
from tests.s3.moto_server import MotoServer
from tests.support.images import make_image, read_oci_layout, skopeo, write_oci_layout


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    out = tmp_path / "tls"
    made = CliRunner().invoke(main, ["cert", "--ip", "127.0.0.1", "--out", str(out)])
    assert made.exit_code == 0, made.output
    return out


@pytest.fixture
def tls_cluster(moto_server: MotoServer, tmp_path: Path, certificates: Path) -> Iterator[Cluster]:
    group = start_cluster(moto_server, tmp_path / "cluster", tls=certificates)
    try:
        yield group
    finally:
        group.stop()
        moto_server.reset()


def test_tls_at_nginx(tls_cluster: Cluster, certificates: Path, tmp_path: Path) -> None:
    cluster = tls_cluster
    assert cluster.url.startswith("https://")
    with httpx.Client(verify=cluster.nginx.verify(), timeout=30) as client:
        started = client.post(f"{cluster.url}/v2/tls/app/blobs/uploads/")
        assert started.status_code == 202, started.text
        # X-Forwarded-Proto: https reached the replica, which names nginx's https URL.
        assert started.headers["Location"].startswith(f"{cluster.url}/v2/tls/app/"), (
            started.headers
        )
        assert client.delete(started.headers["Location"]).status_code == 204
    # Plain HTTP to the TLS port is refused by nginx, not passed on.
    plain = httpx.get(f"http://{cluster.host}/v2/", timeout=10)
    assert plain.status_code == 400

    # skopeo trusts the CA `dockyard cert` made, as a client machine would.
    cert_dir = tmp_path / "certs.d"
    cert_dir.mkdir()
    shutil.copy(certificates / "ca.crt", cert_dir / "ca.crt")
    image = make_image("replicas-tls", layers=2)
    source = write_oci_layout(tmp_path / "src", {"v1": image})
    target = f"docker://{cluster.host}/tls/app:v1"
    skopeo("copy", "--dest-cert-dir", str(cert_dir), f"oci:{source}:v1", target)
    skopeo("copy", "--src-cert-dir", str(cert_dir), target, f"oci:{tmp_path / 'out'}:v1")
    pulled = read_oci_layout(tmp_path / "out")
    assert pulled.tags == {"v1": image.digest}
    assert set(pulled.blobs) == image.all_digests
    # The push went to more than one replica, over plain HTTP behind nginx.
    answered = {line.replica for line in cluster.access() if line.method in ("PATCH", "PUT")}
    assert len(answered) > 1, answered
