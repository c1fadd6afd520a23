"""Upload sessions on S3, where a session's data is a multipart upload that reading the
data puts together (see dockyard.storage.s3): two registries on one bucket stand for
two workers or replicas."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from dockyard.registry import Registry, layout
from dockyard.registry.digest import Digest
from dockyard.storage import S3Driver, create_driver
from tests.s3.moto_server import MotoServer

MiB = 1 << 20


@pytest.fixture
def bucket(moto_server: MotoServer) -> Iterator[str]:
    yield moto_server.new_bucket()
    moto_server.reset()


async def body_of(data: bytes) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), MiB):
        yield data[offset : offset + MiB]


async def test_a_session_without_its_hash_state_reads_its_data_and_goes_on(
    moto_server: MotoServer, bucket: str
) -> None:
    """The first chunk leaves a part and a tail; its hash state is lost. The next chunk,
    on another registry, hashes the stored data again, which completes the upload the
    data was kept in: the chunk must go on from the completed object, not into the
    upload that is gone."""
    drivers = [create_driver("s3", moto_server.driver_params(bucket)) for _ in range(2)]
    assert all(isinstance(driver, S3Driver) for driver in drivers)
    first, second = (Registry(driver) for driver in drivers)
    data = os.urandom(13 * MiB)
    cut = 6 * MiB
    session = await first.uploads.start("lib/app")
    await first.uploads.append("lib/app", session.id, body_of(data[:cut]), 0)
    await drivers[0].delete(layout.upload_hash_states("lib/app", session.id, "sha256"))
    await second.uploads.append("lib/app", session.id, body_of(data[cut:]), cut)
    blob = await second.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await drivers[0].read(layout.blob_data(blob.digest)) == data
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for driver in drivers:
        await driver.close()
