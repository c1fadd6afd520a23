"""The registry on Ceph's RADOS Gateway: ``dockyard serve`` and Distribution 2.8.2 on a
bucket of a one-node Ceph cluster (tests/s3/rgw_server.py), skopeo pushing and pulling,
digests compared. The same tests as on moto (tests/s3/test_registry.py), on an S3
implementation that stores into RADOS and keeps S3's limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.s3.fixtures import Start, registries_on, rgw_server
from tests.s3.rgw_server import RgwServer
from tests.s3.test_registry import (
    MiB,
    assert_distribution_layout,
    assert_pulls,
    big_image,
    push,
)

__all__ = ["rgw_server"]



@pytest.fixture
def rgw_bucket(rgw_server: RgwServer) -> Iterator[str]:
    bucket = rgw_server.new_bucket()
    yield bucket
    rgw_server.remove_bucket(bucket)


@pytest.fixture
def start_on_rgw(rgw_server: RgwServer, tmp_path: Path) -> Iterator[Start]:
    """Start a registry whose storage is ``bucket`` on the gateway."""
    with registries_on(rgw_server, tmp_path) as start:
        yield start


def test_skopeo_round_trip_through_dockyard_on_rgw(
    start_on_rgw: Start, rgw_server: RgwServer, rgw_bucket: str, tmp_path: Path
) -> None:
    registry = start_on_rgw("dockyard", rgw_bucket)
    image = big_image("rgw-round-trip")
    assert max(len(layer.data) for layer in image.layers) > 5 * MiB
    push(registry, image, "rgw/app:v1", tmp_path)
    assert_pulls(registry, image, "rgw/app:v1", tmp_path)

    # Distribution's layout, and no upload left behind, multipart ones included.
    assert_distribution_layout(rgw_server, rgw_bucket, image, "rgw/app", "v1")

    # A large blob is a redirect to a URL the gateway itself checks the signature of.
    layer = max(image.layers, key=lambda blob: len(blob.data))
    response = httpx.get(f"{registry.url}/v2/rgw/app/blobs/{layer.digest}")
    assert response.status_code == 307
    location = response.headers["Location"]
    assert location.startswith(rgw_server.endpoint + "/")
    assert httpx.get(location).content == layer.data
    assert httpx.get(location.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status_code == 403


def test_a_bucket_dockyard_wrote_on_rgw_is_served_by_distribution(
    start_on_rgw: Start, rgw_bucket: str, tmp_path: Path
) -> None:
    dockyard = start_on_rgw("dockyard", rgw_bucket)
    image = big_image("rgw-from-dockyard")
    push(dockyard, image, "interop/rgw:v1", tmp_path)
    dockyard.stop()
    distribution = start_on_rgw("distribution", rgw_bucket)
    assert_pulls(distribution, image, "interop/rgw:v1", tmp_path)
    catalog = httpx.get(f"{distribution.url}/v2/_catalog").json()
    assert catalog == {"repositories": ["interop/rgw"]}
